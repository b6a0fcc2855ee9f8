"""Heartbeat ingest: nodes' signed reports from the bus, written to the registry in batches (architecture.md §3).

``offer`` runs on the bus's handler thread for every message and does only what must be done per message: size
and version checks, the node's key (cached), the HMAC over the body's bytes as received, the readings, and the
sequence (a replayed or reordered beat of the same agent process is stale). The node's inventory (backends,
replicas) is decoded only when its bytes differ from the last written beat's (``heartbeat_wire``): in a quiet
fleet, no beat builds a replica object. Accepted beats wait in a buffer keyed by node (a newer beat of the
same node replaces an older one not yet written); ``flush`` writes the buffer in ONE transaction. What is
written per node depends on what changed since its previous beat: the readings always (one statement for the
whole batch); backends and replica rows only when the inventory changed; otherwise the replicas' live readings
(in-flight, last use) in one more statement, when they changed. When a flush changed what the planner sees (a replica's state,
config or address, a node's backends, a node back from silence), ``on_change`` runs: the daemon's trigger for
a cycle, so a crash is acted on at once and a quiet fleet costs no cycles.

Every drop is counted by reason (``DROP_REASONS``) for ``/metrics``; none is logged per message (a flood of
forged beats must not flood the log), but the first drop of each reason from each node is.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from fleetd.core.observed import ReplicaState
from fleetd.registry.agent_reports import BeatWrite, record_heartbeats
from fleetd.registry.facade import Registry
from fleetd.registry.nodes import Heartbeat
from fleetd.registry.replicas import ReplicaRecord
from fleetd.transport.bus_messages import BadMessage
from fleetd.transport.heartbeat_wire import Beat, ReplicaSummary, unwrap_heartbeat, verify_heartbeat

log = logging.getLogger("fleetd.controller")

KeySource = Callable[[str], bytes | None]
"""A node's heartbeat key (``node_key`` of its credential), or ``None`` for a node with none (unknown)."""
AllKeys = Callable[[], dict[str, bytes]]
"""Every node's heartbeat key at once: warms the cache at ``start``, so a controller starting under a beating
fleet of thousands does not look keys up one query per node on the bus thread."""
FLUSH_INTERVAL_S = 0.25
SWEEP_INTERVAL_S = 0.5
"""How often silent nodes are aged: a node is lost at most this long after --lost-after (p99 <= 21 s at 20 s)."""
UNHEALTHY_AFTER_MS = 6_000
LOST_AFTER_MS = 20_000
NEVER_MS = 10**15
UNKNOWN_KEY_RETRY_S = 5.0
"""How long a node without a key is refused before the key source is asked again (unknown nodes beat too)."""


Structure = tuple[tuple[str, int, ReplicaState, str, str | None, int], ...]
"""What the planner sees of a node's replicas: instance, replica, state, config hash, address, restarts."""


@dataclass(frozen=True, slots=True)
class _Seen:
    """What the registry last got from a node: to write only changes, and to refuse stale beats."""

    beat: Beat
    structure: Structure


@dataclass(frozen=True, slots=True)
class Sweep:
    unhealthy: int
    lost: int
    bus_suspect: bool
    """More than half of the live nodes went silent together: marked unhealthy, none taken offline."""


@dataclass
class IngestCounters:
    accepted: int = 0
    written: int = 0
    batches: int = 0
    dropped: Counter[str] = field(default_factory=Counter)


