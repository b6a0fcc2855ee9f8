"""The packaging files: the systemd units, the Dockerfile and the quickstart fleet.

None of them runs here (no systemd to start units, no docker engine), so these tests read them and check what
the daemon relies on: ``Type=notify`` and the watchdog (``fleetd serve`` sends READY=1 and WATCHDOG=1),
``KillMode=process`` (replicas outlive a restart of the daemon and are adopted), the hardening, GPUs left
reachable, a non-root multi-stage image with a health check, and a quickstart manifest that validates and
points at the model ``make_model.py`` writes.
"""

from __future__ import annotations

import configparser
import importlib.util
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import pytest

from fleetd.manifest.loading import load_manifest

ROOT = Path(__file__).resolve().parent.parent
UNITS = {
    "fleetd.service": "/usr/local/bin/fleetd serve /etc/fleetd/fleet.yaml",
    "fleetd-agent.service": "/usr/local/bin/fleetd agent",
}
QUICKSTART = ROOT / "examples" / "quickstart"

HARDENING = {
    "NoNewPrivileges": "yes",
    "ProtectSystem": "strict",
    "ReadWritePaths": "/var/lib/fleetd",
    "PrivateTmp": "yes",
    "ProtectHome": "read-only",
    "ProtectKernelTunables": "yes",
    "ProtectKernelModules": "yes",
    "ProtectControlGroups": "yes",
    "RestrictSUIDSGID": "yes",
    "LockPersonality": "yes",
    "RestrictRealtime": "yes",
    "SystemCallArchitectures": "native",
    "CapabilityBoundingSet": "",
    "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6 AF_NETLINK",
}
SERVICE = {
    "Type": "notify",
    "WatchdogSec": "60",
    "KillMode": "process",
    "Restart": "on-failure",
    "User": "fleetd",
    "StateDirectory": "fleetd",
    "Environment": "FLEETD_STATE_DIR=/var/lib/fleetd",
}
FORBIDDEN = ("PrivateDevices", "MemoryDenyWriteExecute", "DynamicUser")
"""PrivateDevices hides the GPUs; MemoryDenyWriteExecute breaks CUDA/ROCm JIT; DynamicUser loses the state."""


# systemd units ----------------------------------------------------------------------------------------------


def read_unit(name: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None, comment_prefixes=("#", ";"))
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # unit keys are case-sensitive
    parser.read_string((ROOT / "systemd" / name).read_text(encoding="utf-8"), source=name)
    return parser


def unit_values(name: str, key: str) -> list[str]:
    """Every value of a key that may repeat (configparser keeps only the last)."""
    pattern = re.compile(rf"^{re.escape(key)}=(.*)$")
    lines = (ROOT / "systemd" / name).read_text(encoding="utf-8").splitlines()
    return [m.group(1).strip() for m in map(pattern.match, lines) if m is not None]


@pytest.mark.parametrize("name", sorted(UNITS))
def test_unit_has_the_sections_systemd_needs(name: str) -> None:
    unit = read_unit(name)
    assert unit.sections() == ["Unit", "Service", "Install"]
    assert unit["Install"]["WantedBy"] == "multi-user.target"
    assert "network-online.target" in unit["Unit"]["After"]


@pytest.mark.parametrize("name", sorted(UNITS))
def test_unit_runs_fleetd_as_a_notify_service_that_leaves_replicas_running(name: str) -> None:
    service = read_unit(name)["Service"]
    assert service["ExecStart"] == UNITS[name]
    for key, value in SERVICE.items():
        assert service.get(key) == value, key
    # serve re-reads its manifest on SIGHUP; the agent has nothing to re-read (its options are its command line)
    reload = "/bin/kill -HUP $MAINPID" if name == "fleetd.service" else None
    assert service.get("ExecReload") == reload


@pytest.mark.parametrize("name", sorted(UNITS))
def test_unit_is_hardened(name: str) -> None:
    service = read_unit(name)["Service"]
    for key, value in HARDENING.items():
        assert service.get(key) == value, key


@pytest.mark.parametrize("name", sorted(UNITS))
def test_unit_leaves_gpus_and_jit_usable(name: str) -> None:
    service = read_unit(name)["Service"]
    for key in FORBIDDEN:
        assert key not in service, key
    allowed = {value.split()[0] for value in unit_values(name, "DeviceAllow")}
    assert {"char-nvidia*", "char-kfd", "char-drm"} <= allowed
    assert all(value.split()[1] == "rw" for value in unit_values(name, "DeviceAllow"))


