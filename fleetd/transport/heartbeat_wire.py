"""The heartbeat on the wire (version 2): signed over the exact bytes sent, and cheap to check
(architecture.md §3).

A controller checks every node's beat every 2 s, thousands a second, so the format is made for the receiver:

    {"v":2,"node":"gpu-a","sig":"<HMAC-SHA256 of BODY, hex>","body":BODY}

``BODY`` is a JSON object whose bytes are signed as they travel: the receiver finds it by the fixed envelope
(keys in this order, no whitespace), checks the HMAC over those bytes with ``hmac.compare_digest`` and parses
nothing before the signature holds (version 1 signed a re-canonicalised document: a full parse and a full
re-serialisation per beat). ``BODY`` puts the readings that change every beat first and the node's inventory
last::

    {"seq":7,"boot":"…","sent_ms":…,"available_vram":…,"available_ram":…,"live":[[in_flight,last_used_ms],…],
     "inventory":{"gpu_vendor":…,"total_vram":…,"total_ram":…,"backends":[…],"replicas":[{…},…]}}

so a receiver reads the small readings part of every beat (with one regular expression: the layout is exactly
``encode_body``'s, anything else is ``malformed``) and parses the inventory (backends, replicas: what the
planner sees) and ``live`` only when their bytes differ from the node's previous beat's; ``live`` holds each replica's
in-flight count and last use, in the order of ``inventory.replicas``. A valid beat is valid JSON as a whole.

The key is the SHA-256 of the node's credential (``bus_messages.node_key``). Decoding is strict and total: the
functions here return or raise ``BadMessage`` with a reason from ``DROP_REASONS``, never anything else.
"""

from __future__ import annotations

import hmac
import json
import re
from dataclasses import dataclass
from typing import Any

from fleetd.core.observed import ReplicaState
from fleetd.transport.bus_messages import MAX_MESSAGE_BYTES, BadMessage

HEARTBEAT_VERSION = 2
_ENVELOPE = re.compile(rb'\{"v":(-?[0-9]{1,9}),"node":"([a-z0-9._-]{1,253})","sig":"([0-9a-f]{64})","body":')
_NUMBER = rb"(0|[1-9][0-9]{0,18})"
_READINGS = re.compile(
    rb'\{"seq":'
    + _NUMBER
    + rb',"boot":"([A-Za-z0-9_.-]{1,64})","sent_ms":'
    + _NUMBER
    + rb',"available_vram":'
    + _NUMBER
    + rb',"available_ram":'
    + _NUMBER
    + rb',"live":(\[[0-9nul,\[\]]*\]),"inventory":'
)
"""The readings part of a body, as ``encode_body`` writes it: parsed without a JSON parser, numbers as JSON
writes non-negative integers; ``live`` (JSON) is parsed only when its bytes changed."""

Live = tuple[tuple[int, int | None], ...]
"""Each replica's (in-flight requests, last use in ms or ``None``), in the order of the inventory's replicas."""


@dataclass(frozen=True, slots=True)
class ReplicaSummary:
    instance: str
    replica: int
    state: ReplicaState
    config_hash: str
    address: str | None = None
    in_flight: int = 0
    last_used_ms: int | None = None
    restarts: int = 0
    vram_bytes: int = 0
    last_error: str | None = None


@dataclass(frozen=True, slots=True)
class HeartbeatMessage:
    """One node's periodic report, as the agent builds it: readings, installed backends and every replica."""

    node: str
    seq: int
    """Increases with every heartbeat of one agent process; ``boot`` tells agent restarts apart."""
    boot: str
    sent_ms: int
    gpu_vendor: str
    total_vram: int
    available_vram: int
    total_ram: int
    available_ram: int
    backends: tuple[str, ...]
    replicas: tuple[ReplicaSummary, ...]


@dataclass(frozen=True, slots=True)
class Inventory:
    """What a node has, as its beats report it; changes seldom (a replica starts, fails or goes; a backend is
    installed). Its replicas' ``in_flight`` and ``last_used_ms`` are left at their defaults: see ``Beat.live``."""

    gpu_vendor: str
    total_vram: int
    total_ram: int
    backends: tuple[str, ...]
    replicas: tuple[ReplicaSummary, ...]