class HeartbeatIngest:
    def __init__(
        self,
        registry: Registry,
        keys: KeySource,
        *,
        on_change: Callable[[], None] | None = None,
        flush_interval_s: float = FLUSH_INTERVAL_S,
        clock_s: Callable[[], float] = time.monotonic,
        unhealthy_after_ms: int = UNHEALTHY_AFTER_MS,
        lost_after_ms: int = LOST_AFTER_MS,
        on_flushed: Callable[[list[Beat]], None] | None = None,
        all_keys: AllKeys | None = None,
    ) -> None:
        """``on_flushed`` hears the beats of each committed batch (``bench/heartbeats.py`` measures delays)."""
        self._registry = registry
        self._keys = keys
        self._all_keys = all_keys
        self._on_change = on_change
        self._on_flushed = on_flushed
        self._flush_interval_s = flush_interval_s
        self._clock_s = clock_s
        self._lock = threading.Lock()
        self._pending: dict[str, Beat] = {}
        self._writing: dict[str, Beat] = {}
        self._arrived: dict[str, int] = {}
        """When each buffered beat arrived (the registry's clock, ms): liveness counts from it."""
        self._gaps: set[str] = set()
        """Nodes whose buffered beat does not directly follow the last one this controller got (see ``_gap``)."""
        self._seen: dict[str, _Seen] = {}
        self._key_cache: dict[str, bytes] = {}
        self._unknown_until: dict[str, float] = {}
        self._logged: set[tuple[str, str]] = set()
        self.counters = IngestCounters()
        self._unhealthy_after_ms = unhealthy_after_ms
        self._lost_after_ms = lost_after_ms
        self.bus_suspect = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # the bus side ---------------------------------------------------------------------------------------------

    def offer(self, data: bytes) -> str | None:
        """Check one message and buffer it; the drop reason, or ``None`` when it was accepted."""
        node = "?"
        try:
            signed = unwrap_heartbeat(data)
            node = signed.node
            key = self._key(node)
            if key is None:
                raise BadMessage("unknown_node", f"no credential registered for node {node!r}")
            beat = verify_heartbeat(signed, key, self._newest(node))
        except BadMessage as exc:
            return self._dropped(node, exc)
        arrived_ms = self._registry.clock()
        with self._lock:
            seen = self._seen.get(node)
            last = self._pending.get(node) or self._writing.get(node) or (seen.beat if seen is not None else None)
            stale = last is not None and last.boot == beat.boot and beat.seq <= last.seq
            if not stale:
                if self._gap(last, beat):
                    self._gaps.add(node)
                self._pending[node] = beat
                self._arrived[node] = arrived_ms
                self.counters.accepted += 1
        if stale and last is not None:
            return self._dropped(node, BadMessage("stale", f"seq {beat.seq} after {last.seq}"))
        return None

    def forget_key(self, node: str) -> None:
        """Drop a cached key (a node re-registered with a new credential, or was removed)."""
        with self._lock:
            self._key_cache.pop(node, None)
            self._unknown_until.pop(node, None)

    # the writer side ------------------------------------------------------------------------------------------

    def start(self) -> None:
        if self._all_keys is not None:
            warm = self._all_keys()
            with self._lock:
                for node, key in warm.items():
                    self._key_cache.setdefault(node, key)
        self._thread = threading.Thread(target=self._run, name="fleetd-heartbeats", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self.flush()

    def flush(self) -> int:
        """Write every buffered beat in one transaction; the number written."""
        with self._lock:
            batch, self._pending = self._pending, {}
            gaps, self._gaps = self._gaps, set()
            arrived, self._arrived = self._arrived, {}
            self._writing = batch  # still the newest of each node's beats, for the stale check, until seen
        if not batch:
            return 0
        try:
            writes, changed, seen = self._writes(batch, gaps, arrived)
            record_heartbeats(self._registry, writes)
            with self._lock:  # only what was committed counts as seen: a failed batch is written whole next time
                self._seen.update(seen)
        finally:
            with self._lock:
                self._writing = {}
        if self._on_flushed is not None:
            self._on_flushed(list(batch.values()))
        with self._lock:
            self.counters.written += len(writes)
            self.counters.batches += 1
        if changed and self._on_change is not None:
            self._on_change()
        return len(writes)

    def sweep(self) -> Sweep:
        """Age the silent nodes: ``unhealthy`` after 6 s, ``offline`` (lost: its replicas are re-placed) after
        20 s, unless more than half of the live nodes are silent together (Kubernetes' unhealthy-zone rule: the
        bus, not the nodes, is then the likelier fault, and re-placing everything would be the outage)."""
        live, silent = self._registry.count_silent(silent_after_ms=self._unhealthy_after_ms)
        suspect = live > 1 and silent * 2 > live
        if suspect and not self.bus_suspect:
            log.warning(
                "%d of %d nodes went silent together: suspect the bus; they are unhealthy, none is lost or re-placed",
                silent,
                live,
            )
        self.bus_suspect = suspect
        unhealthy, lost = self._registry.mark_missed_heartbeats(
            unhealthy_after_ms=self._unhealthy_after_ms,
            offline_after_ms=NEVER_MS if suspect else self._lost_after_ms,
        )
        if (unhealthy or lost) and self._on_change is not None:
            self._on_change()
        return Sweep(unhealthy, lost, suspect)

    def _run(self) -> None:
        next_sweep = self._clock_s() + SWEEP_INTERVAL_S
        while not self._stop.wait(self._flush_interval_s):
            try:
                self.flush()
                if self._clock_s() >= next_sweep:
                    next_sweep = self._clock_s() + SWEEP_INTERVAL_S
                    self.sweep()
            except Exception:  # a database hiccup must not end ingest; the next round retries
                log.exception("writing a batch of heartbeats failed")

    def _writes(
        self, batch: dict[str, Beat], gaps: set[str], arrived: dict[str, int]
    ) -> tuple[list[BeatWrite], bool, dict[str, _Seen]]:
        """What to write for each beat, whether the planner's view changed, and what the registry will have seen.
        Only the flushing thread writes ``_seen``: reading it needs no lock."""
        writes: list[BeatWrite] = []
        seen: dict[str, _Seen] = {}
        changed = False
        for node, beat in batch.items():
            previous = self._seen.get(node)
            before = None if node in gaps else previous
            reading = Heartbeat(node, beat.available_vram, beat.available_ram, arrived.get(node))
            if before is not None and before.beat.raw_inventory == beat.raw_inventory:  # the common case
                seen[node] = _Seen(beat, before.structure)
                live = () if before.beat.raw_live == beat.raw_live else tuple(_records(node, beat))
                writes.append(BeatWrite(reading, readings=live))
                continue
            now = seen[node] = _Seen(beat, _structure(beat))
            known = before.beat.inventory.backends if before is not None else ()
            new_backends = tuple(sorted(set(beat.inventory.backends) - set(known)))
            changed = changed or _changed(previous, now, self._unhealthy_after_ms)
            writes.append(BeatWrite(reading, new_backends, tuple(_records(node, beat))))
        return writes, changed, seen

    def _gap(self, last: Beat | None, beat: Beat) -> bool:
        """Whether this controller may NOT assume the registry holds its own last write for the node: the beat
        does not follow the last one it got (another controller of the queue group got those between: ``seq``
        skips; or a new agent process), or ends a silence long enough to be marked unhealthy (then lost: its
        replicas' rows forgotten). Such a beat is written in full. Beats this controller coalesced itself (the
        buffer keeps the newest per node) are no gap."""
        return (
            last is None
            or last.boot != beat.boot
            or beat.seq != last.seq + 1
            or beat.sent_ms - last.sent_ms >= self._unhealthy_after_ms
        )

    def _newest(self, node: str) -> Beat | None:
        """The node's newest accepted beat (buffered, being written or written), whose inventory the next beat
        most likely repeats. Lock-free: a dict read is atomic, and a stale answer only costs a decode."""
        seen = self._seen.get(node)
        return self._pending.get(node) or self._writing.get(node) or (seen.beat if seen is not None else None)

    def _key(self, node: str) -> bytes | None:
        cached = self._key_cache.get(node)  # one dict read: atomic, no lock needed on the hot path
        if cached is not None:
            return cached
        with self._lock:
            if self._unknown_until.get(node, 0.0) > self._clock_s():
                return None
        key = self._keys(node)
        with self._lock:
            if key is None:
                self._unknown_until[node] = self._clock_s() + UNKNOWN_KEY_RETRY_S
            else:
                self._key_cache[node] = key
        return key

    def _dropped(self, node: str, exc: BadMessage) -> str:
        with self._lock:
            self.counters.dropped[exc.reason] += 1
            first = (node, exc.reason) not in self._logged
            if first and len(self._logged) < 10_000:
                self._logged.add((node, exc.reason))
        if first:
            log.warning("dropped a heartbeat from node %s: %s (further ones are only counted)", node, exc)
        return exc.reason


def _changed(previous: _Seen | None, now: _Seen, silent_ms: int) -> bool:
    """A beat changed what the planner sees: a new node, a node back from silence, a replica's structure, a new
    backend."""
    if previous is None or now.beat.sent_ms - previous.beat.sent_ms >= silent_ms:
        return True
    return previous.structure != now.structure or bool(
        set(now.beat.inventory.backends) - set(previous.beat.inventory.backends)
    )


def _structure(beat: Beat) -> Structure:
    replicas = sorted(beat.inventory.replicas, key=lambda r: (r.instance, r.replica))
    return tuple((r.instance, r.replica, r.state, r.config_hash, r.address, r.restarts) for r in replicas)


def _records(node: str, beat: Beat) -> list[ReplicaRecord]:
    return [_record(node, summary) for summary in beat.replicas()]


def _record(node: str, summary: ReplicaSummary) -> ReplicaRecord:
    return ReplicaRecord(
        instance=summary.instance,
        node=node,
        replica=summary.replica,
        state=summary.state,
        address=summary.address,
        config_hash=summary.config_hash,
        vram_bytes=summary.vram_bytes,
        restarts=summary.restarts,
        last_error=summary.last_error,
        in_flight=summary.in_flight,
        last_used_ms=summary.last_used_ms,
    )


def registry_keys(registry: Registry) -> KeySource:
    """Nodes' heartbeat keys from the registry: the stored hash of each node's credential."""

    def key(node: str) -> bytes | None:
        stored = registry.node_credential_hash(node)
        return bytes.fromhex(stored) if stored else None

    return key


def registry_all_keys(registry: Registry) -> AllKeys:
    """Every node's heartbeat key from the registry, in one query."""
    return lambda: {node: bytes.fromhex(stored) for node, stored in registry.node_credential_hashes().items()}
