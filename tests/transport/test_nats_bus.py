"""``NatsBus`` against real ``nats-server`` processes: delivery, wildcards, queue groups, request/reply and its
failures, handlers on their own thread, a server restart that loses no subscription, and nothing left behind
(threads, loops, sockets) once a bus is closed."""

from __future__ import annotations

import gc
import threading
import time
import uuid
from collections.abc import Callable, Iterator

import pytest

from fleetd.daemon.nats_server import BundledNats
from fleetd.transport.bus_api import Bus, BusError, BusMessage
from fleetd.transport.nats_bus import NatsBus
from tests.agent.support import wait_for
from tests.conftest import ExternalNats
from tests.daemon.support import free_port

Connect = Callable[[str], NatsBus]


@pytest.fixture(autouse=True)
def _no_bus_threads_left() -> Iterator[None]:
    yield
    left = [t.name for t in threading.enumerate() if t.name.startswith("nats-bus-")]
    assert left == [], "a bus was not closed"


@pytest.fixture
def prefix() -> str:
    """Subjects of this test only: the session's server is shared."""
    return f"t{uuid.uuid4().hex[:12]}"


@pytest.fixture
def connect(nats_server: BundledNats | ExternalNats) -> Iterator[Connect]:
    buses: list[NatsBus] = []

    def make(name: str) -> NatsBus:
        bus = NatsBus.connect(nats_server.url, name=name)
        buses.append(bus)
        return bus

    yield make
    for bus in buses:
        bus.close()


def test_publish_reaches_a_subscriber_on_another_connection(connect: Connect, prefix: str) -> None:
    got: list[BusMessage] = []
    subscriber: Bus = connect("subscriber")
    subscriber.subscribe(f"{prefix}.routes", got.append)
    connect("publisher").publish(f"{prefix}.routes", b"hello")
    assert wait_for(lambda: list(got), timeout_s=5, what="the message") == [
        BusMessage(subject=f"{prefix}.routes", data=b"hello", reply=None)
    ]


def test_wildcard_subscriptions(connect: Connect, prefix: str) -> None:
    one_token: list[str] = []
    any_tail: list[str] = []
    subscriber = connect("subscriber")
    subscriber.subscribe(f"{prefix}.node.*.heartbeat", lambda m: one_token.append(m.subject))
    subscriber.subscribe(f"{prefix}.node.>", lambda m: any_tail.append(m.subject))
    publisher = connect("publisher")
    for subject in ("node.gpu1.heartbeat", "node.gpu1.events", "node.gpu2", "routes", "node.end.heartbeat"):
        publisher.publish(f"{prefix}.{subject}", b"")
    end = f"{prefix}.node.end.heartbeat"
    wait_for(lambda: end in one_token and end in any_tail, timeout_s=5, what="the last message on both")
    assert one_token == [f"{prefix}.node.gpu1.heartbeat", end]
    assert any_tail == [f"{prefix}.node.{s}" for s in ("gpu1.heartbeat", "gpu1.events", "gpu2", "end.heartbeat")]


def _collect(into: list[bytes]) -> Callable[[BusMessage], None]:
    return lambda message: into.append(message.data)


def test_a_queue_group_delivers_each_message_to_one_member(connect: Connect, prefix: str) -> None:
    members: dict[str, list[bytes]] = {"a": [], "b": []}
    everything: list[bytes] = []
    for name, got in members.items():
        connect(name).subscribe(f"{prefix}.demand", _collect(got), queue="controllers")
    connect("watcher").subscribe(f"{prefix}.demand", lambda m: everything.append(m.data))
    publisher = connect("gateway")
    sent = [str(i).encode() for i in range(40)]
    for payload in sent:
        publisher.publish(f"{prefix}.demand", payload)
    wait_for(lambda: len(everything) == len(sent), timeout_s=5, what="every message at the plain subscriber")
    wait_for(lambda: len(members["a"]) + len(members["b"]) >= len(sent), timeout_s=5, what="the queue group")
    assert sorted(members["a"] + members["b"]) == sorted(sent)


def test_request_gets_the_reply_of_a_responder(connect: Connect, prefix: str) -> None:
    controller = connect("controller")
    controller.subscribe(f"{prefix}.register", lambda m: controller.respond(m, b"welcome " + m.data))
    assert connect("agent").request(f"{prefix}.register", b"gpu1", timeout_s=5) == b"welcome gpu1"


