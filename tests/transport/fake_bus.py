"""An in-memory ``Bus`` for unit tests of code that talks over NATS (heartbeats, registration, events), so those
tests need no server: several ``FakeBus`` handles share one ``FakeBroker`` as processes share a NATS server.

It keeps the NATS rules that code relies on: subjects and ``*``/``>`` wildcards, a queue group delivers each
message to one member (in turn), ``request`` raises ``BusError`` at once with no responder and after
``timeout_s`` without a reply, a closed handle drops what it publishes. One difference, on purpose: handlers
run on the publisher's thread before ``publish`` returns (``NatsBus`` runs them later on its own thread), so a
test sees the effects of a message without waiting, and a handler's exception reaches the test.
"""

from __future__ import annotations

import itertools
import queue
import threading

from fleetd.transport.bus_api import BusError, BusMessage, Handler, check_subject, subject_matches


class FakeSubscription:
    """One handle's interest in a subject pattern, possibly as a member of a queue group."""

    def __init__(self, broker: FakeBroker, pattern: str, handler: Handler, queue: str | None, order: int) -> None:
        self.pattern = pattern
        self.handler = handler
        self.queue = queue
        self.order = order
        self._broker = broker
        self._active = True

    def receive(self, message: BusMessage) -> None:
        if self._active:
            self.handler(message)

    def unsubscribe(self) -> None:
        self._active = False
        self._broker.remove(self)


class FakeBroker:
    """The shared "server": who subscribes to what, and whose turn it is in each queue group."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._subscriptions: list[FakeSubscription] = []
        self._turns: dict[tuple[str, str], int] = {}
        self._counter = itertools.count(1)

    def connect(self, name: str = "fake") -> FakeBus:
        return FakeBus(self, name)

    def add(self, pattern: str, handler: Handler, queue: str | None) -> FakeSubscription:
        with self._lock:
            subscription = FakeSubscription(self, pattern, handler, queue, next(self._counter))
            self._subscriptions.append(subscription)
        return subscription

    def remove(self, subscription: FakeSubscription) -> None:
        with self._lock:
            if subscription in self._subscriptions:
                self._subscriptions.remove(subscription)

    def new_inbox(self) -> str:
        return f"_INBOX.fake.{next(self._counter)}"

    def deliver(self, message: BusMessage) -> int:
        """Hand ``message`` to every plain subscriber and to one member of each queue group; how many got it."""
        recipients = self._recipients(message.subject)
        for subscription in recipients:
            subscription.receive(message)
        return len(recipients)

    def _recipients(self, subject: str) -> list[FakeSubscription]:
        with self._lock:
            matching = [s for s in self._subscriptions if subject_matches(s.pattern, subject)]
            chosen = [s for s in matching if s.queue is None]
            groups: dict[tuple[str, str], list[FakeSubscription]] = {}
            for subscription in matching:
                if subscription.queue is not None:
                    groups.setdefault((subscription.pattern, subscription.queue), []).append(subscription)
            for key, members in groups.items():
                turn = self._turns.get(key, 0)
                self._turns[key] = turn + 1
                chosen.append(members[turn % len(members)])
        return sorted(chosen, key=lambda s: s.order)


class FakeBus:
    """One process's connection to a ``FakeBroker``; satisfies ``fleetd.transport.bus_api.Bus``."""

    def __init__(self, broker: FakeBroker, name: str) -> None:
        self.name = name
        self._broker = broker
        self._subscriptions: list[FakeSubscription] = []
        self._closed = False

    @property
    def closed(self) -> bool:
        return self._closed

    def publish(self, subject: str, payload: bytes) -> None:
        check_subject(subject, wildcards=False)
        if not self._closed:
            self._broker.deliver(BusMessage(subject=subject, data=payload))

    def request(self, subject: str, payload: bytes, *, timeout_s: float) -> bytes:
        check_subject(subject, wildcards=False)
        if self._closed:
            raise BusError(f"request {subject}: the fake bus {self.name} is closed")
        replies: queue.SimpleQueue[bytes] = queue.SimpleQueue()
        inbox = self._broker.new_inbox()
        reply_subscription = self._broker.add(inbox, lambda message: replies.put(message.data), None)
        try:
            if self._broker.deliver(BusMessage(subject=subject, data=payload, reply=inbox)) == 0:
                raise BusError(f"no responder for {subject} on the fake bus {self.name}: nothing subscribes to it")
            try:
                return replies.get(timeout=timeout_s)
            except queue.Empty:
                raise BusError(
                    f"no reply to {subject} within {timeout_s:g} s on the fake bus {self.name}"
                ) from None
        finally:
            reply_subscription.unsubscribe()

    def subscribe(self, subject: str, handler: Handler, *, queue: str | None = None) -> FakeSubscription:
        check_subject(subject, wildcards=True)
        if self._closed:
            raise BusError(f"subscribe to {subject}: the fake bus {self.name} is closed")
        subscription = self._broker.add(subject, handler, queue)
        self._subscriptions.append(subscription)
        return subscription

    def respond(self, message: BusMessage, payload: bytes) -> None:
        if message.reply is None:
            raise ValueError(f"the message on {message.subject} is not a request: there is no one to respond to")
        self.publish(message.reply, payload)

    def close(self) -> None:
        self._closed = True
        for subscription in self._subscriptions:
            subscription.unsubscribe()
        self._subscriptions.clear()
