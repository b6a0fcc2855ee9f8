"""Node facts: the real fallback on this GPU-less machine, NVML read through a fake that speaks pynvml's API
(a boundary fake: the code under test is not patched), and hardware declared by a ``--facts`` file."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest

from fleetd.agent.local import LocalAgent
from fleetd.agent.node_facts import (
    DECLARED_GPU_NAME,
    DeclaredFacts,
    FactsFileError,
    Ram,
    compose_report,
    declared_report,
    platform_name,
    platform_supports,
    read_facts_file,
    read_gpus,
    read_node_facts,
)
from fleetd.core.observed import ReplicaState
from fleetd.planning.launch_config import config_hash
from fleetd.runtimes import llama_cpp, mlx_lm, vllm
from fleetd.transport.agent_api import GpuInfo, LaunchRequest
from tests.agent.support import fake_backend_executable, fake_manifest

GIB = 1024**3


Device = tuple[str | bytes, int, int]
"""Name (pynvml returns str, older versions bytes), total bytes, free bytes."""


class FakeNVMLError(Exception):
    """Like ``pynvml.NVMLError``."""


@dataclass(frozen=True, slots=True)
class FakeMemory:
    total: int
    free: int
    used: int


@dataclass
class FakeNvml:
    """An NVML with the given devices (name, total, free); ``fail_at`` names the call that raises."""

    devices: list[Device]
    fail_at: str | None = None
    calls: list[str] = field(default_factory=list)
    NVMLError: type[Exception] = FakeNVMLError

    def _call(self, name: str) -> None:
        self.calls.append(name)
        if name == self.fail_at:
            raise FakeNVMLError(f"{name}: Driver Not Loaded")

    def nvmlInit(self) -> None:
        self._call("init")

    def nvmlShutdown(self) -> None:
        self._call("shutdown")

    def nvmlDeviceGetCount(self) -> int:
        self._call("count")
        return len(self.devices)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        self._call("handle")
        return index

    def nvmlDeviceGetName(self, handle: int) -> str | bytes:
        self._call("name")
        return self.devices[handle][0]

    def nvmlDeviceGetMemoryInfo(self, handle: int) -> FakeMemory:
        self._call("memory")
        _, total, free = self.devices[handle]
        return FakeMemory(total, free, total - free)


TWO_GPUS: list[Device] = [("NVIDIA H100 80GB HBM3", 80 * GIB, 70 * GIB), (b"NVIDIA A10G", 24 * GIB, 3 * GIB)]


def test_without_a_gpu_this_machine_reports_no_vram_and_its_ram() -> None:
    report = read_node_facts("here", backends=("llama-cpp",))
    assert report.node == "here"
    assert report.gpu_vendor == "none"
    assert (report.gpus, report.total_vram, report.available_vram) == ((), 0, 0)
    assert report.total_ram == psutil.virtual_memory().total
    assert 0 < report.available_ram <= report.total_ram
    assert report.platform == platform_name()
    assert report.backends == ("llama-cpp",)


def test_two_nvidia_gpus_are_summed() -> None:
    nvml = FakeNvml(TWO_GPUS)
    report = read_node_facts("gpu-1", nvml=nvml)
    assert report.gpu_vendor == "nvidia"
    assert report.gpus == (
        GpuInfo(0, "NVIDIA H100 80GB HBM3", 80 * GIB, 70 * GIB),
        GpuInfo(1, "NVIDIA A10G", 24 * GIB, 3 * GIB),
    )
    assert (report.total_vram, report.available_vram) == (104 * GIB, 73 * GIB)
    assert report.total_ram > 0
    assert nvml.calls[0] == "init"
    assert nvml.calls[-1] == "shutdown"


@pytest.mark.parametrize("fail_at", ["init", "count", "memory"])
def test_an_nvml_error_falls_back_to_no_gpu(fail_at: str) -> None:
    nvml = FakeNvml(TWO_GPUS, fail_at=fail_at)
    report = read_node_facts("gpu-1", nvml=nvml)
    assert (report.gpu_vendor, report.gpus, report.total_vram) == ("none", (), 0)
    assert report.total_ram > 0
    assert ("shutdown" in nvml.calls) == (fail_at != "init")


def test_nvml_with_no_device_is_no_gpu() -> None:
    assert read_node_facts("cpu-1", nvml=FakeNvml([])).gpu_vendor == "none"


def test_read_gpus_lets_the_nvml_error_through_and_still_shuts_down() -> None:
    nvml = FakeNvml(TWO_GPUS, fail_at="name")
    with pytest.raises(FakeNVMLError, match="name: Driver Not Loaded"):
        read_gpus(nvml)
    assert nvml.calls[-1] == "shutdown"


def test_apple_silicon_reports_its_unified_memory_as_vram() -> None:
    report = compose_report("mac", "darwin-arm64", (), Ram(64 * GIB, 40 * GIB))
    assert report.gpu_vendor == "apple"
    assert (report.total_vram, report.available_vram) == (64 * GIB, 40 * GIB)
    assert report.gpus == (GpuInfo(0, "Apple silicon (unified memory)", 64 * GIB, 40 * GIB),)
    intel_mac = compose_report("old-mac", "darwin-x86_64", (), Ram(16 * GIB, 8 * GIB))
    assert (intel_mac.gpu_vendor, intel_mac.total_vram) == ("none", 0)


@pytest.mark.parametrize(
    ("system", "machine", "expected"),
    [
        ("linux", "x86_64", "linux-x86_64"),
        ("linux", "aarch64", "linux-aarch64"),
        ("linux", "ARM64", "linux-aarch64"),
        ("darwin", "arm64", "darwin-arm64"),
        ("darwin", "x86_64", "darwin-x86_64"),
        ("win32", "AMD64", "win32-x86_64"),
    ],
)
def test_platform_names_are_normalised(system: str, machine: str, expected: str) -> None:
    assert platform_name(system, machine) == expected


def test_runtime_platforms_are_checked() -> None:
    assert platform_supports(mlx_lm.RUNTIME.platforms, "darwin-arm64")
    assert not platform_supports(mlx_lm.RUNTIME.platforms, "linux-x86_64")
    assert platform_supports(llama_cpp.RUNTIME.platforms, "linux-x86_64")
    assert platform_supports(vllm.RUNTIME.platforms, "linux-aarch64")
    assert not platform_supports(vllm.RUNTIME.platforms, "darwin-arm64")


# --facts ------------------------------------------------------------------------------------------------------


def facts_file(tmp_path: Path, content: object) -> Path:
    path = tmp_path / "facts.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return path


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (
            {"gpu_vendor": "nvidia", "total_vram": 24 * GIB, "total_ram": 64 * GIB},
            DeclaredFacts("nvidia", 24 * GIB, 64 * GIB),
        ),
        (
            {"gpu_vendor": "amd", "total_vram": "24GiB", "total_ram": " 512 MiB "},
            DeclaredFacts("amd", 24 * GIB, 512 * 1024**2),
        ),
        ({"gpu_vendor": "none", "total_vram": 0, "total_ram": "8GB"}, DeclaredFacts("none", 0, 8 * 1000**3)),
        ({"gpu_vendor": "apple", "total_vram": "0", "total_ram": "32GiB"}, DeclaredFacts("apple", 0, 32 * GIB)),
    ],
)
def test_a_facts_file_declares_the_hardware(tmp_path: Path, content: object, expected: DeclaredFacts) -> None:
    assert read_facts_file(facts_file(tmp_path, content)) == expected


GOOD = {"gpu_vendor": "nvidia", "total_vram": "24GiB", "total_ram": "64GiB"}


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{", r"not valid JSON \(Expecting property name enclosed in double quotes, line 1, column 2\); write"),
        ("", r"not valid JSON .*; write an object such as"),
        ([GOOD], r"expected a JSON object, got an array; write one such as"),
        (
            {**GOOD, "gpu_count": 2},
            r"unknown key 'gpu_count'; a facts file has only gpu_vendor, total_vram, total_ram",
        ),
        ({"gpu_vendor": "nvidia", "total_vram": "24GiB"}, r"total_ram is missing; add it, e.g. \{"),
        (
            {**GOOD, "gpu_vendor": "intel"},
            r'gpu_vendor: "intel" is not a GPU vendor .*use one of amd, apple, none, nvidia',
        ),
        ({**GOOD, "gpu_vendor": ["nvidia"]}, r"gpu_vendor: an array is not a GPU vendor fleetd knows"),
        ({**GOOD, "total_vram": "lots"}, r"total_vram: 'lots' is not a size; use a number with a unit"),
        ({**GOOD, "total_ram": -1}, r"total_ram: a size cannot be negative, got -1"),
        (
            {**GOOD, "total_vram": 1.5},
            r'total_vram: expected bytes as an integer or a size such as "24GiB", got 1.5',
        ),
        ({**GOOD, "total_ram": True}, r"total_ram: expected bytes .*, got true"),
    ],
)
def test_a_bad_facts_file_is_one_line_naming_the_file_and_the_field(
    tmp_path: Path, content: object, message: str
) -> None:
    path = facts_file(tmp_path, content)
    with pytest.raises(FactsFileError) as caught:
        read_facts_file(path)
    text = str(caught.value)
    assert text.startswith(f"{path}: ")
    assert "\n" not in text
    assert caught.match(message)


def test_a_missing_facts_file_says_what_to_give(tmp_path: Path) -> None:
    path = tmp_path / "absent.json"
    with pytest.raises(FactsFileError, match=r"absent.json: no such file; give --facts a JSON file such as"):
        read_facts_file(path)
    with pytest.raises(FactsFileError, match=r": cannot read it \(Is a directory\); give --facts a readable"):
        read_facts_file(tmp_path)


def test_the_declared_report_counts_free_vram_from_the_replicas() -> None:
    facts = DeclaredFacts("nvidia", 24 * GIB, 64 * GIB)
    report = declared_report("n", facts, replicas_vram=10 * GIB, backends=("fake",), available_ram=100 * GIB)
    assert (report.node, report.gpu_vendor, report.platform, report.backends) == (
        "n",
        "nvidia",
        platform_name(),
        ("fake",),
    )
    assert (report.total_vram, report.available_vram) == (24 * GIB, 14 * GIB)
    assert report.gpus == (GpuInfo(0, DECLARED_GPU_NAME, 24 * GIB, 14 * GIB),)
    assert (report.total_ram, report.available_ram) == (64 * GIB, 64 * GIB)  # capped at the declared total
    over = declared_report("n", facts, replicas_vram=30 * GIB, backends=(), available_ram=GIB)
    assert (over.available_vram, over.available_ram) == (0, GIB)
    cpu = declared_report("n", DeclaredFacts("none", 0, GIB), replicas_vram=0, backends=(), available_ram=GIB)
    assert (cpu.gpus, cpu.total_vram, cpu.available_vram) == ((), 0, 0)


def test_a_local_agent_with_declared_facts_counts_its_replicas_vram(tmp_path: Path) -> None:
    desired = fake_manifest(
        fake_backend_executable(tmp_path),
        instances="  chat:\n    backend: fake\n    model: org/chat-model\n    vram: 1GiB\n",
    )
    spec, backend = desired.instance("chat"), desired.backend("fake")
    assert spec is not None and backend is not None
    agent = LocalAgent("node-1", tmp_path / "state", facts=DeclaredFacts("nvidia", 8 * GIB, 16 * GIB))
    agent.start()
    try:
        before = agent.health()
        assert (before.gpu_vendor, before.total_vram, before.available_vram) == ("nvidia", 8 * GIB, 8 * GIB)
        assert before.total_ram == 16 * GIB
        agent.install_backend(backend)
        loaded = agent.load(LaunchRequest(spec, backend, 0, config_hash(spec, backend), vram_bytes=GIB))
        assert loaded.state is ReplicaState.RUNNING, loaded.last_error
        after = agent.health()
        assert (after.total_vram, after.available_vram) == (8 * GIB, 7 * GIB)
        assert after.backends == ("fake",)
    finally:
        agent.close(stop_replicas=True)
    assert agent.health().available_vram == 8 * GIB