def test_request_without_responder_or_reply_says_which(
    connect: Connect, prefix: str, nats_server: BundledNats | ExternalNats
) -> None:
    agent = connect("agent")
    with pytest.raises(BusError, match=rf"no responder for {prefix}\.register on NATS at {nats_server.url}"):
        agent.request(f"{prefix}.register", b"", timeout_s=5)
    connect("mute").subscribe(f"{prefix}.register", lambda m: None)
    started = time.monotonic()
    with pytest.raises(BusError, match=rf"no reply to {prefix}\.register within 0\.3 s on NATS at"):
        agent.request(f"{prefix}.register", b"", timeout_s=0.3)
    assert time.monotonic() - started < 3


def test_handlers_run_in_order_on_one_thread_off_the_loop(connect: Connect, prefix: str) -> None:
    release = threading.Event()
    got: list[bytes] = []
    threads: set[str] = set()

    def slow(message: BusMessage) -> None:
        threads.add(threading.current_thread().name)
        got.append(message.data)
        if message.data == b"0":
            release.wait(10)

    subscriber = connect("slow")
    subscriber.subscribe(f"{prefix}.work", slow)
    responder = connect("responder")
    responder.subscribe(f"{prefix}.echo", lambda m: responder.respond(m, m.data))
    publisher = connect("publisher")
    sent = [str(i).encode() for i in range(20)]
    for payload in sent:
        publisher.publish(f"{prefix}.work", payload)
    wait_for(lambda: got == [b"0"], timeout_s=5, what="the first handler call")
    # The handler thread is stuck; the bus's loop still serves its requests.
    assert subscriber.request(f"{prefix}.echo", b"ping", timeout_s=5) == b"ping"
    release.set()
    wait_for(lambda: len(got) == len(sent), timeout_s=5, what="every message")
    assert got == sent
    assert threads == {"nats-bus-handlers[slow]"}


def test_a_failing_handler_does_not_stop_the_next(connect: Connect, prefix: str) -> None:
    got: list[bytes] = []

    def handler(message: BusMessage) -> None:
        if message.data == b"bad":
            raise ValueError("cannot parse")
        got.append(message.data)

    connect("subscriber").subscribe(f"{prefix}.events", handler)
    publisher = connect("publisher")
    publisher.publish(f"{prefix}.events", b"bad")
    publisher.publish(f"{prefix}.events", b"good")
    assert wait_for(lambda: list(got), timeout_s=5, what="the good message") == [b"good"]


def test_unsubscribe_and_close(connect: Connect, prefix: str) -> None:
    got: list[str] = []
    subscriber = connect("subscriber")
    subscription = subscriber.subscribe(f"{prefix}.a", lambda m: got.append("a"))
    subscriber.subscribe(f"{prefix}.b", lambda m: got.append("b"))
    subscription.unsubscribe()
    subscription.unsubscribe()
    publisher = connect("publisher")
    publisher.publish(f"{prefix}.a", b"")
    publisher.publish(f"{prefix}.b", b"")
    wait_for(lambda: "b" in got, timeout_s=5, what="the message of the other subscription")
    assert got == ["b"]
    subscriber.close()
    subscriber.close()
    assert not subscriber.connected
    subscriber.publish(f"{prefix}.b", b"")  # dropped, never raised
    with pytest.raises(BusError, match="closed"):
        subscriber.request(f"{prefix}.b", b"", timeout_s=1)
    with pytest.raises(BusError, match="closed"):
        subscriber.subscribe(f"{prefix}.b", lambda m: None)


def test_close_from_a_handler(connect: Connect, prefix: str) -> None:
    subscriber = connect("subscriber")
    subscriber.subscribe(f"{prefix}.stop", lambda m: subscriber.close())
    connect("publisher").publish(f"{prefix}.stop", b"")
    wait_for(lambda: not subscriber.connected, timeout_s=5, what="the bus to close")
    wait_for(
        lambda: not any(t.name == "nats-bus-handlers[subscriber]" for t in threading.enumerate()),
        timeout_s=5,
        what="the handler thread to end",
    )


