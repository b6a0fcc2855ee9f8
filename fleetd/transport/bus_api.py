"""The ``Bus`` protocol: how agents, the controller and gateways talk over NATS (architecture.md §3,
"Distributed mode": heartbeats, events, registration by request/reply, demand and routes).

Code that sends or receives messages depends on this protocol, not on NATS: ``fleetd.transport.nats_bus`` is
the real implementation, ``tests/transport/fake_bus.py`` an in-memory one for unit tests. The calls are
synchronous because the agent and the controller are thread-based. Handlers run one at a time, never on the
I/O loop; each subscription's messages in the order they arrived (two subscriptions' messages may interleave
otherwise). A lost connection never raises from ``publish``: heartbeats and events
are periodic, and the next one carries the news; ``request`` raises ``BusError`` because its caller waits.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol


class BusError(Exception):
    """The bus could not do what was asked (no connection, no responder, no reply in time); the message names
    the address and says what to do."""


@dataclass(frozen=True, slots=True)
class BusMessage:
    """One message as a handler sees it. ``reply`` is set when the sender waits for an answer (``respond``)."""

    subject: str
    data: bytes
    reply: str | None = None


Handler = Callable[[BusMessage], None]


class Subscription(Protocol):
    """Interest in a subject; after ``unsubscribe`` returns, its handler is not called again."""

    def unsubscribe(self) -> None: ...


class Bus(Protocol):
    """A connection to the message bus (see the module docstring for the guarantees)."""

    def publish(self, subject: str, payload: bytes) -> None: ...

    def request(self, subject: str, payload: bytes, *, timeout_s: float) -> bytes: ...

    def subscribe(self, subject: str, handler: Handler, *, queue: str | None = None) -> Subscription: ...

    def respond(self, message: BusMessage, payload: bytes) -> None: ...

    def close(self) -> None: ...


def check_subject(subject: str, *, wildcards: bool) -> None:
    """Raise ``ValueError`` unless ``subject`` is a NATS subject: dot-separated non-empty tokens without
    whitespace; with ``wildcards`` (a subscription), ``*`` may be a whole token and ``>`` the last one."""
    tokens = subject.split(".")
    for index, token in enumerate(tokens):
        if not token or any(c.isspace() for c in token):
            raise ValueError(f"invalid NATS subject {subject!r}: empty token or whitespace")
        if token in ("*", ">"):
            if not wildcards:
                raise ValueError(f"invalid NATS subject {subject!r}: wildcards only in subscriptions")
            if token == ">" and index != len(tokens) - 1:
                raise ValueError(f"invalid NATS subject {subject!r}: '>' must be the last token")
        elif "*" in token or ">" in token:
            raise ValueError(f"invalid NATS subject {subject!r}: a wildcard must be a whole token")


def subject_matches(pattern: str, subject: str) -> bool:
    """Whether a message on ``subject`` reaches a subscription to ``pattern`` (NATS rules: ``*`` one token,
    ``>`` one or more trailing tokens)."""
    wanted, given = pattern.split("."), subject.split(".")
    for index, token in enumerate(wanted):
        if token == ">":
            return len(given) > index
        if index >= len(given) or (token != "*" and token != given[index]):
            return False
    return len(given) == len(wanted)
