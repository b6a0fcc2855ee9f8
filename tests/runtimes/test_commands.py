"""The argv each backend type is started with: exact shapes, option flags in a stable order, booleans,
``command_override``, docker per GPU vendor, and secrets kept out of every command line and log line."""

from __future__ import annotations

import dataclasses

import pytest

from fleetd.core.desired import (
    BackendSpec,
    BackendType,
    EnvValue,
    InstallKind,
    InstallRecipe,
    InstanceSpec,
    OptionValue,
)
from fleetd.runtimes import Command, MissingEnvironment, build_command, resolve_environment
from fleetd.runtimes.commands import option_arguments
from fleetd.runtimes.llama_cpp import OPTIONS as LLAMA_OPTIONS

SECRET = "hf_s3cr3t-value-never-shown"


def backend(kind: BackendType, *, image: str | None = "registry.example/backend:1") -> BackendSpec:
    return BackendSpec(
        name="engine", type=kind, install=InstallRecipe(InstallKind.PIP, "pkg==1"), docker_image=image
    )


def instance(
    model: str = "/models/qwen.gguf",
    *,
    options: tuple[tuple[str, OptionValue], ...] = (),
    **changes: object,
) -> InstanceSpec:
    spec = InstanceSpec(name="qwen-7b", backend="engine", model=model, options=options)
    return dataclasses.replace(spec, **changes)  # type: ignore[arg-type]


def build(
    spec: InstanceSpec,
    kind: BackendType,
    *,
    executable: str = "/opt/bin/server",
    environment: dict[str, str] | None = None,
    gpu_vendor: str = "none",
    image: str | None = "registry.example/backend:1",
) -> Command:
    return build_command(
        spec,
        backend(kind, image=image),
        executable=executable,
        host="10.0.0.5",
        port=8081,
        replica=2,
        environment=environment or {},
        gpu_vendor=gpu_vendor,
    )


def test_llama_server_argv_with_its_endpoints_and_options_sorted_by_name() -> None:
    spec = instance(options=(("n_gpu_layers", 99), ("ctx_size", 8192), ("temp", 0.7), ("alias", "qwen")))
    command = build(spec, BackendType.LLAMA_CPP)
    assert command.argv == (
        "/opt/bin/server",
        "--model",
        "/models/qwen.gguf",
        "--host",
        "10.0.0.5",
        "--port",
        "8081",
        "--metrics",
        "--slots",
        "--alias",
        "qwen",
        "--ctx-size",
        "8192",
        "--n-gpu-layers",
        "99",
        "--temp",
        "0.7",
    )
    assert command.env == ()
    assert command.container is None


def test_option_order_does_not_depend_on_the_manifest_order() -> None:
    forward = instance(options=(("ctx_size", 512), ("threads", 4)))
    backward = instance(options=(("threads", 4), ("ctx_size", 512)))
    assert build(forward, BackendType.LLAMA_CPP) == build(backward, BackendType.LLAMA_CPP)


def test_booleans_are_bare_flags_or_nothing_and_on_off_options_get_a_value() -> None:
    options: tuple[tuple[str, OptionValue], ...] = (("jinja", True), ("mlock", False), ("flash_attn", True))
    assert option_arguments(options, LLAMA_OPTIONS) == ["--flash-attn", "on", "--jinja"]
    assert option_arguments((("flash_attn", False),), LLAMA_OPTIONS) == ["--flash-attn", "off"]
    assert option_arguments((("flash_attn", "auto"),), LLAMA_OPTIONS) == ["--flash-attn", "auto"]


def test_vllm_serve_argv_serves_the_model_under_the_instance_name() -> None:
    spec = instance(
        "Qwen/Qwen2.5-7B-Instruct",
        options=(("max_model_len", 8192), ("enforce_eager", True), ("gpu_memory_utilization", 0.9)),
    )
    command = build(spec, BackendType.VLLM, executable="/venvs/vllm/bin/vllm")
    assert command.argv == (
        "/venvs/vllm/bin/vllm",
        "serve",
        "Qwen/Qwen2.5-7B-Instruct",
        "--host",
        "10.0.0.5",
        "--port",
        "8081",
        "--served-model-name",
        "qwen-7b",
        "--enforce-eager",
        "--gpu-memory-utilization",
        "0.9",
        "--max-model-len",
        "8192",
    )


def test_mlx_lm_server_argv() -> None:
    spec = instance("mlx-community/Qwen2.5-7B-4bit", options=(("trust_remote_code", True), ("max_tokens", 512)))
    command = build(spec, BackendType.MLX_LM, executable="/venvs/mlx/bin/mlx_lm.server")
    assert command.argv == (
        "/venvs/mlx/bin/mlx_lm.server",
        "--model",
        "mlx-community/Qwen2.5-7B-4bit",
        "--host",
        "10.0.0.5",
        "--port",
        "8081",
        "--max-tokens",
        "512",
        "--trust-remote-code",
    )


def test_command_override_replaces_the_argv_and_passes_host_and_port_in_the_environment() -> None:
    spec = instance(command_override=("/usr/local/bin/my-server", "--listen-from-env"), options=(("ctx_size", 1),))
    command = build(spec, BackendType.LLAMA_CPP, environment={"A_VAR": "x", "PORT": "1"})
    assert command.argv == ("/usr/local/bin/my-server", "--listen-from-env")
    assert command.env == (("A_VAR", "x"), ("HOST", "10.0.0.5"), ("PORT", "8081"))


