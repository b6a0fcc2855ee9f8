"""Relative model paths -> absolute ones, against the directory of the manifest file that names them.

Operators keep small models beside the manifest (``model: ./models/tiny.gguf``) and run fleetd from anywhere:
systemd starts it in ``/``, CI in the checkout's root, an operator in a subdirectory. Resolving against the
working directory would make one manifest mean different files depending on where it is read, so a path that
starts with ``./`` or ``../`` is anchored at its file's directory, as Docker Compose does. The directory is
taken as given (a symlinked manifest anchors at the link's directory, not its target's). Anything else is left
alone: an absolute path already says where it is, and ``org/name`` is a model repository id.

The anchored path is what the desired state, the plan and the config hash carry, so moving the checkout
restarts the replicas whose model moved with it.
"""

from __future__ import annotations

import os
from pathlib import Path

from fleetd.manifest.models import Manifest

RELATIVE_PREFIXES = ("./", "../")


def is_relative_model(model: str) -> bool:
    return model.startswith(RELATIVE_PREFIXES) or model in {".", ".."}


def anchor_model_paths(manifest: Manifest, directory: Path) -> Manifest:
    """``manifest`` with every relative model path made absolute against ``directory``."""
    anchored = {
        name: instance.model_copy(update={"model": _absolute(directory, instance.model)})
        for name, instance in manifest.instances.items()
        if is_relative_model(instance.model)
    }
    if not anchored:
        return manifest
    return manifest.model_copy(update={"instances": {**manifest.instances, **anchored}})


def _absolute(directory: Path, model: str) -> str:
    return os.path.normpath(directory.absolute() / model)  # lexically: a symlinked directory stays as given