@dataclass(frozen=True, slots=True)
class Beat:
    """A heartbeat whose signature held. ``inventory`` and ``live`` are the very objects of the ``previous`` beat
    given to ``verify_heartbeat`` when their bytes were the same: ``is`` tells a receiver nothing changed."""

    node: str
    seq: int
    boot: str
    sent_ms: int
    available_vram: int
    available_ram: int
    live: Live
    inventory: Inventory
    raw_live: bytes
    raw_inventory: bytes
    """The live readings and the inventory as received, to compare the next beat's with."""

    def replicas(self) -> tuple[ReplicaSummary, ...]:
        """The inventory's replicas with their live readings."""
        return tuple(
            _with_live(r, in_flight, last_used)
            for r, (in_flight, last_used) in zip(self.inventory.replicas, self.live, strict=True)
        )


@dataclass(frozen=True, slots=True)
class SignedBeat:
    """A heartbeat's envelope, before its node's key is known: who it claims to be from, and what is signed."""

    node: str
    signature: str
    body: bytes


def encode_heartbeat(message: HeartbeatMessage, key: bytes) -> bytes:
    """The message as the wire carries it, signed with ``key`` (what an agent publishes)."""
    return sign_heartbeat(message.node, encode_body(message), key)


def encode_body(message: HeartbeatMessage) -> bytes:
    """The signed part of a heartbeat: readings first, the inventory last (see the module's docstring)."""
    return _dumps(
        {
            "seq": message.seq,
            "boot": message.boot,
            "sent_ms": message.sent_ms,
            "available_vram": message.available_vram,
            "available_ram": message.available_ram,
            "live": [[r.in_flight, r.last_used_ms] for r in message.replicas],
            "inventory": {
                "gpu_vendor": message.gpu_vendor,
                "total_vram": message.total_vram,
                "total_ram": message.total_ram,
                "backends": list(message.backends),
                "replicas": [_replica_document(r) for r in message.replicas],
            },
        }
    )


def sign_heartbeat(node: str, body: bytes, key: bytes) -> bytes:
    """``body`` (``encode_body``'s) in the envelope, signed with ``key``."""
    signature = hmac.digest(key, body, "sha256").hex().encode()
    return b'{"v":2,"node":' + _dumps(node) + b',"sig":"' + signature + b'","body":' + body + b"}"


def unwrap_heartbeat(data: bytes) -> SignedBeat:
    """The envelope of a heartbeat; ``BadMessage`` (too_large, malformed, version, unsigned) otherwise."""
    if len(data) > MAX_MESSAGE_BYTES:
        raise BadMessage("too_large", f"{len(data)} bytes")
    match = _ENVELOPE.match(data)
    if match is None or not data.endswith(b"}"):
        raise _misfit(data)
    if int(match[1]) != HEARTBEAT_VERSION:
        raise BadMessage("version", f"unknown heartbeat version {int(match[1])}")
    return SignedBeat(match[2].decode(), match[3].decode(), data[match.end() : -1])


def verify_heartbeat(signed: SignedBeat, key: bytes, previous: Beat | None = None) -> Beat:
    """The beat, if ``key`` signed it (``bad_signature`` otherwise) and it is well formed (``malformed``).
    What is the same as in ``previous`` (the node's last beat) is taken from it rather than decoded again."""
    # hmac.new, not the one-shot hmac.digest: that one releases the GIL around every HMAC, and taking it back
    # from the bus's other threads costs more than the HMAC itself
    if not hmac.compare_digest(hmac.new(key, signed.body, "sha256").hexdigest(), signed.signature):
        raise BadMessage("bad_signature", f"signature does not match node {signed.node!r}'s key")
    try:
        return _beat(signed, previous)
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise BadMessage("malformed", f"{type(exc).__name__}: {exc}") from None


def decode_heartbeat(data: bytes, key: bytes) -> HeartbeatMessage:
    """The whole message of one heartbeat, checked as a controller checks it (for tests and tools)."""
    beat = verify_heartbeat(unwrap_heartbeat(data), key)
    inventory = beat.inventory
    return HeartbeatMessage(
        beat.node,
        beat.seq,
        beat.boot,
        beat.sent_ms,
        inventory.gpu_vendor,
        inventory.total_vram,
        beat.available_vram,
        inventory.total_ram,
        beat.available_ram,
        inventory.backends,
        beat.replicas(),
    )