@pytest.mark.parametrize(
    ("vendor", "gpu_flags"),
    [
        ("nvidia", ["--gpus", "all"]),
        ("amd", ["--device", "/dev/kfd", "--device", "/dev/dri"]),
        ("none", []),
        ("apple", []),
    ],
)
def test_docker_argv_per_gpu_vendor(vendor: str, gpu_flags: list[str]) -> None:
    spec = instance(docker_enabled=True, options=(("ctx_size", 4096),))
    command = build(
        spec, BackendType.LLAMA_CPP, gpu_vendor=vendor, environment={"HF_TOKEN": SECRET, "LOG_LEVEL": "info"}
    )
    assert command.argv == (
        "docker",
        "run",
        "--rm",
        "--name",
        "fleetd-qwen-7b-2",
        "--label",
        "fleetd.instance=qwen-7b",
        "--label",
        "fleetd.replica=2",
        "-p",
        "10.0.0.5:8081:8081",
        *gpu_flags,
        "-e",
        "HF_TOKEN",
        "-e",
        "LOG_LEVEL",
        "-v",
        "/models/qwen.gguf:/models/qwen.gguf:ro",
        "--entrypoint=",
        "registry.example/backend:1",
        "/app/llama-server",
        "--model",
        "/models/qwen.gguf",
        "--host",
        "0.0.0.0",
        "--port",
        "8081",
        "--metrics",
        "--slots",
        "--ctx-size",
        "4096",
    )
    assert command.container == "fleetd-qwen-7b-2"
    assert command.env == (("HF_TOKEN", SECRET), ("LOG_LEVEL", "info"))


def test_docker_with_a_model_name_mounts_nothing_and_runs_the_image_program() -> None:
    spec = instance("Qwen/Qwen2.5-7B-Instruct", docker_enabled=True)
    command = build(spec, BackendType.VLLM, executable="/usr/bin/docker", gpu_vendor="nvidia")
    assert command.argv[0] == "/usr/bin/docker"
    assert "-v" not in command.argv
    image_at = command.argv.index("registry.example/backend:1")
    assert command.argv[image_at + 1 : image_at + 4] == ("vllm", "serve", "Qwen/Qwen2.5-7B-Instruct")


def test_docker_with_command_override_runs_the_override_in_the_image() -> None:
    spec = instance(docker_enabled=True, command_override=("serve-it",))
    command = build(spec, BackendType.LLAMA_CPP)
    assert command.argv[-2:] == ("registry.example/backend:1", "serve-it")
    assert command.argv[command.argv.index("HOST") - 1 : command.argv.index("HOST") + 1] == ("-e", "HOST")
    assert dict(command.env) == {"HOST": "0.0.0.0", "PORT": "8081"}


def test_docker_without_an_image_says_which_backend_needs_one() -> None:
    with pytest.raises(ValueError, match=r"backend engine has no docker_image"):
        build(instance(docker_enabled=True), BackendType.LLAMA_CPP, image=None)


@pytest.mark.parametrize("kind", list(BackendType))
@pytest.mark.parametrize("docker", [False, True])
def test_secret_values_never_appear_in_the_argv_or_the_redacted_form(kind: BackendType, docker: bool) -> None:
    spec = instance(
        docker_enabled=docker,
        environment=(("HF_TOKEN", EnvValue("${env:HF_TOKEN}", secret=True)),),
    )
    environment = resolve_environment(spec, {"HF_TOKEN": SECRET})
    command = build(spec, kind, environment=environment)
    assert ("HF_TOKEN", SECRET) in command.env
    assert not any(SECRET in argument for argument in command.argv)
    assert SECRET not in command.redacted()
    assert "HF_TOKEN=***" in command.redacted()


def test_redacted_is_the_shell_quoted_argv() -> None:
    spec = instance("/models/my model.gguf")
    assert (
        build(spec, BackendType.LLAMA_CPP)
        .redacted()
        .startswith("/opt/bin/server --model '/models/my model.gguf' --host")
    )


def test_resolve_environment_expands_references_inside_templates() -> None:
    spec = instance(
        environment=(
            ("AUTH", EnvValue("Bearer ${env:TOKEN}", secret=True)),
            ("MODE", EnvValue("fast")),
            ("PAIR", EnvValue("${env:A}-${env:B}", secret=True)),
        )
    )
    assert resolve_environment(spec, {"TOKEN": "t0k", "A": "1", "B": "2", "UNUSED": "u"}) == {
        "AUTH": "Bearer t0k",
        "MODE": "fast",
        "PAIR": "1-2",
    }


def test_a_missing_variable_names_the_instance_the_key_and_the_variable() -> None:
    spec = instance(environment=(("HF_TOKEN", EnvValue("${env:HUGGING_FACE_TOKEN}", secret=True)),))
    with pytest.raises(MissingEnvironment) as raised:
        resolve_environment(spec, {"OTHER": "x"})
    assert (raised.value.instance, raised.value.key, raised.value.variable) == (
        "qwen-7b",
        "HF_TOKEN",
        "HUGGING_FACE_TOKEN",
    )
    message = str(raised.value)
    assert "qwen-7b" in message
    assert "HF_TOKEN" in message
    assert "HUGGING_FACE_TOKEN is not set" in message
