"""Node actions: approvals, labels and drains that make the registry's nodes what the manifest declares.

The first step of a plan, before any instance: loads on a node wait for the approval and labels planned here
(``Draft.node_prerequisites``). Only declared nodes get actions. When the manifest declares its nodes, an
undeclared node gets a note: a pending one stays pending, and one that holds replicas sees them moved off
(``node_undeclared``) by the instances' steps.
"""

from __future__ import annotations

from fleetd.core.desired import NodeSpec
from fleetd.core.names import AUTO_LABEL_KEYS
from fleetd.core.observed import NodeStatus, ObservedNode, ReplicaState
from fleetd.planning.context import Pass
from fleetd.planning.plans import approve_action, drain_action, labels_action


def plan_nodes(p: Pass) -> None:
    declared = p.inputs.declared
    for node in p.inputs.observed.nodes:
        spec = declared.get(node.name)
        if spec is not None:
            _plan_node(p, node, spec)
        elif p.inputs.desired.nodes_declared:
            _note_undeclared(p, node)


def _plan_node(p: Pass, node: ObservedNode, spec: NodeSpec) -> None:
    if not node.approved and spec.approved:
        action = approve_action(node.name)
        p.draft.actions.append(action)
        p.draft.node_prerequisites[node.name].append(action.id)
    manifest_labels = tuple((k, v) for k, v in node.labels if k not in AUTO_LABEL_KEYS)
    slots_change = node.max_replicas_per_model != spec.max_replicas_per_model
    if manifest_labels != spec.labels or slots_change:
        # only what changes is shown: the slots only when they change
        action = labels_action(node.name, spec.labels, spec.max_replicas_per_model if slots_change else None)
        p.draft.actions.append(action)
        p.draft.node_prerequisites[node.name].append(action.id)
    if spec.drain and node.status is not NodeStatus.DRAINING:
        p.draft.actions.append(drain_action(node.name))


def _note_undeclared(p: Pass, node: ObservedNode) -> None:
    if node.status is NodeStatus.PENDING:
        p.draft.notes.append(f"node {node.name} registered but is not declared in the manifest; it stays pending")
    elif node.status is not NodeStatus.OFFLINE and any(
        r.state is not ReplicaState.STOPPING for r in p.inputs.observed.replicas_by_node.get(node.name, ())
    ):
        p.draft.notes.append(f"node {node.name} is not declared in the manifest; its replicas are moved off")
