"""Which replica ``fleetd logs`` reads, and the one line it says when the target does not name exactly one
(``fleetd.controlling.replica_logs.choose``; the command itself is tested in ``tests/cli/test_logs_cli.py``)."""

from __future__ import annotations

import pytest

from fleetd.controlling.replica_logs import LogsError, LogsRequest, choose
from fleetd.registry.replicas import ReplicaPlace

LOCAL_0 = ReplicaPlace("tiny", 0, "local", None)
GPU_A_1 = ReplicaPlace("tiny", 1, "gpu-a", "10.0.0.5:7443")
GPU_A_0 = ReplicaPlace("tiny", 0, "gpu-a", "10.0.0.5:7443")


def test_the_only_replica_needs_no_index() -> None:
    assert choose([GPU_A_1], LogsRequest("tiny")) == GPU_A_1
    assert choose([LOCAL_0, GPU_A_1], LogsRequest("tiny", 1)) == GPU_A_1


def test_several_replicas_are_listed_with_their_nodes() -> None:
    with pytest.raises(LogsError, match=r"^tiny has replicas 0, 1 \(on local, gpu-a\): name one as tiny/N$"):
        choose([LOCAL_0, GPU_A_1], LogsRequest("tiny"))


def test_an_unknown_instance_or_index_says_what_there_is() -> None:
    with pytest.raises(
        LogsError, match=r"^no replica of tiny in the registry: `fleetd status` lists the replicas"
    ):
        choose([], LogsRequest("tiny"))
    with pytest.raises(LogsError, match=r"^no replica tiny/3 in the registry: tiny has replicas 0, 1 \(on local"):
        choose([LOCAL_0, GPU_A_1], LogsRequest("tiny", 3))


def test_one_index_on_two_nodes_needs_the_node() -> None:
    with pytest.raises(LogsError, match=r"^tiny/0 is on nodes gpu-a, local: name one with --node$"):
        choose([GPU_A_0, LOCAL_0], LogsRequest("tiny", 0))
    assert choose([GPU_A_0, LOCAL_0], LogsRequest("tiny", 0, node="local")) == LOCAL_0
    with pytest.raises(LogsError, match=r"^no replica tiny/0 on node gpu-b in the registry: tiny has replica 0 "):
        choose([GPU_A_0, LOCAL_0], LogsRequest("tiny", 0, node="gpu-b"))
