"""Which model files are missing on this node: the agent's answer to ``missing_models`` (in-process and over
gRPC), asked by a controller before it places a replica here.

Only absolute paths are looked at: a model repository id (``org/name``) or a URL is not a file on the node, and
the manifest already anchored ``./`` and ``../`` paths to its own directory. A path that exists, file or
directory (an MLX or vLLM model directory), counts as present; whether it can be read is the load's to say.
Read-only and unfenced, like ``estimate``.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path


def missing_model_paths(paths: Iterable[str]) -> frozenset[str]:
    """The absolute paths among ``paths`` that do not exist here."""
    return frozenset(path for path in paths if path.startswith("/") and _missing(path))


def _missing(path: str) -> bool:
    """No such file or directory; a path this agent may not look into (permissions) is not called missing."""
    try:
        Path(path).stat()
    except (FileNotFoundError, NotADirectoryError):
        return True
    except OSError:
        return False
    return False


class LocalModelFiles:
    """``missing_models`` for this machine's node without an agent running: what ``fleetd plan`` asks on the
    controller's own machine (the embedded mode's node, or the distributed mode's address-less one)."""

    def __init__(self, node: str) -> None:
        self._node = node

    @property
    def node(self) -> str:
        return self._node

    def missing_models(self, paths: Iterable[str]) -> frozenset[str]:
        return missing_model_paths(paths)
