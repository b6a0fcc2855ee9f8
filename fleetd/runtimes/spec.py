"""The shape of a backend type's knowledge: its options, the ones fleetd owns, where it runs.

An ``OptionSpec`` names the command-line flag and the value kinds it takes, so that the manifest can reject
``ctx_size: "big"`` or an unknown ``ctx_sise`` with a suggestion before anything starts.
"""

from __future__ import annotations

import difflib
import enum
from collections.abc import Mapping
from dataclasses import dataclass

from fleetd.core.desired import BackendType, OptionValue


class ValueKind(enum.StrEnum):
    INT = "int"
    FLOAT = "float"
    BOOL = "bool"
    STR = "str"


@dataclass(frozen=True, slots=True)
class OptionSpec:
    """One backend option: its flag, the value kinds it accepts and, optionally, the allowed strings."""

    flag: str
    kinds: frozenset[ValueKind]
    choices: frozenset[str] | None = None
    minimum: float | None = None

    def problem(self, value: OptionValue) -> str | None:
        """Why ``value`` does not fit this option, or ``None``."""
        kind = _kind_of(value)
        if kind not in self.kinds and not (kind is ValueKind.INT and ValueKind.FLOAT in self.kinds):
            wanted = " or ".join(_KIND_WORDS[k] for k in sorted(self.kinds))
            return f"expects {wanted}, got {_KIND_WORDS[kind]} {value!r}"
        if isinstance(value, str) and self.choices is not None and value not in self.choices:
            return f"expects one of {', '.join(sorted(self.choices))}, got {value!r}"
        if (
            self.minimum is not None
            and not isinstance(value, bool)
            and isinstance(value, int | float)
            and value < self.minimum
        ):
            return f"must be at least {self.minimum:g}, got {value!r}"
        return None


@dataclass(frozen=True, slots=True)
class RuntimeSpec:
    """What fleetd knows about one backend type."""

    type: BackendType
    executable: str
    options: Mapping[str, OptionSpec]
    reserved_options: Mapping[str, str]
    """Options fleetd sets itself, with the reason shown to someone who sets one by hand."""
    platforms: frozenset[str]
    """``sys.platform``-``machine`` pairs it runs on, or ``"any"``."""
    gpu_vendors: frozenset[str] | None = None
    """GPU vendors (as nodes report them) it can run on; ``None`` = any node, CPU-only included."""
    pip_executable_probe: tuple[str, ...] | None = None
    """After a ``pip`` install: arguments for the backend venv's ``python`` that print the executable's path
    on the last line of stdout; ``None`` = the venv's ``bin/<executable>`` console script."""

    def option_problem(self, name: str, value: OptionValue) -> str | None:
        """Why ``name: value`` is not acceptable for this backend type, or ``None``."""
        if name in self.reserved_options:
            return f"{name!r} is set by fleetd itself ({self.reserved_options[name]}); remove it"
        spec = self.options.get(name)
        if spec is None:
            close = difflib.get_close_matches(name, list(self.options), n=3, cutoff=0.6)
            hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
            return f"unknown option {name!r} for backend type {self.type.value}{hint}"
        problem = spec.problem(value)
        return f"option {name!r} ({spec.flag}) {problem}" if problem else None


_KIND_WORDS = {
    ValueKind.INT: "an integer",
    ValueKind.FLOAT: "a number",
    ValueKind.BOOL: "a boolean",
    ValueKind.STR: "a string",
}


def _kind_of(value: OptionValue) -> ValueKind:
    if isinstance(value, bool):
        return ValueKind.BOOL
    if isinstance(value, int):
        return ValueKind.INT
    if isinstance(value, float):
        return ValueKind.FLOAT
    return ValueKind.STR


def flag_options(*names: str) -> dict[str, OptionSpec]:
    """Boolean switches whose flag is the option name in kebab case (``cont_batching`` -> ``--cont-batching``)."""
    return {n: OptionSpec(flag=_flag(n), kinds=frozenset({ValueKind.BOOL})) for n in names}


def typed_options(kind: ValueKind, *names: str, minimum: float | None = None) -> dict[str, OptionSpec]:
    """Options of one value kind whose flag is the option name in kebab case."""
    return {n: OptionSpec(flag=_flag(n), kinds=frozenset({kind}), minimum=minimum) for n in names}


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")
