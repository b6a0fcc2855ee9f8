"""The name rule for instances, nodes and backends, and the rules for labels and environment keys.

Names end up in file paths, NATS subjects, URLs and action ids (``load:qwen-7b:gpu-a:0``), so the rule is
strict: lowercase letters, digits, ``.``, ``_`` and ``-``, at most 63 characters, alphanumeric at both ends.
"""

from __future__ import annotations

import re

NAME_PATTERN = r"^[a-z0-9]([a-z0-9._-]{0,61}[a-z0-9])?$"
LABEL_KEY_PATTERN = r"^[A-Za-z0-9]([A-Za-z0-9._/-]{0,61}[A-Za-z0-9])?$"
LABEL_VALUE_PATTERN = r"^([A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?)?$"
ENV_KEY_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*$"

_NAME = re.compile(NAME_PATTERN)
_LABEL_KEY = re.compile(LABEL_KEY_PATTERN)
_LABEL_VALUE = re.compile(LABEL_VALUE_PATTERN)
_ENV_KEY = re.compile(ENV_KEY_PATTERN)

AUTO_LABEL_KEYS = frozenset({"gpu.vendor", "gpu.vram", "node.name", "node.replica-slots"})
"""Labels fleetd sets on every node itself; a manifest may select on them but not set them."""


def name_problem(name: str) -> str | None:
    """Why ``name`` is not a valid fleetd name, or ``None`` when it is."""
    if _NAME.fullmatch(name):
        return None
    if not name:
        return "a name cannot be empty"
    if len(name) > 63:
        return f"{name!r} is {len(name)} characters long; names have at most 63"
    if name != name.lower() and _NAME.fullmatch(name.lower()):
        return f"{name!r} has uppercase letters; names are lowercase ({name.lower()!r})"
    bad = sorted({ch for ch in name if not (ch.islower() or ch.isdigit() or ch in "._-") or not ch.isascii()})
    if bad:
        shown = " ".join(repr(ch) for ch in bad)
        return (
            f"{name!r} contains {shown}; names use only lowercase letters, digits, '.', '_' and '-' "
            "(they become file paths, NATS subjects and URLs)"
        )
    return f"{name!r} must start and end with a lowercase letter or digit"


def label_key_problem(key: str) -> str | None:
    """Why ``key`` is not a valid label key, or ``None``."""
    if _LABEL_KEY.fullmatch(key):
        return None
    return (
        f"label key {key!r} is invalid; use letters, digits, '.', '_', '/', '-' (at most 63), "
        "alphanumeric at both ends"
    )


def label_value_problem(value: str) -> str | None:
    """Why ``value`` is not a valid label value, or ``None``."""
    if _LABEL_VALUE.fullmatch(value):
        return None
    return (
        f"label value {value!r} is invalid; use letters, digits, '.', '_', '-' (at most 63), "
        "alphanumeric at both ends"
    )


def env_key_problem(key: str) -> str | None:
    """Why ``key`` is not a valid environment variable name, or ``None``."""
    if _ENV_KEY.fullmatch(key):
        return None
    return f"environment variable name {key!r} is invalid; use letters, digits and '_', not starting with a digit"
