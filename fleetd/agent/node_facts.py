"""The node's facts as the agent reports them: GPUs and their memory, RAM, platform, installed backends.

The scheduler places replicas by these numbers, so they are read live. NVIDIA GPUs are read through NVML
(``pynvml``, from ``nvidia-ml-py``); when NVML cannot be used (no library, no driver, no device) the node is
an Apple silicon Mac (unified memory: the GPU's memory is the RAM) or a CPU-only node with no VRAM. The NVML
reading is one small function taking anything that speaks pynvml's API (``Nvml``), so tests pass a fake NVML
at that boundary instead of patching this module.

``--facts FILE`` declares the hardware instead (``DeclaredFacts``, read by ``read_facts_file``): for tests that
need a GPU node on a machine without one, and for hardware NVML cannot read. Nothing is then measured but the
RAM still free; the free VRAM is the declared total less what the agent's own replicas hold.
"""

from __future__ import annotations

import importlib
import json
import platform as platform_module
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, cast

import psutil

from fleetd.core.units import UnitError, parse_size_bytes
from fleetd.planning.json_reading import describe
from fleetd.transport.agent_api import GpuInfo, NodeReport

ANY_PLATFORM = "any"
"""What a runtime lists in its platforms when it runs everywhere (``fleetd.runtimes``)."""
APPLE_SILICON = "darwin-arm64"

_SYSTEMS = {"linux2": "linux"}
_MACHINES = {"amd64": "x86_64", "x64": "x86_64", "i686": "x86", "i386": "x86"}
_ARM64 = {"arm64", "aarch64"}

GPU_VENDORS = frozenset({"nvidia", "amd", "apple", "none"})
"""The vendors the rest of fleetd knows: what NVML and Apple silicon report, ``amd`` (``runtimes.vllm``'s
``gpu_vendors``, ``runtimes.docker``'s GPU flags), ``none`` for a node without a GPU."""
DECLARED_GPU_NAME = "declared by --facts"
_FACTS_KEYS = ("gpu_vendor", "total_vram", "total_ram")
_FACTS_EXAMPLE = '{"gpu_vendor": "nvidia", "total_vram": "24GiB", "total_ram": "64GiB"}'


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


class FactsFileError(ValueError):
    """A ``--facts`` file that cannot be used; the message names the file, the field and what to write."""


@dataclass(frozen=True, slots=True)
class DeclaredFacts:
    """The hardware a ``--facts`` file declares, in place of what NVML and psutil would detect."""

    gpu_vendor: str
    total_vram: int
    total_ram: int


def read_facts_file(path: Path) -> DeclaredFacts:
    """The facts ``path`` declares: a JSON object with exactly ``gpu_vendor``, ``total_vram`` and
    ``total_ram``; sizes are integers of bytes or strings such as ``"24GiB"``. Raises ``FactsFileError``."""
    data = _facts_object(path)
    unknown = sorted(set(data) - set(_FACTS_KEYS))
    if unknown:
        raise FactsFileError(f"{path}: unknown key {unknown[0]!r}; a facts file has only {', '.join(_FACTS_KEYS)}")
    missing = [key for key in _FACTS_KEYS if key not in data]
    if missing:
        raise FactsFileError(f"{path}: {missing[0]} is missing; add it, e.g. {_FACTS_EXAMPLE}")
    vendor = data["gpu_vendor"]
    if not isinstance(vendor, str) or vendor not in GPU_VENDORS:
        raise FactsFileError(
            f"{path}: gpu_vendor: {describe(vendor)} is not a GPU vendor fleetd knows; "
            f"use one of {', '.join(sorted(GPU_VENDORS))}"
        )
    return DeclaredFacts(vendor, _facts_size(path, data, "total_vram"), _facts_size(path, data, "total_ram"))


def _facts_object(path: Path) -> dict[str, object]:
    """The file's top-level JSON object, or a ``FactsFileError`` saying why there is none."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FactsFileError(f"{path}: no such file; give --facts a JSON file such as {_FACTS_EXAMPLE}") from None
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise FactsFileError(f"{path}: cannot read it ({reason}); give --facts a readable JSON file") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise FactsFileError(
            f"{path}: not valid JSON ({exc.msg}, line {exc.lineno}, column {exc.colno}); "
            f"write an object such as {_FACTS_EXAMPLE}"
        ) from None
    if not isinstance(data, dict):
        raise FactsFileError(
            f"{path}: expected a JSON object, got {describe(data)}; write one such as {_FACTS_EXAMPLE}"
        )
    return data


def _facts_size(path: Path, data: dict[str, object], key: str) -> int:
    value = data[key]
    if not isinstance(value, str | int) or isinstance(value, bool):
        raise FactsFileError(
            f'{path}: {key}: expected bytes as an integer or a size such as "24GiB", got {describe(value)}'
        )
    try:
        return parse_size_bytes(value)
    except UnitError as exc:
        raise FactsFileError(f"{path}: {key}: {exc}") from None


def declared_report(
    node: str, facts: DeclaredFacts, *, replicas_vram: int, backends: tuple[str, ...], available_ram: int
) -> NodeReport:
    """The report of a node whose hardware ``facts`` declare. Nothing measures the declared GPU, so its free
    VRAM is the total less ``replicas_vram`` (what this agent's replicas hold), never below zero. ``gpus`` is
    one synthetic device named ``DECLARED_GPU_NAME`` carrying those numbers (people see where they came from),
    or none when no VRAM is declared. ``available_ram`` is measured, capped at the declared total."""
    free_vram = max(0, facts.total_vram - replicas_vram)
    gpus = (GpuInfo(0, DECLARED_GPU_NAME, facts.total_vram, free_vram),) if facts.total_vram > 0 else ()
    return NodeReport(
        node,
        facts.gpu_vendor,
        gpus,
        facts.total_vram,
        free_vram,
        facts.total_ram,
        min(facts.total_ram, available_ram),
        platform_name(),
        backends,
    )
