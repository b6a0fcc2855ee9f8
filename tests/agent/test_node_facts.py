"""Node facts: the real fallback on this GPU-less machine, and NVML read through a fake that speaks pynvml's
API (a boundary fake: the code under test is not patched)."""

from __future__ import annotations

from dataclasses import dataclass, field

import psutil
import pytest

from fleetd.agent.node_facts import (
    Ram,
    compose_report,
    platform_name,
    platform_supports,
    read_gpus,
    read_node_facts,
)
from fleetd.runtimes import llama_cpp, mlx_lm, vllm
from fleetd.transport.agent_api import GpuInfo

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
