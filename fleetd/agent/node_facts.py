"""The node's facts as the agent reports them: GPUs and their memory, RAM, platform, installed backends.

The scheduler places replicas by these numbers, so they are read live. NVIDIA GPUs are read through NVML
(``pynvml``, from ``nvidia-ml-py``); when NVML cannot be used (no library, no driver, no device) the node is
an Apple silicon Mac (unified memory: the GPU's memory is the RAM) or a CPU-only node with no VRAM. The NVML
reading is one small function taking anything that speaks pynvml's API (``Nvml``), so tests pass a fake NVML
at that boundary instead of patching this module.
"""

from __future__ import annotations

import importlib
import platform as platform_module
import sys
from dataclasses import dataclass
from typing import Any, Protocol, cast

import psutil

from fleetd.transport.agent_api import GpuInfo, NodeReport

ANY_PLATFORM = "any"
"""What a runtime lists in its platforms when it runs everywhere (``fleetd.runtimes``)."""
APPLE_SILICON = "darwin-arm64"

_SYSTEMS = {"linux2": "linux"}
_MACHINES = {"amd64": "x86_64", "x64": "x86_64", "i686": "x86", "i386": "x86"}
_ARM64 = {"arm64", "aarch64"}


class MemoryInfo(Protocol):
    """pynvml's ``c_nvmlMemory_t``: bytes."""

    @property
    def total(self) -> int: ...

    @property
    def free(self) -> int: ...


class Nvml(Protocol):
    """The part of pynvml's API the agent uses (pynvml names, hence the camel case)."""

    NVMLError: type[Exception]

    def nvmlInit(self) -> None: ...

    def nvmlShutdown(self) -> None: ...

    def nvmlDeviceGetCount(self) -> int: ...

    def nvmlDeviceGetHandleByIndex(self, index: int) -> Any: ...

    def nvmlDeviceGetName(self, handle: Any) -> str | bytes: ...

    def nvmlDeviceGetMemoryInfo(self, handle: Any) -> MemoryInfo: ...


@dataclass(frozen=True, slots=True)
class Ram:
    total: int
    available: int


def read_node_facts(node: str, *, backends: tuple[str, ...] = (), nvml: Nvml | None = None) -> NodeReport:
    """The facts of this machine now. ``nvml`` defaults to the installed pynvml module."""
    nvml = nvml if nvml is not None else load_nvml()
    gpus = read_gpus_or_none(nvml) if nvml is not None else ()
    return compose_report(node, platform_name(), gpus, read_ram(), backends)


def compose_report(
    node: str, platform: str, gpus: tuple[GpuInfo, ...], ram: Ram, backends: tuple[str, ...] = ()
) -> NodeReport:
    """NVIDIA when NVML found GPUs; else Apple silicon's unified memory; else no GPU and no VRAM."""
    if gpus:
        total = sum(g.total_bytes for g in gpus)
        free = sum(g.free_bytes for g in gpus)
        return NodeReport(node, "nvidia", gpus, total, free, ram.total, ram.available, platform, backends)
    if platform == APPLE_SILICON:
        unified = (GpuInfo(0, "Apple silicon (unified memory)", ram.total, ram.available),)
        return NodeReport(
            node, "apple", unified, ram.total, ram.available, ram.total, ram.available, platform, backends
        )
    return NodeReport(node, "none", (), 0, 0, ram.total, ram.available, platform, backends)


def load_nvml() -> Nvml | None:
    """The pynvml module, or ``None`` when nvidia-ml-py is not installed."""
    try:
        return cast(Nvml, importlib.import_module("pynvml"))
    except ImportError:
        return None


def read_gpus_or_none(nvml: Nvml) -> tuple[GpuInfo, ...]:
    """``read_gpus``, or no GPUs when NVML fails (no library, no driver, a device that does not answer)."""
    try:
        return read_gpus(nvml)
    except nvml.NVMLError:
        return ()


def read_gpus(nvml: Nvml) -> tuple[GpuInfo, ...]:
    """Every device NVML sees, with its memory now; raises ``nvml.NVMLError`` on failure."""
    nvml.nvmlInit()
    try:
        return tuple(_read_device(nvml, index) for index in range(nvml.nvmlDeviceGetCount()))
    finally:
        nvml.nvmlShutdown()


def _read_device(nvml: Nvml, index: int) -> GpuInfo:
    handle = nvml.nvmlDeviceGetHandleByIndex(index)
    name = nvml.nvmlDeviceGetName(handle)
    memory = nvml.nvmlDeviceGetMemoryInfo(handle)
    text = name.decode("utf-8", "replace") if isinstance(name, bytes) else name
    return GpuInfo(index, text, int(memory.total), int(memory.free))


def read_ram() -> Ram:
    memory = psutil.virtual_memory()
    return Ram(int(memory.total), int(memory.available))


def platform_name(system: str = sys.platform, machine: str | None = None) -> str:
    """``sys.platform``-machine, normalised the way runtimes list platforms: ``linux-x86_64``,
    ``linux-aarch64``, ``darwin-arm64``."""
    system = _SYSTEMS.get(system, system)
    arch = (machine if machine is not None else platform_module.machine()).lower()
    arch = _MACHINES.get(arch, arch)
    if arch in _ARM64:
        arch = "arm64" if system == "darwin" else "aarch64"
    return f"{system}-{arch}"


def platform_supports(runtime_platforms: frozenset[str], platform: str) -> bool:
    """Whether a runtime that lists ``runtime_platforms`` (``RuntimeSpec.platforms``) runs on ``platform``."""
    return ANY_PLATFORM in runtime_platforms or platform in runtime_platforms