def test_units_differ_only_where_the_agent_does() -> None:
    serve, agent = read_unit("fleetd.service")["Service"], read_unit("fleetd-agent.service")["Service"]
    shared = set(HARDENING) | set(SERVICE) | {"DevicePolicy", "Group"}
    assert {key: serve.get(key) for key in shared} == {key: agent.get(key) for key in shared}
    assert unit_values("fleetd.service", "DeviceAllow") == unit_values("fleetd-agent.service", "DeviceAllow")


# Dockerfile -------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Instruction:
    keyword: str
    arguments: str


def read_dockerfile() -> list[list[Instruction]]:
    """The Dockerfile's instructions grouped by stage (continuation lines joined, comments dropped)."""
    logical: list[str] = []
    pending = ""
    for raw in (ROOT / "Dockerfile").read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    assert not pending, "the Dockerfile ends in a line continuation"
    stages: list[list[Instruction]] = []
    for line in logical:
        keyword, _, arguments = line.partition(" ")
        instruction = Instruction(keyword.upper(), arguments.strip())
        if instruction.keyword == "FROM":
            stages.append([])
        assert stages, f"{instruction.keyword} before the first FROM"
        stages[-1].append(instruction)
    return stages


def arguments(stage: list[Instruction], keyword: str) -> list[str]:
    return [i.arguments for i in stage if i.keyword == keyword]


def test_dockerfile_is_multi_stage_on_python_311() -> None:
    stages = read_dockerfile()
    assert len(stages) == 2
    assert [arguments(s, "FROM")[0].split()[0] for s in stages] == ["python:3.11-slim", "python:3.11-slim"]
    assert any("pip wheel" in run for run in arguments(stages[0], "RUN"))
    assert any("pip install" in run for run in arguments(stages[1], "RUN"))


def test_dockerfile_runs_as_a_non_root_user() -> None:
    final = read_dockerfile()[-1]
    users = arguments(final, "USER")
    assert users, "the final stage sets no USER"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0")
    assert any("--uid 10001" in run for run in arguments(final, "RUN"))
    assert user in ("10001", "fleetd")


def test_dockerfile_keeps_state_in_a_volume_owned_by_fleetd() -> None:
    final = read_dockerfile()[-1]
    assert any("FLEETD_STATE_DIR=/var/lib/fleetd" in env for env in arguments(final, "ENV"))
    assert arguments(final, "VOLUME") == ["/var/lib/fleetd"]
    assert any("chown fleetd:fleetd /var/lib/fleetd" in run for run in arguments(final, "RUN"))


def test_dockerfile_serves_http_with_a_health_check() -> None:
    final = read_dockerfile()[-1]
    assert arguments(final, "EXPOSE") == ["9464"]
    (healthcheck,) = arguments(final, "HEALTHCHECK")
    assert "CMD" in shlex.split(healthcheck)
    assert "http://127.0.0.1:9464/healthz" in healthcheck
    assert arguments(final, "ENTRYPOINT") == ['["fleetd"]']
    assert arguments(final, "CMD") == ['["serve", "/etc/fleetd/fleet.yaml", "--http", "0.0.0.0:9464"]']


def test_dockerignore_keeps_the_context_small() -> None:
    ignored = set((ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines())
    assert {".git", ".venv", "tests", "*.gguf"} <= ignored
    assert not ignored & {"fleetd", "pyproject.toml", "README.md"}


# quickstart -------------------------------------------------------------------------------------------------


def make_model_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("quickstart_make_model", QUICKSTART / "make_model.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_quickstart_manifest_is_valid() -> None:
    loaded = load_manifest([QUICKSTART / "fleet.yaml"])
    assert loaded.errors == ()
    assert loaded.warnings == ()
    assert loaded.desired is not None
    (instance,) = loaded.desired.instances
    assert instance.name == "tiny"
    assert instance.vram_bytes == 64 * 2**20
    assert loaded.manifest is not None
    assert loaded.manifest.nodes is None


def test_quickstart_model_is_where_make_model_writes_it() -> None:
    loaded = load_manifest([QUICKSTART / "fleet.yaml"])
    assert loaded.desired is not None
    (instance,) = loaded.desired.instances
    # relative model paths are resolved against fleetd's working directory: the repository root
    assert ROOT / instance.model == make_model_module().MODEL


def test_make_model_writes_the_tiny_model_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    module = make_model_module()
    target = tmp_path / "models" / "tiny.gguf"
    monkeypatch.setattr(module, "MODEL", target)
    assert module.main() == 0
    written = target.read_bytes()
    assert written[:4] == b"GGUF"
    assert list(target.parent.iterdir()) == [target]
    assert module.main() == 0
    assert target.read_bytes() == written