def _beat(signed: SignedBeat, previous: Beat | None) -> Beat:
    body = signed.body
    readings = _READINGS.match(body)
    if readings is None or not body.endswith(b"}"):
        raise ValueError("the body is not in the heartbeat's layout (readings, then the inventory)")
    raw_inventory = body[readings.end() : -1]
    if previous is not None and previous.raw_inventory == raw_inventory:
        inventory = previous.inventory
    else:
        inventory = _inventory(json.loads(raw_inventory))
    raw_live = readings[6]
    if previous is not None and previous.inventory is inventory and previous.raw_live == raw_live:
        live = previous.live
    else:
        live = _live(json.loads(raw_live), len(inventory.replicas))
    return Beat(
        signed.node,
        int(readings[1]),
        readings[2].decode(),
        int(readings[3]),
        int(readings[4]),
        int(readings[5]),
        live,
        inventory,
        raw_live,
        raw_inventory,
    )


def _live(raw: object, replicas: int) -> Live:
    if not isinstance(raw, list) or len(raw) != replicas:
        raise ValueError(f"live holds {replicas} replicas' readings, not {raw!r}")
    pairs = []
    for pair in raw:
        if not isinstance(pair, list) or len(pair) != 2:
            raise ValueError(f"a replica's live readings are [in_flight, last_used_ms], not {pair!r}")
        pairs.append((_int(pair[0]), _optional_int(pair[1])))
    return tuple(pairs)


def _inventory(document: Any) -> Inventory:
    if not isinstance(document, dict):
        raise TypeError("the inventory is not an object")
    return Inventory(
        gpu_vendor=_str(document["gpu_vendor"]),
        total_vram=_int(document["total_vram"]),
        total_ram=_int(document["total_ram"]),
        backends=tuple(_str(b) for b in document["backends"]),
        replicas=tuple(_replica(r) for r in document["replicas"]),
    )


def _replica_document(r: ReplicaSummary) -> dict[str, Any]:
    return {
        "instance": r.instance,
        "replica": r.replica,
        "state": r.state.value,
        "config_hash": r.config_hash,
        "address": r.address,
        "restarts": r.restarts,
        "vram_bytes": r.vram_bytes,
        "last_error": r.last_error,
    }


def _replica(data: Any) -> ReplicaSummary:
    if not isinstance(data, dict):
        raise TypeError("a replica is not an object")
    return ReplicaSummary(
        instance=_str(data["instance"]),
        replica=_int(data["replica"]),
        state=ReplicaState(data["state"]),
        config_hash=_str(data["config_hash"]),
        address=_optional_str(data["address"]),
        restarts=_int(data["restarts"]),
        vram_bytes=_int(data["vram_bytes"]),
        last_error=_optional_str(data["last_error"]),
    )


def _with_live(summary: ReplicaSummary, in_flight: int, last_used_ms: int | None) -> ReplicaSummary:
    return ReplicaSummary(
        summary.instance,
        summary.replica,
        summary.state,
        summary.config_hash,
        summary.address,
        in_flight,
        last_used_ms,
        summary.restarts,
        summary.vram_bytes,
        summary.last_error,
    )


def _misfit(data: bytes) -> BadMessage:
    """Why ``data`` is not a heartbeat envelope, in the order the checks matter (slow path: dropped anyway)."""
    try:
        document = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        return BadMessage("malformed", f"not JSON ({exc})")
    if not isinstance(document, dict):
        return BadMessage("malformed", "not a JSON object")
    if document.get("v") != HEARTBEAT_VERSION:
        return BadMessage("version", f"unknown heartbeat version {document.get('v')!r}")
    if not isinstance(document.get("node"), str) or not document["node"]:
        return BadMessage("malformed", "no node name")
    if not isinstance(document.get("sig"), str):
        return BadMessage("unsigned", "no signature")
    return BadMessage("malformed", 'not in the heartbeat\'s layout {"v":2,"node":…,"sig":…,"body":…}')


def _dumps(value: object) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def _str(value: object) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {type(value).__name__}")
    return value


def _int(value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise TypeError(f"expected a non-negative integer, got {value!r}")
    return value


def _optional_str(value: object) -> str | None:
    return None if value is None else _str(value)


def _optional_int(value: object) -> int | None:
    return None if value is None else _int(value)