def test_bad_subjects_are_value_errors(connect: Connect) -> None:
    bus = connect("bus")
    with pytest.raises(ValueError, match="wildcards only in subscriptions"):
        bus.publish("a.*", b"")
    with pytest.raises(ValueError, match="invalid NATS subject"):
        bus.subscribe("a b", lambda m: None)
    with pytest.raises(ValueError, match="queue group"):
        bus.subscribe("a", lambda m: None, queue="two words")


def test_connecting_to_a_dead_url_fails_within_the_timeout() -> None:
    url = f"nats://127.0.0.1:{free_port()}"
    started = time.monotonic()
    with pytest.raises(BusError, match=rf"cannot connect to NATS at {url} within 1 s .*Connect call failed"):
        NatsBus.connect(url, name="lonely", connect_timeout_s=1.0)
    assert time.monotonic() - started < 3


def test_credentials_in_the_url_stay_out_of_the_message() -> None:
    for url in (f"nats://fleet:hunter2@127.0.0.1:{free_port()}", "nats://fleet:hunter2@[::1:4222"):
        with pytest.raises(BusError) as caught:
            NatsBus.connect(url, name="lonely", connect_timeout_s=0.2)
        assert "hunter2" not in str(caught.value)
        assert "nats://***@" in str(caught.value)


@pytest.mark.parametrize(
    ("url", "complaint"),
    [
        ("", "is not a NATS address"),
        ("http://127.0.0.1:4222", "is not a NATS address"),
        ("nats://127.0.0.1:port", "is malformed"),
    ],
)
def test_a_url_that_is_no_nats_address_is_refused_at_once(url: str, complaint: str) -> None:
    with pytest.raises(BusError, match=rf"NATS URL '{url}' {complaint}.*: give nats://HOST:PORT"):
        NatsBus.connect(url, name="lonely", connect_timeout_s=5)


def test_subscriptions_survive_a_server_restart(own_nats: BundledNats, prefix: str) -> None:
    states: list[str] = []
    with (
        NatsBus.connect(
            own_nats.url,
            name="controller",
            on_state=states.append,
            reconnect_wait_s=0.05,
            reconnect_wait_max_s=0.2,
        ) as controller,
        NatsBus.connect(own_nats.url, name="agent", reconnect_wait_s=0.05, reconnect_wait_max_s=0.2) as agent,
    ):
        got: list[bytes] = []
        controller.subscribe(f"{prefix}.node.*.heartbeat", lambda m: got.append(m.data))
        controller.subscribe(f"{prefix}.register", lambda m: controller.respond(m, b"ok"))
        agent.publish(f"{prefix}.node.gpu1.heartbeat", b"before")
        wait_for(lambda: b"before" in got, timeout_s=5, what="the heartbeat before the restart")

        own_nats.stop()
        wait_for(lambda: "disconnected" in states, timeout_s=5, what="the controller to see the server go")
        wait_for(lambda: not agent.connected, timeout_s=5, what="the agent to see the server go")
        agent.publish(f"{prefix}.node.gpu1.heartbeat", b"meanwhile")  # buffered or dropped, never raised
        with pytest.raises(BusError, match=r"no reply .*\(not connected to NATS now"):
            agent.request(f"{prefix}.register", b"", timeout_s=0.2)

        own_nats.start()
        wait_for(lambda: "reconnected" in states, timeout_s=10, what="the controller to reconnect")
        wait_for(lambda: agent.connected, timeout_s=10, what="the agent to reconnect")
        agent.publish(f"{prefix}.node.gpu1.heartbeat", b"after")
        wait_for(lambda: b"after" in got, timeout_s=5, what="the heartbeat after the restart")
        assert agent.request(f"{prefix}.register", b"", timeout_s=5) == b"ok"
    assert states[:2] == ["disconnected", "reconnected"]


def test_close_while_the_server_is_down_leaves_nothing_running(own_nats: BundledNats, prefix: str) -> None:
    bus = NatsBus.connect(own_nats.url, name="agent", reconnect_wait_s=0.05)
    bus.subscribe(f"{prefix}.routes", lambda m: None)
    own_nats.stop()
    wait_for(lambda: not bus.connected, timeout_s=5, what="the bus to see the server go")
    bus.publish(f"{prefix}.events", b"unsent")
    with pytest.raises(BusError, match="no reply"):
        bus.request(f"{prefix}.register", b"", timeout_s=0.1)
    started = time.monotonic()
    bus.close()
    assert time.monotonic() - started < 3
    gc.collect()  # a task nats-py left pending would complain now, inside this test
