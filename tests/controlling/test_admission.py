"""Joining over the bus: a token buys a node its credential once; a wrong, expired or spent token, a taken
name or a wrong credential is refused with a reason and stores nothing; the credential then signs heartbeats
the controller accepts. The bus is the in-memory ``FakeBus``; the registry is real (SQLite and PostgreSQL)."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from sqlalchemy import Engine, select

from fleetd.agent.joining import JoinRefused, credential_path, join
from fleetd.controlling.admission import Admission
from fleetd.controlling.heartbeats import HeartbeatIngest, registry_keys
from fleetd.core.observed import NodeStatus
from fleetd.registry.facade import Registry
from fleetd.registry.tables import join_tokens, nodes
from fleetd.transport.bus_messages import node_key
from fleetd.transport.heartbeat_wire import HeartbeatMessage, encode_heartbeat
from tests.conftest import ManualClock
from tests.transport.fake_bus import FakeBroker


@pytest.fixture
def registry(engine: Engine, clock: ManualClock) -> Registry:
    return Registry(engine, clock)


@pytest.fixture
def broker(registry: Registry) -> FakeBroker:
    broker = FakeBroker()
    Admission(registry).listen(broker.connect("controller"))
    return broker


def token_file(tmp_path: Path, registry: Registry, *, uses: int = 1, ttl_ms: int = 3_600_000) -> Path:
    path = tmp_path / "token"
    path.write_text(registry.create_join_token(ttl_ms=ttl_ms, uses=uses).token + "\n")
    return path


def test_a_token_buys_a_credential_once_and_the_credential_rejoins(
    registry: Registry, broker: FakeBroker, tmp_path: Path
) -> None:
    tokens = token_file(tmp_path, registry)
    joined = join(broker.connect("gpu-a"), "gpu-a", tmp_path / "a", address="10.0.0.5:7443", token_file=tokens)
    assert joined.status == "pending"
    stored = credential_path(tmp_path / "a")
    assert stored.read_text().strip() == joined.credential
    assert stat.S_IMODE(stored.stat().st_mode) == 0o600
    assert tokens.read_text().strip() not in stored.read_text()

    (node,) = registry.snapshot().nodes
    assert (node.name, node.status, node.approved) == ("gpu-a", NodeStatus.PENDING, False)
    with registry.engine.connect() as conn:
        assert conn.execute(select(nodes.c.address)).scalar_one() == "10.0.0.5:7443"
        assert joined.credential not in str(conn.execute(select(nodes)).all())

    again = join(broker.connect("gpu-a"), "gpu-a", tmp_path / "a", address="10.0.0.5:7443", token_file=None)
    assert again.credential == joined.credential  # the stored credential, not the spent token

    with pytest.raises(JoinRefused, match="already used as often as it allows"):
        join(broker.connect("gpu-b"), "gpu-b", tmp_path / "b", address=None, token_file=tokens)
    assert [n.name for n in registry.snapshot().nodes] == ["gpu-a"]


def test_refusals_say_why_and_store_nothing(
    registry: Registry, broker: FakeBroker, tmp_path: Path, clock: ManualClock
) -> None:
    wrong = tmp_path / "wrong"
    wrong.write_text("fjt_not-a-token-this-fleet-issued\n")
    with pytest.raises(JoinRefused, match="not one this fleet issued"):
        join(broker.connect("gpu-a"), "gpu-a", tmp_path / "a", address=None, token_file=wrong)

    expiring = token_file(tmp_path, registry, ttl_ms=1_000)
    clock.advance(2_000)
    with pytest.raises(JoinRefused, match="has expired"):
        join(broker.connect("gpu-a"), "gpu-a", tmp_path / "a", address=None, token_file=expiring)

    with pytest.raises(JoinRefused, match=r"no credential in .* and no --join-token-file"):
        join(broker.connect("gpu-a"), "gpu-a", tmp_path / "a", address=None, token_file=None)
    assert registry.snapshot().nodes == ()
    assert not credential_path(tmp_path / "a").exists()


def test_a_token_cannot_take_over_a_node_that_joined_before(
    registry: Registry, broker: FakeBroker, tmp_path: Path
) -> None:
    join(broker.connect("gpu-a"), "gpu-a", tmp_path / "a", address=None, token_file=token_file(tmp_path, registry))
    impostor = tmp_path / "impostor"
    with pytest.raises(JoinRefused, match="joined before: its agent must present its credential"):
        join(broker.connect("x"), "gpu-a", impostor, address=None, token_file=token_file(tmp_path, registry))
    credential_path(impostor).parent.mkdir(parents=True)
    credential_path(impostor).write_text("guessed\n")
    with pytest.raises(JoinRefused, match="does not match"):
        join(broker.connect("x"), "gpu-a", impostor, address=None, token_file=None)
    with registry.engine.connect() as conn:
        assert conn.execute(select(join_tokens.c.uses_left)).scalars().all() == [0, 1]  # the second unspent


def test_the_credential_signs_heartbeats_the_controller_accepts(
    registry: Registry, broker: FakeBroker, tmp_path: Path
) -> None:
    joined = join(
        broker.connect("gpu-a"), "gpu-a", tmp_path / "a", address=None, token_file=token_file(tmp_path, registry)
    )
    ingest = HeartbeatIngest(registry, registry_keys(registry))
    beat = HeartbeatMessage("gpu-a", 1, "boot", 0, "nvidia", 8 << 30, 6 << 30, 16 << 30, 8 << 30, (), ())
    assert ingest.offer(encode_heartbeat(beat, node_key(joined.credential))) is None
    assert ingest.offer(encode_heartbeat(beat, node_key("someone else"))) == "bad_signature"
    ingest.flush()
    assert registry.snapshot().nodes[0].available_vram == 6 << 30
