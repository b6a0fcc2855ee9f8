"""Model files missing on a node: the note that names them, and the check before a restart in place.

A node's agent says which of the manifest's model paths it does not have (``ObservedNode.missing_models``, asked
only of the nodes a plan would load on). Placement rules such a node out (``Rejection.MODEL_MISSING``); a replica
that would be restarted where it is, on such a node, is reported unschedulable instead, so the process that runs
keeps running rather than being stopped for one that cannot start. Either way the plan gets one note per
instance naming the path and the nodes: "chat: model /models/chat.gguf not found on node gpu-a".
"""

from __future__ import annotations

from fleetd.core.desired import InstanceSpec
from fleetd.core.observed import ObservedState
from fleetd.planning.context import Pass
from fleetd.planning.placement import Rejection
from fleetd.planning.plans import Unschedulable

NOTE_NODES = 5
"""Nodes named in a note; more are counted."""


def note_missing_model(p: Pass, spec: InstanceSpec) -> None:
    """Add the note naming the nodes where ``spec``'s model is missing (once per instance; none when no node
    said so)."""
    note = missing_model_note(p.inputs.observed, spec)
    if note is not None and note not in p.draft.notes:
        p.draft.notes.append(note)


def missing_model_note(observed: ObservedState, spec: InstanceSpec) -> str | None:
    """``chat: model /m/chat.gguf not found on nodes gpu-a, gpu-b``, or ``None``."""
    path = spec.model_path
    nodes = sorted(n.name for n in observed.nodes if path is not None and path in n.missing_models)
    if not nodes:
        return None
    shown = ", ".join(nodes[:NOTE_NODES])
    if len(nodes) > NOTE_NODES:
        shown += f" and {len(nodes) - NOTE_NODES} more"
    return f"{spec.name}: model {path} not found on {'node' if len(nodes) == 1 else 'nodes'} {shown}"


def missing_in_place(p: Pass, spec: InstanceSpec, node: str) -> bool:
    """Whether a restart of ``spec``'s replica on ``node`` cannot start for want of the model file there; if so,
    the replica is reported unschedulable (``model_missing``) with the note."""
    capacity = p.fleet.capacity(node)
    if capacity is None or spec.model_path is None or spec.model_path not in capacity.node.missing_models:
        return False
    p.draft.add_unschedulable(Unschedulable(spec.name, 1, ((Rejection.MODEL_MISSING.value, 1),)))
    note_missing_model(p, spec)
    return True
