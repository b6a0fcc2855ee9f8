"""``Reconciler.cycle`` in-process, on the embedded mode with fake llama-server replicas: the last good desired
state survives an invalid edit, a refused plan is reported and not applied, a deposed leader's cycle writes
nothing, and ``vram: auto`` estimates are cached by the model file."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from fleetd.agent.estimates import VramEstimates
from fleetd.controlling.embedded import EmbeddedFleet as Embedded
from fleetd.controlling.embedded import open_embedded
from fleetd.controlling.reconciling import Reconciler
from fleetd.core.desired import InstanceSpec
from fleetd.executing import Fence
from fleetd.manifest.loading import load_manifest_text
from fleetd.registry import apply_log
from tests.agent.support import kill_all
from tests.daemon.support import fake_llama_executable, instance, manifest_text


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Embedded]:
    embedded = open_embedded(tmp_path / "state")
    try:
        yield embedded
    finally:
        embedded.close(stop_replicas=True)


@pytest.fixture
def token() -> Iterator[str]:
    value = f"rec-{uuid.uuid4().hex[:10]}"
    try:
        yield value
    finally:
        kill_all(value)


def pids(fleet: Embedded) -> dict[str, int | None]:
    return {r.instance: r.pid for r in fleet.agent.list_replicas()}


def test_an_invalid_manifest_keeps_the_last_good_desired_state(
    tmp_path: Path, fleet: Embedded, token: str
) -> None:
    executable = fake_llama_executable(tmp_path)
    manifest = tmp_path / "fleet.yaml"
    manifest.write_text("version: 1\nbogus: true\n")
    reconciler = Reconciler([manifest])
    never_good = reconciler.cycle(fleet)
    assert (never_good.manifest_errors, never_good.plan, never_good.outcome) == (1, None, "no-manifest")
    assert fleet.agent.list_replicas() == ()

    manifest.write_text(manifest_text(executable, instance("alpha", token, models=tmp_path / "models")))
    loaded = reconciler.cycle(fleet)
    assert loaded.outcome == "ok" and loaded.manifest_errors == 0
    assert [r.instance for r in loaded.observed.replicas] == ["alpha"]
    before = pids(fleet)

    manifest.write_text(
        manifest_text(
            executable,
            instance("alpha", token, ctx=4096, models=tmp_path / "models"),
            instance("beta", token, models=tmp_path / "models"),
        )
        + "x: 1\n"
    )
    broken = reconciler.cycle(fleet)
    assert broken.manifest_errors == 1 and "unknown field 'x'" in broken.error_messages[0]
    assert broken.desired_digest == loaded.desired_digest
    assert broken.plan is not None and broken.plan.is_empty
    assert pids(fleet) == before


def test_an_unchanged_manifest_is_not_parsed_again(tmp_path: Path, fleet: Embedded, token: str) -> None:
    """The same bytes keep the same desired state value (and the same errors); new bytes make a new one."""
    executable = fake_llama_executable(tmp_path)
    manifest = tmp_path / "fleet.yaml"
    manifest.write_text(manifest_text(executable, instance("alpha", token, models=tmp_path / "models")))
    reconciler = Reconciler([manifest])
    reconciler.cycle(fleet)
    first = reconciler.desired
    assert first is not None
    reconciler.cycle(fleet)
    assert reconciler.desired is first, "an unchanged manifest was loaded again"

    manifest.write_text(
        manifest_text(executable, instance("alpha", token, models=tmp_path / "models")) + "# a comment\n"
    )
    reconciler.cycle(fleet)
    assert reconciler.desired is not first and reconciler.desired == first

    manifest.write_text("version: 1\nbogus: true\n")
    broken = [reconciler.cycle(fleet) for _ in range(2)]
    assert [c.manifest_errors for c in broken] == [1, 1]
    assert broken[0].error_messages == broken[1].error_messages and "bogus" in broken[1].error_messages[0]


def test_a_refused_plan_is_reported_not_applied(tmp_path: Path, fleet: Embedded, token: str) -> None:
    executable = fake_llama_executable(tmp_path)
    manifest = tmp_path / "fleet.yaml"
    manifest.write_text(manifest_text(executable, instance("alpha", token, models=tmp_path / "models")))
    reconciler = Reconciler([manifest])
    assert reconciler.cycle(fleet).outcome == "ok"
    before = pids(fleet)
    manifest.write_text(manifest_text(executable))
    refused = reconciler.cycle(fleet)
    assert refused.outcome == "refused" and refused.refused is not None
    assert refused.report is None and pids(fleet) == before


def test_a_deposed_leaders_cycle_changes_nothing(tmp_path: Path, fleet: Embedded, token: str) -> None:
    manifest = tmp_path / "fleet.yaml"
    manifest.write_text(
        manifest_text(fake_llama_executable(tmp_path), instance("alpha", token, models=tmp_path / "models"))
    )
    registry = fleet.registry
    old = registry.acquire_lease("controller", "ctl-a", ttl_ms=60_000)
    assert old is not None and registry.release_lease("controller", "ctl-a", old)
    assert registry.acquire_lease("controller", "ctl-b", ttl_ms=60_000) == old + 1
    result = Reconciler([manifest]).cycle(fleet, Fence("controller", "ctl-a", old))
    assert result.report is not None and result.report.outcomes
    assert {o.status for o in result.report.outcomes} == {"skipped"}
    assert result.outcome == "failed"
    assert fleet.agent.list_replicas() == ()
    with registry.engine.connect() as conn:
        assert apply_log.recent(conn) == []


def test_vram_auto_estimates_are_cached_by_model_file(tmp_path: Path) -> None:
    model = tmp_path / "m.gguf"
    model.write_bytes(b"GGUF")
    text = (
        "version: 1\nbackends:\n  b: {type: llama_cpp, install: {binary: /bin/true}}\ninstances:\n"
        f"  auto: {{backend: b, model: {model}, options: {{ctx_size: 512}}}}\n"
        f"  fixed: {{backend: b, model: {model}, vram: 1GiB}}\n"
    )
    loaded = load_manifest_text(text)
    assert loaded.desired is not None, [d.message for d in loaded.errors]
    calls: list[str] = []

    def estimate(spec: InstanceSpec) -> int:
        calls.append(spec.name)
        return 123

    estimates = VramEstimates(estimate)
    assert estimates.for_desired(loaded.desired) == {"auto": 123}
    assert estimates.for_desired(loaded.desired) == {"auto": 123}
    assert calls == ["auto"]
    os.utime(model, ns=(0, 1))  # the model file changed
    assert estimates.for_desired(loaded.desired) == {"auto": 123}
    assert calls == ["auto", "auto"]
