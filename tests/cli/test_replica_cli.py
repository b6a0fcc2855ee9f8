"""``fleetd replica restart INSTANCE[/N]``: the real CLI in a subprocess, on the fake backend. The request is
recorded in the registry; with the lease free the command restarts the replica itself, with it held it leaves
the request to the controller that leads."""

from __future__ import annotations

from fleetd.registry.facade import open_registry
from tests.agent.support import processes_with
from tests.cli.test_apply_cli import Fleet, fleet

__all__ = ["fleet"]  # the fixture, shared with the apply tests


def pids(fleet: Fleet) -> set[int]:
    return {p.pid for p in processes_with(fleet.model)}


def test_restart_replaces_the_process_and_bad_targets_are_refused(fleet: Fleet) -> None:
    assert fleet.run("apply", "--auto-approve").returncode == 0
    before = pids(fleet)
    assert len(before) == 1
    restarted = fleet.run("replica", "restart", "chat/0")
    assert restarted.returncode == 0, restarted.stdout + restarted.stderr
    assert "restart:chat:local:0: ok" in restarted.stdout
    after = pids(fleet)
    assert len(after) == 1 and after != before
    assert fleet.status_json()["replicas"][0]["state"] == "running"
    unknown = fleet.run("replica", "restart", "nope")
    assert (unknown.returncode, unknown.stderr) == (1, "error: no instance named 'nope' in the manifest\n")
    malformed = fleet.run("replica", "restart", "chat/x")
    assert malformed.returncode == 1 and "expected INSTANCE or INSTANCE/N" in malformed.stderr
    assert pids(fleet) == after


def test_while_another_controller_leads_the_request_is_left_to_it(fleet: Fleet) -> None:
    assert fleet.run("apply", "--auto-approve").returncode == 0
    before = pids(fleet)
    registry = open_registry(fleet.database_url)
    try:
        epoch = registry.acquire_lease("controller", "serve:gpu-box:4242", ttl_ms=120_000)
        assert epoch is not None
        handed = fleet.run("replica", "restart", "chat")
        assert handed.returncode == 0, handed.stderr
        assert "restart requested: replica 0 on local" in handed.stdout
        assert "serve:gpu-box:4242 holds the controller lease" in handed.stderr
        assert pids(fleet) == before, "the command acted while another controller leads"
        (replica,) = registry.snapshot().replicas
        assert replica.restart_requested
        assert registry.release_lease("controller", "serve:gpu-box:4242", epoch)
    finally:
        registry.engine.dispose()
    applied = fleet.run("apply", "--auto-approve")  # the next controller carries the request out
    assert applied.returncode == 0, applied.stdout + applied.stderr
    assert "restart:chat:local:0" in applied.stdout
    assert pids(fleet) != before
    registry = open_registry(fleet.database_url)
    try:
        assert not registry.snapshot().replicas[0].restart_requested
    finally:
        registry.engine.dispose()
