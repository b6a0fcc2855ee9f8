"""``NatsBus``: the ``Bus`` over a real NATS server, for the thread-based agent and controller.

nats-py is asyncio-only and nothing else in fleetd is, so the bus owns an event loop on a daemon thread and the
synchronous calls hand coroutines to it. Handlers never run on that loop: a slow handler would stall pings,
replies and reconnects. They run on one worker thread, each subscription's in arrival order (nats-py hands
each subscription's messages over on a task of its own, so two subscriptions' messages may interleave). The
first connection must succeed within a deadline (a wrong URL is a configuration error, said at once); after
that the client reconnects forever with a doubling, capped backoff and replays every subscription, so a NATS
restart loses nothing permanent. While disconnected, ``publish`` buffers up to nats-py's pending size and then
drops (at debug): heartbeats and events are periodic and the next one carries the news.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import queue
import threading
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlsplit

import nats.errors
from nats.aio.client import Client, Server
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription as NatsSubscription

from fleetd.transport.bus_api import BusError, BusMessage, Handler, check_subject

log = logging.getLogger("fleetd.bus")
T = TypeVar("T")

CALL_MARGIN_S = 5.0
"""How much longer than a call's own timeout a caller waits for the bus's loop to answer at all."""
DRAIN_TIMEOUT_S = 2
"""How long ``close`` lets nats-py flush what is buffered before it closes the connection."""
_SCHEMES = ("nats", "tls", "ws", "wss")
_DISCONNECTS = (
    nats.errors.ConnectionClosedError,
    nats.errors.ConnectionDrainingError,
    nats.errors.ConnectionReconnectingError,
    nats.errors.OutboundBufferLimitError,
    nats.errors.FlushTimeoutError,
    OSError,
)


def redacted(url: str) -> str:
    """``url`` without its credentials (user and password, or a token), for messages and logs."""
    scheme, separator, rest = url.partition("://")
    if not separator:
        scheme, rest = "", url
    _credentials, at, host = rest.rpartition("@")
    return f"{scheme}{separator}***@{host}" if at else url


def check_url(url: str) -> None:
    """Raise ``BusError`` unless ``url`` looks like a NATS server's address (``nats://HOST:PORT``)."""
    try:
        parts = urlsplit(url if "://" in url else f"nats://{url}")
        parts.port  # noqa: B018 -- parsing the port is the check
    except ValueError as exc:
        raise BusError(f"NATS URL {redacted(url)!r} is malformed ({exc}): give nats://HOST:PORT") from None
    if parts.scheme not in _SCHEMES or not parts.hostname:
        raise BusError(f"NATS URL {redacted(url)!r} is not a NATS address: give nats://HOST:PORT")


class NatsSubscriptionHandle:
    """A ``Subscription`` of a ``NatsBus``: its handler is skipped once ``unsubscribe`` was called, even for
    messages already queued for the worker."""

    def __init__(self, bus: NatsBus, subject: str, handler: Handler) -> None:
        self.subject = subject
        self.handler = handler
        self.inner: NatsSubscription | None = None
        self._bus = bus
        self._active = True

    @property
    def active(self) -> bool:
        return self._active

    def unsubscribe(self) -> None:
        if self._active:
            self._active = False
            self._bus.drop_subscription(self)


@dataclass(frozen=True, slots=True)
class _Delivery:
    subscription: NatsSubscriptionHandle
    message: BusMessage


@dataclass(frozen=True, slots=True)
class _StateChange:
    state: str


