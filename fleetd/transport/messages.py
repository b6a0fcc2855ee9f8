"""Between the ``AgentClient`` values (``fleetd.transport.agent_api``) and their gRPC messages, both ways.

The agent's server and the controller's client use the same functions, so a field added on one side and
forgotten on the other shows in one place (and in the contract suite, which runs over gRPC).
"""

from __future__ import annotations

from fleetd.core.observed import ReplicaState
from fleetd.transport import agent_service_pb2 as pb
from fleetd.transport.agent_api import GpuInfo, InstallProgress, InstallResult, NodeReport, ReplicaStatus


def status_message(status: ReplicaStatus) -> pb.ReplicaStatus:
    return pb.ReplicaStatus(
        instance=status.instance,
        replica=status.replica,
        state=status.state.value,
        config_hash=status.config_hash,
        address=status.address,
        pid=status.pid,
        process_start=status.process_start,
        container=status.container,
        restarts=status.restarts,
        last_error=status.last_error,
        in_flight=status.in_flight,
        last_used_ms=status.last_used_ms,
        vram_bytes=status.vram_bytes,
        log_tail=list(status.log_tail),
    )


def status_value(message: pb.ReplicaStatus) -> ReplicaStatus:
    return ReplicaStatus(
        instance=message.instance,
        replica=message.replica,
        state=ReplicaState(message.state),
        config_hash=message.config_hash,
        address=message.address if message.HasField("address") else None,
        pid=message.pid if message.HasField("pid") else None,
        process_start=message.process_start if message.HasField("process_start") else None,
        container=message.container if message.HasField("container") else None,
        restarts=message.restarts,
        last_error=message.last_error if message.HasField("last_error") else None,
        in_flight=message.in_flight,
        last_used_ms=message.last_used_ms if message.HasField("last_used_ms") else None,
        vram_bytes=message.vram_bytes,
        log_tail=tuple(message.log_tail),
    )


def report_message(report: NodeReport) -> pb.NodeReport:
    return pb.NodeReport(
        node=report.node,
        gpu_vendor=report.gpu_vendor,
        gpus=[
            pb.GpuInfo(index=g.index, name=g.name, total_bytes=g.total_bytes, free_bytes=g.free_bytes)
            for g in report.gpus
        ],
        total_vram=report.total_vram,
        available_vram=report.available_vram,
        total_ram=report.total_ram,
        available_ram=report.available_ram,
        platform=report.platform,
        backends=list(report.backends),
    )


def report_value(message: pb.NodeReport) -> NodeReport:
    return NodeReport(
        node=message.node,
        gpu_vendor=message.gpu_vendor,
        gpus=tuple(GpuInfo(g.index, g.name, g.total_bytes, g.free_bytes) for g in message.gpus),
        total_vram=message.total_vram,
        available_vram=message.available_vram,
        total_ram=message.total_ram,
        available_ram=message.available_ram,
        platform=message.platform,
        backends=tuple(message.backends),
    )


def progress_event(progress: InstallProgress) -> pb.InstallEvent:
    return pb.InstallEvent(
        progress=pb.InstallProgress(
            backend=progress.backend, step=progress.step, message=progress.message, fraction=progress.fraction
        )
    )


def progress_value(message: pb.InstallProgress) -> InstallProgress:
    fraction = message.fraction if message.HasField("fraction") else None
    return InstallProgress(message.backend, message.step, message.message, fraction)


def result_event(result: InstallResult) -> pb.InstallEvent:
    return pb.InstallEvent(
        result=pb.InstallResult(
            backend=result.backend, executable=result.executable, version=result.version, changed=result.changed
        )
    )


def result_value(message: pb.InstallResult) -> InstallResult:
    return InstallResult(message.backend, message.executable, message.version, message.changed)
