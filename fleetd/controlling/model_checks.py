"""Model files checked before a plan loads them (issue 14: checks before runtime).

The planner is pure: it cannot ask a node whether a file is there. So ``plan_once`` plans, asks the nodes that
the plan's loads and restarts land on which of the manifest's model paths they lack (``missing_models``, one
call per node carrying every path, each node at most once per plan, the nodes at once on a small thread pool),
and plans again with the answers in the observed state (``ObservedNode.missing_models``), where placement rules
such a node out for that model (``model_missing``) and the plan's notes name the node and the path. The new plan
may land on nodes not asked yet; they are asked in turn, for at most ``MAX_ROUNDS`` rounds.

What this costs ``serve``: a converged cycle loads nothing and asks nothing; a cycle whose loads all find their
files asks each target node once and plans once. Only a missing file costs a second plan. A node that cannot be
asked counts as having the files (its load then reports the missing one, as before this check). Only absolute
paths are asked about (``InstanceSpec.model_path``): a repository id or URL is no file on the node.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor

from fleetd.core.desired import DesiredState
from fleetd.core.observed import ObservedState, with_missing_models
from fleetd.planning.plans import ActionKind, Plan
from fleetd.transport.agent_api import AgentError, ModelFiles

log = logging.getLogger("fleetd.controller")

MAX_ROUNDS = 4
"""Plans made after the first at most; each round asks only nodes that no earlier round asked."""
MAX_WORKERS = 16
_LOADING = (ActionKind.LOAD, ActionKind.RESTART)


def plan_checking_models(
    make_plan: Callable[[ObservedState], Plan],
    observed: ObservedState,
    desired: DesiredState,
    nodes: Mapping[str, ModelFiles],
) -> tuple[ObservedState, Plan]:
    """``make_plan(observed)``, made again while the nodes its loads land on say a model file is missing there;
    returns the observed state with those answers and the last plan."""
    result = make_plan(observed)
    checked = {spec.name for spec in desired.instances if spec.model_path is not None}
    if not checked or not nodes:
        return observed, result
    paths = sorted({spec.model_path for spec in desired.instances if spec.model_path is not None})
    asked: set[str] = set()
    for _ in range(MAX_ROUNDS):
        targets = _targets(result, checked, nodes) - asked
        if not targets:
            break
        asked |= targets
        missing = ask_missing_models(nodes, sorted(targets), paths)
        if not any(missing.values()):
            break
        observed = with_missing_models(observed, missing)
        result = make_plan(observed)
    return observed, result


def _targets(plan: Plan, checked: set[str], nodes: Mapping[str, ModelFiles]) -> set[str]:
    """The nodes where ``plan`` starts a process of an instance whose model is a file, that can be asked."""
    return {a.node for a in plan.actions if a.kind in _LOADING and a.instance in checked and a.node in nodes}


def ask_missing_models(
    nodes: Mapping[str, ModelFiles], names: Sequence[str], paths: Sequence[str]
) -> dict[str, frozenset[str]]:
    """Node name -> the ``paths`` it lacks, for each of ``names``; all asked at once, each under its client's
    deadline. A node that cannot answer lacks nothing here (logged)."""

    def one(name: str) -> tuple[str, frozenset[str]]:
        try:
            return name, frozenset(nodes[name].missing_models(paths)) & frozenset(paths)
        except AgentError as exc:
            log.warning("cannot check the model files on node %s (placing as if they were there): %s", name, exc)
            return name, frozenset()

    if len(names) == 1:
        return dict([one(names[0])])
    with ThreadPoolExecutor(max_workers=min(MAX_WORKERS, len(names)), thread_name_prefix="fleetd-models") as pool:
        return dict(pool.map(one, names))