class NatsBus:
    """A synchronous, thread-safe ``Bus`` on one NATS connection. Make one with ``NatsBus.connect``."""

    def __init__(
        self,
        url: str,
        *,
        name: str,
        on_state: Callable[[str], None] | None = None,
        reconnect_wait_s: float = 0.1,
        reconnect_wait_max_s: float = 5.0,
    ) -> None:
        self.url = url
        self.name = name
        self.on_state = on_state
        """Called on the handler thread with ``"disconnected"`` or ``"reconnected"`` (for logs and metrics)."""
        self._address = redacted(url)
        self._reconnect_wait_s = reconnect_wait_s
        self._reconnect_wait_max_s = reconnect_wait_max_s
        self._client = Client()
        self._loop = asyncio.new_event_loop()
        self._inbox: queue.SimpleQueue[_Delivery | _StateChange | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._closed = False
        self._last_error: str | None = None
        self._loop_thread = threading.Thread(target=self._run_loop, name=f"nats-bus-loop[{name}]", daemon=True)
        self._worker = threading.Thread(target=self._work, name=f"nats-bus-handlers[{name}]", daemon=True)

    @classmethod
    def connect(
        cls,
        url: str,
        *,
        name: str,
        connect_timeout_s: float = 5.0,
        on_state: Callable[[str], None] | None = None,
        reconnect_wait_s: float = 0.1,
        reconnect_wait_max_s: float = 5.0,
    ) -> NatsBus:
        """Connect to ``url`` (``nats://HOST:PORT``) as ``name``; ``BusError`` when no connection is made within
        ``connect_timeout_s``. Later disconnects are retried forever, waiting ``reconnect_wait_s`` and doubling
        up to ``reconnect_wait_max_s`` between attempts."""
        check_url(url)
        bus = cls(
            url,
            name=name,
            on_state=on_state,
            reconnect_wait_s=reconnect_wait_s,
            reconnect_wait_max_s=reconnect_wait_max_s,
        )
        try:
            bus._open(connect_timeout_s)
        except BaseException:
            bus.close()
            raise
        return bus

    @property
    def connected(self) -> bool:
        return not self._closed and self._client.is_connected

    def publish(self, subject: str, payload: bytes) -> None:
        check_subject(subject, wildcards=False)
        with self._lock:
            if self._closed:
                log.debug("bus %s is closed: dropped a message to %s", self.name, subject)
                return
            asyncio.run_coroutine_threadsafe(self._publish(subject, payload), self._loop)

    def request(self, subject: str, payload: bytes, *, timeout_s: float) -> bytes:
        check_subject(subject, wildcards=False)
        return self._call(
            self._request(subject, payload, timeout_s), timeout_s=timeout_s, what=f"request {subject}"
        )

    def subscribe(self, subject: str, handler: Handler, *, queue: str | None = None) -> NatsSubscriptionHandle:
        check_subject(subject, wildcards=True)
        if queue is not None and (not queue or any(c.isspace() for c in queue)):
            raise ValueError(f"invalid NATS queue group {queue!r}: empty or with whitespace")
        subscription = NatsSubscriptionHandle(self, subject, handler)
        self._call(self._subscribe(subscription, queue), timeout_s=2.0, what=f"subscribe to {subject}")
        return subscription

    def respond(self, message: BusMessage, payload: bytes) -> None:
        if message.reply is None:
            raise ValueError(f"the message on {message.subject} is not a request: there is no one to respond to")
        self.publish(message.reply, payload)

    def close(self) -> None:
        """Flush what is buffered, close the connection, run the handlers of what already arrived, and join
        both threads. Idempotent; callable from a handler."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        if self._loop_thread.is_alive():
            future = asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop)
            try:
                future.result(timeout=DRAIN_TIMEOUT_S + CALL_MARGIN_S)
            except Exception as exc:  # closing anyway: say why it was not clean
                log.debug("bus %s: unclean close of NATS at %s: %s", self.name, self._address, exc)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._loop_thread.join()
            self._loop.run_until_complete(self._loop.shutdown_asyncgens())
        self._loop.close()
        self._inbox.put(None)
        if self._worker.is_alive() and threading.current_thread() is not self._worker:
            self._worker.join()

    def __enter__(self) -> NatsBus:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def drop_subscription(self, subscription: NatsSubscriptionHandle) -> None:
        """Tell the server to stop sending ``subscription``'s messages (its handle's ``unsubscribe``)."""
        if subscription.inner is None:
            return
        try:
            self._call(
                self._unsubscribe(subscription.inner), timeout_s=2.0, what=f"unsubscribe {subscription.subject}"
            )
        except BusError as exc:  # closed or unreachable: the subscription ends with the connection
            log.debug("bus %s: %s", self.name, exc)

    # The calling side: hand a coroutine to the loop and wait for it.

    def _open(self, connect_timeout_s: float) -> None:
        self._loop_thread.start()
        self._worker.start()
        self._call(self._connect(connect_timeout_s), timeout_s=connect_timeout_s, what="connect")
        log.debug("bus %s connected to NATS at %s", self.name, self._address)

    def _call(self, coroutine: Coroutine[Any, Any, T], *, timeout_s: float, what: str) -> T:
        if threading.current_thread() is self._loop_thread:
            coroutine.close()
            raise RuntimeError(f"{what}: a NatsBus call on the bus's own event loop would deadlock")
        with self._lock:
            if self._closed:
                coroutine.close()
                raise BusError(f"{what}: the bus to NATS at {self._address} is closed")
            future = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        wait_s = timeout_s + CALL_MARGIN_S
        try:
            return future.result(timeout=wait_s)
        except concurrent.futures.CancelledError:  # close() cancelled it
            raise BusError(f"{what}: the bus to NATS at {self._address} was closed meanwhile") from None
        except TimeoutError:  # the coroutines turn their own timeouts into BusError: this is the loop itself
            future.cancel()
            raise BusError(
                f"{what}: the NATS client for {self._address} did not answer within {wait_s:g} s; "
                "the process is overloaded or stuck, restart it"
            ) from None

    # The loop side: coroutines that run on the bus's event loop.

    async def _connect(self, timeout_s: float) -> None:
        connecting = self._client.connect(
            servers=[self.url],
            name=self.name,
            allow_reconnect=True,
            max_reconnect_attempts=-1,
            reconnect_time_wait=1,  # between first attempts only; reconnects use _next_server's backoff
            reconnect_to_server_handler=self._next_server,
            error_cb=self._on_error,
            disconnected_cb=self._on_disconnected,
            reconnected_cb=self._on_reconnected,
            drain_timeout=DRAIN_TIMEOUT_S,
        )
        try:
            await asyncio.wait_for(connecting, timeout_s)
        except TimeoutError:
            detail = f" (last error: {self._last_error})" if self._last_error else ""
            raise BusError(
                f"cannot connect to NATS at {self._address} within {timeout_s:g} s{detail}: check that a NATS "
                "server (fleetd serve --nats-listen) runs there and that the URL is right"
            ) from None
        except (nats.errors.Error, OSError, ValueError) as exc:
            raise BusError(f"cannot connect to NATS at {self._address}: {exc}; check the URL") from None

    async def _publish(self, subject: str, payload: bytes) -> None:
        try:
            await self._client.publish(subject, payload)
        except _DISCONNECTS as exc:
            log.debug("bus %s: dropped a message to %s (%s)", self.name, subject, exc)
        except Exception as exc:  # e.g. over the server's max payload: a bug of the sender, not a disconnect
            log.warning(
                "bus %s: could not publish to %s on NATS at %s: %s", self.name, subject, self._address, exc
            )

    async def _request(self, subject: str, payload: bytes, timeout_s: float) -> bytes:
        try:
            reply = await self._client.request(subject, payload, timeout=timeout_s)
        except nats.errors.NoRespondersError:
            raise BusError(
                f"no responder for {subject} on NATS at {self._address}: nothing subscribes to it; "
                "start the service that answers it"
            ) from None
        except nats.errors.TimeoutError:
            state = "" if self._client.is_connected else " (not connected to NATS now, reconnecting)"
            raise BusError(
                f"no reply to {subject} within {timeout_s:g} s on NATS at {self._address}{state}: "
                "the responder is slow or gone; try again"
            ) from None
        except (nats.errors.Error, OSError) as exc:
            raise BusError(f"request {subject} failed on NATS at {self._address}: {exc}; try again") from None
        return reply.data

    async def _subscribe(self, subscription: NatsSubscriptionHandle, queue: str | None) -> None:
        async def deliver(msg: Msg) -> None:
            message = BusMessage(subject=msg.subject, data=msg.data, reply=msg.reply or None)
            self._inbox.put(_Delivery(subscription, message))

        try:
            subscription.inner = await self._client.subscribe(subscription.subject, queue=queue or "", cb=deliver)
        except nats.errors.Error as exc:
            raise BusError(
                f"cannot subscribe to {subscription.subject} on NATS at {self._address}: {exc}"
            ) from None
        if self._client.is_connected:  # the server knows of it when subscribe returns; else it is replayed
            try:
                await self._client.flush(timeout=2)
            except nats.errors.Error as exc:
                log.debug("bus %s: subscription to %s not confirmed yet: %s", self.name, subscription.subject, exc)

    async def _unsubscribe(self, inner: NatsSubscription) -> None:
        try:
            await inner.unsubscribe()
        except nats.errors.Error as exc:
            log.debug("bus %s: unsubscribe from %s: %s", self.name, inner.subject, exc)

    async def _shutdown(self) -> None:
        try:
            if self._client.is_connected:
                await self._client.drain()
            await self._client.close()
        except (nats.errors.Error, OSError) as exc:  # e.g. unsent data and no connection to send it on
            log.debug("bus %s: unclean close of NATS at %s: %s", self.name, self._address, exc)
        finally:  # what nats-py left running (it stops short after such an error) ends with the loop
            current = asyncio.current_task()
            rest = [task for task in asyncio.all_tasks() if task is not current]
            for task in rest:
                task.cancel()
            await asyncio.gather(*rest, return_exceptions=True)

    def _next_server(self, servers: list[Server], info: dict[str, Any]) -> tuple[Server | None, float]:
        """nats-py's reconnect hook: the (only) server, after a doubling wait capped at the maximum."""
        attempts = max((server.reconnects for server in servers), default=0)
        wait_s = min(self._reconnect_wait_max_s, self._reconnect_wait_s * 2 ** min(attempts, 30))
        return (servers[0] if servers else None), wait_s

    async def _on_error(self, exc: Exception) -> None:
        self._last_error = str(exc) or type(exc).__name__
        log.debug("bus %s: NATS at %s: %s", self.name, self._address, self._last_error)

    async def _on_disconnected(self) -> None:
        if not self._closed:
            log.debug("bus %s: disconnected from NATS at %s, reconnecting", self.name, self._address)
            self._inbox.put(_StateChange("disconnected"))

    async def _on_reconnected(self) -> None:
        if not self._closed:
            log.debug("bus %s: reconnected to NATS at %s", self.name, self._address)
            self._inbox.put(_StateChange("reconnected"))

    # The threads.

    def _run_loop(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_forever()

    def _work(self) -> None:
        while True:
            item = self._inbox.get()
            if item is None:
                return
            self._handle(item)

    def _handle(self, item: _Delivery | _StateChange) -> None:
        try:
            if isinstance(item, _StateChange):
                if self.on_state is not None:
                    self.on_state(item.state)
            elif item.subscription.active:
                item.subscription.handler(item.message)
        except Exception as exc:  # one bad message must not stop the handler thread
            what = "on_state" if isinstance(item, _StateChange) else f"the handler of {item.subscription.subject}"
            log.error("bus %s: %s failed: %s", self.name, what, exc)
            log.debug("bus %s: %s failed", self.name, what, exc_info=True)
