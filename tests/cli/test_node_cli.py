"""``fleetd node ...`` as an operator runs it, in a subprocess, on a SQLite file and on PostgreSQL: join tokens
shown once, nodes registered through the registry API approved, drained, undrained and removed by hand."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from fleetd.core.observed import NodeStatus, ReplicaState
from fleetd.registry.facade import open_registry
from fleetd.registry.join_tokens import TokenVerdict
from fleetd.registry.nodes import NodeFacts
from fleetd.registry.replicas import ReplicaRecord
from tests.conftest import Database

GIB = 1024**3
TOKEN = re.compile(r"fjt_[A-Za-z0-9_-]{43}")


def fleetd(database_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-m", "fleetd", "node", *args, "--database-url", database_url],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={k: v for k, v in os.environ.items() if k != "FLEETD_DATABASE_URL"},
    )
    assert "Traceback" not in result.stderr, result.stderr
    return result


def register(database_url: str, name: str, **kwargs: object) -> None:
    registry = open_registry(database_url)
    try:
        facts = NodeFacts(gpu_vendor="nvidia", total_vram=24 * GIB, available_vram=20 * GIB)
        registry.register_node(name, facts, **kwargs)
    finally:
        registry.engine.dispose()


def test_a_token_is_printed_alone_once_and_listed_by_id_only(database: Database) -> None:
    created = fleetd(database.url, "token", "create", "--ttl", "2h", "--uses", "2")
    assert created.returncode == 0, created.stderr
    assert TOKEN.fullmatch(created.stdout.removesuffix("\n")) and created.stdout.endswith("\n")
    token = created.stdout.strip()
    token_id = re.search(r"jt-[0-9a-f]{8}", created.stderr)
    assert token_id is not None
    assert created.stderr.count("\n") == 1 and "2 uses" in created.stderr and "(in 2h)" in created.stderr
    assert token not in created.stderr

    listed = fleetd(database.url, "token", "list")
    assert listed.returncode == 0 and token_id.group() in listed.stdout and token not in listed.stdout
    as_json = json.loads(fleetd(database.url, "token", "list", "--format", "json").stdout)
    [entry] = as_json["tokens"]
    assert (entry["id"], entry["uses_left"], entry["expired"]) == (token_id.group(), 2, False)
    assert token not in json.dumps(as_json)

    registry = open_registry(database.url)
    try:
        assert registry.consume_join_token(token) is TokenVerdict.ACCEPTED
        by_token = fleetd(database.url, "token", "revoke", token)  # a mistake: the token is not echoed back
        assert by_token.returncode == 1 and token not in by_token.stderr
        assert by_token.stderr == (
            "error: not a join token id (ids look like jt-1a2b3c4d); `fleetd node token list` shows them\n"
        )
        revoked = fleetd(database.url, "token", "revoke", token_id.group())
        assert (revoked.returncode, revoked.stdout) == (0, f"join token {token_id.group()} revoked\n")
        assert registry.consume_join_token(token) is TokenVerdict.UNKNOWN
    finally:
        registry.engine.dispose()
    again = fleetd(database.url, "token", "revoke", token_id.group())
    assert again.returncode == 1 and again.stderr.startswith(f"error: no join token {token_id.group()};")
    assert fleetd(database.url, "token", "list").stdout.startswith("no join tokens")


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (("--ttl", "0"), "error: --ttl 0: a join token lives more than 0s and at most 30d; e.g. --ttl 1h\n"),
        (("--ttl", "31d"), "error: --ttl 31d: a join token lives more than 0s and at most 30d; e.g. --ttl 1h\n"),
        (("--ttl", "soon"), "error: --ttl: 'soon' is not a duration; use a number with a unit"),
        (("--uses", "0"), "error: --uses 0: a join token admits at least one node; e.g. --uses 1\n"),
    ],
)
def test_bad_token_flags_are_refused_in_one_line(tmp_path: Path, flags: tuple[str, ...], message: str) -> None:
    url = f"sqlite:///{tmp_path / 'fleetd.db'}"
    refused = fleetd(url, "token", "create", *flags)
    assert (refused.returncode, refused.stdout) == (1, "")
    assert refused.stderr.startswith(message) and refused.stderr.count("\n") == 1
    assert fleetd(url, "token", "list", "-f", "json").stdout == '{\n  "tokens": []\n}\n'


def test_approve_drain_undrain_and_remove_a_node(database: Database) -> None:
    register(database.url, "gpu-a", address="10.0.0.1:7070")
    listed = fleetd(database.url, "list")
    assert listed.returncode == 0, listed.stderr
    header, row = listed.stdout.splitlines()
    assert header.split()[:3] == ["NAME", "STATUS", "ADDRESS"]
    assert re.match(
        r"gpu-a +pending \(not approved\) +10\.0\.0\.1:7070 +nvidia +20\.0 GiB / 24\.0 GiB +\d+s ago +0 +-$", row
    )

    steps = [
        ("approve", "node gpu-a approved (pending -> healthy)\n"),
        ("approve", "node gpu-a was approved already (healthy)\n"),
        ("drain", "node gpu-a draining (was healthy); the controller moves its replicas off\n"),
        ("drain", "node gpu-a was draining already\n"),
        ("undrain", "node gpu-a undrained (draining -> healthy)\n"),
        ("undrain", "node gpu-a is not draining (healthy); nothing to do\n"),
    ]
    for command, said in steps:
        result = fleetd(database.url, command, "gpu-a")
        assert (result.returncode, result.stdout, result.stderr) == (0, said, ""), command

    [node] = json.loads(fleetd(database.url, "list", "--format", "json").stdout)["nodes"]
    assert {k: node[k] for k in ("name", "status", "approved", "address", "total_vram", "replicas")} == {
        "name": "gpu-a",
        "status": "healthy",
        "approved": True,
        "address": "10.0.0.1:7070",
        "total_vram": 24 * GIB,
        "replicas": 0,
    }
    removed = fleetd(database.url, "remove", "gpu-a")
    assert (removed.returncode, removed.stdout) == (0, "node gpu-a removed\n")
    assert fleetd(database.url, "list").stdout == "no nodes registered\n"


def test_undraining_a_node_never_approved_leaves_it_pending(database: Database) -> None:
    register(database.url, "gpu-b")
    assert fleetd(database.url, "drain", "gpu-b").stdout.startswith("node gpu-b draining (was pending)")
    undrained = fleetd(database.url, "undrain", "gpu-b")
    assert undrained.stdout == "node gpu-b undrained (draining -> pending)\n"


def test_a_node_with_replica_rows_is_removed_only_with_force(database: Database) -> None:
    register(database.url, "gpu-a")
    registry = open_registry(database.url)
    try:
        for index in (0, 1):
            registry.upsert_replica(ReplicaRecord("chat", "gpu-a", index, ReplicaState.RUNNING))
        refused = fleetd(database.url, "remove", "gpu-a")
        assert (refused.returncode, refused.stdout) == (1, "")
        assert refused.stderr == (
            "error: node 'gpu-a' still has 2 replica rows (chat/0, chat/1); drain it (`fleetd node drain gpu-a`) "
            "and let the controller move them, or delete them with it (`fleetd node remove gpu-a --force`)\n"
        )
        assert len(registry.snapshot().replicas) == 2
        forced = fleetd(database.url, "remove", "gpu-a", "--force")
        assert (forced.returncode, forced.stdout) == (0, "node gpu-a removed with 2 replica rows\n")
        observed = registry.snapshot()
        assert (observed.nodes, observed.replicas) == ((), ())
    finally:
        registry.engine.dispose()


def test_an_unknown_node_is_named_in_one_line(database: Database) -> None:
    register(database.url, "gpu-a")
    for command in ("approve", "drain", "undrain", "remove"):
        result = fleetd(database.url, command, "gpu-nope")
        assert (result.returncode, result.stdout, result.stderr) == (
            1,
            "",
            "error: no node named 'gpu-nope' in the registry; `fleetd node list` lists them\n",
        ), command
    registry = open_registry(database.url)
    try:
        [node] = registry.snapshot().nodes
        assert (node.name, node.status) == ("gpu-a", NodeStatus.PENDING)
    finally:
        registry.engine.dispose()


def test_an_unreachable_registry_is_one_line_without_a_password() -> None:
    url = "postgresql+psycopg://fleetd:hunter2@127.0.0.1:1/fleetd?connect_timeout=1"
    result = fleetd(url, "token", "create")
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr.startswith("error: registry at postgresql+psycopg://fleetd:***@127.0.0.1:1/fleetd")
    assert "hunter2" not in result.stderr and result.stderr.count("\n") == 1
