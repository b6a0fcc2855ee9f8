"""``FakeBus`` keeps the NATS rules that unit tests of bus users rely on (the real ``NatsBus`` is tested against
a real server in ``test_nats_bus.py``), and the subject rules both share."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest

from fleetd.transport.bus_api import Bus, BusError, BusMessage, check_subject, subject_matches
from tests.transport.fake_bus import FakeBroker


def test_publish_reaches_every_subscriber_of_the_subject_on_every_handle() -> None:
    broker = FakeBroker()
    first, second, publisher = broker.connect("a"), broker.connect("b"), broker.connect("c")
    got: list[tuple[str, BusMessage]] = []
    first.subscribe("fleetd.routes", lambda m: got.append(("a", m)))
    second.subscribe("fleetd.routes", lambda m: got.append(("b", m)))
    second.subscribe("fleetd.other", lambda m: got.append(("other", m)))
    publisher.publish("fleetd.routes", b"v1")
    assert got == [("a", BusMessage("fleetd.routes", b"v1")), ("b", BusMessage("fleetd.routes", b"v1"))]


@pytest.mark.parametrize(
    ("pattern", "subject", "matches"),
    [
        ("fleetd.node.*.heartbeat", "fleetd.node.gpu1.heartbeat", True),
        ("fleetd.node.*.heartbeat", "fleetd.node.gpu1.events", False),
        ("fleetd.node.*", "fleetd.node.gpu1.heartbeat", False),
        ("fleetd.node.>", "fleetd.node.gpu1.heartbeat", True),
        ("fleetd.node.>", "fleetd.node", False),
        ("fleetd.>", "fleetd.routes", True),
        ("fleetd.routes", "fleetd.routes", True),
        ("fleetd.routes", "fleetd.routes.x", False),
        (">", "a", True),
    ],
)
def test_wildcards_follow_nats(pattern: str, subject: str, matches: bool) -> None:
    assert subject_matches(pattern, subject) is matches
    broker = FakeBroker()
    bus = broker.connect()
    got: list[str] = []
    bus.subscribe(pattern, lambda m: got.append(m.subject))
    bus.publish(subject, b"")
    assert got == ([subject] if matches else [])


@pytest.mark.parametrize("subject", ["", "a..b", "a b", "a.*", "a.>", "a.b*", ".a", "a."])
def test_a_bad_publish_subject_is_a_value_error(subject: str) -> None:
    with pytest.raises(ValueError, match="invalid NATS subject"):
        FakeBroker().connect().publish(subject, b"")


@pytest.mark.parametrize("subject", ["a.>.b", "a.b*", "a b"])
def test_a_bad_subscription_subject_is_a_value_error(subject: str) -> None:
    with pytest.raises(ValueError, match="invalid NATS subject"):
        check_subject(subject, wildcards=True)


def _collect(into: list[bytes]) -> Callable[[BusMessage], None]:
    return lambda message: into.append(message.data)


def test_a_queue_group_delivers_each_message_to_one_member_in_turn() -> None:
    broker = FakeBroker()
    workers = [broker.connect(f"w{i}") for i in range(2)]
    got: dict[str, list[bytes]] = {"w0": [], "w1": [], "all": []}
    for worker in workers:
        worker.subscribe("fleetd.demand.*", _collect(got[worker.name]), queue="ctl")
    workers[0].subscribe("fleetd.demand.*", lambda m: got["all"].append(m.data))
    publisher = broker.connect("gw")
    for index in range(4):
        publisher.publish("fleetd.demand.chat", str(index).encode())
    assert got == {"w0": [b"0", b"2"], "w1": [b"1", b"3"], "all": [b"0", b"1", b"2", b"3"]}


def test_request_gets_the_reply_of_a_responder() -> None:
    broker = FakeBroker()
    controller: Bus = broker.connect("controller")
    controller.subscribe("fleetd.register", lambda m: controller.respond(m, b"welcome " + m.data))
    agent: Bus = broker.connect("agent")
    assert agent.request("fleetd.register", b"gpu1", timeout_s=1.0) == b"welcome gpu1"


def test_a_reply_from_another_thread_arrives_before_the_timeout() -> None:
    broker = FakeBroker()
    controller = broker.connect("controller")
    threads: list[threading.Thread] = []

    def later(message: BusMessage) -> None:
        thread = threading.Thread(target=controller.respond, args=(message, b"ok"))
        threads.append(thread)
        thread.start()

    controller.subscribe("fleetd.register", later)
    assert broker.connect("agent").request("fleetd.register", b"", timeout_s=5.0) == b"ok"
    for thread in threads:
        thread.join()


def test_request_without_responder_or_reply_raises_bus_error_saying_which() -> None:
    broker = FakeBroker()
    agent = broker.connect("agent")
    with pytest.raises(BusError, match=r"no responder for fleetd\.register"):
        agent.request("fleetd.register", b"", timeout_s=5.0)
    broker.connect("mute").subscribe("fleetd.register", lambda m: None)
    with pytest.raises(BusError, match=r"no reply to fleetd\.register within 0\.05 s"):
        agent.request("fleetd.register", b"", timeout_s=0.05)


def test_respond_to_a_message_that_is_no_request_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="not a request"):
        FakeBroker().connect().respond(BusMessage("fleetd.routes", b""), b"")


def test_unsubscribe_and_close_stop_delivery() -> None:
    broker = FakeBroker()
    bus, publisher = broker.connect("a"), broker.connect("b")
    got: list[str] = []
    subscription = bus.subscribe("x", lambda m: got.append("x"))
    bus.subscribe("y", lambda m: got.append("y"))
    subscription.unsubscribe()
    publisher.publish("x", b"")
    bus.close()
    bus.close()
    publisher.publish("y", b"")
    bus.publish("y", b"")  # a closed handle drops what it publishes
    assert got == []
    with pytest.raises(BusError, match="closed"):
        bus.request("y", b"", timeout_s=0.1)
    with pytest.raises(BusError, match="closed"):
        bus.subscribe("y", lambda m: None)
