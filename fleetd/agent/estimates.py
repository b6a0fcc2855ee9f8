"""``vram: auto`` estimates as the agent serves them: the model file is read on the node that has it, once per
(model path, modification time, context size), since a controller asks on every cycle and reading GGUF headers
every few seconds is waste. ``LocalAgent.estimate`` answers from here; the controller never opens a model."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from fleetd.agent.vram_estimate import EstimateError, context_size, estimate_instance
from fleetd.core.desired import DesiredState, InstanceSpec

_Key = tuple[str, int, int | None]


class VramEstimates:
    """Estimates cached by the model file; a failed estimate is cached too (with its reason) until the file
    changes, so a missing model costs one ``stat`` per question, not a read."""

    def __init__(self, estimate: Callable[[InstanceSpec], int] | None = None) -> None:
        self._estimate = estimate or (lambda spec: estimate_instance(spec).total)
        self._cache: dict[_Key, int | str] = {}

    def one(self, spec: InstanceSpec) -> int:
        """The estimate in bytes; raises ``EstimateError`` naming the model when it cannot be read."""
        try:
            mtime = Path(spec.model).stat().st_mtime_ns
        except OSError:
            mtime = -1  # a model that is not there (yet): asked again, a later cycle finds it
        key = (spec.model, mtime, context_size(spec))
        if key not in self._cache:
            try:
                self._cache[key] = self._estimate(spec)
            except (EstimateError, OSError) as exc:
                self._cache[key] = str(exc) or f"cannot read {spec.model}"
        found = self._cache[key]
        if isinstance(found, str):
            raise EstimateError(found)
        return found

    def for_desired(self, desired: DesiredState) -> dict[str, int]:
        """Instance name -> estimate, for every ``vram: auto`` instance whose model could be read."""
        found: dict[str, int] = {}
        for spec in desired.instances:
            if spec.vram_bytes is None:
                try:
                    found[spec.name] = self.one(spec)
                except EstimateError:
                    continue
        return found
