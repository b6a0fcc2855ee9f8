"""Lost replicas: forgotten, so that they do not block their instance.

A step of the per-instance pipeline:
- ``forget_lost``: a replica on a lost node (offline, or unknown to the registry) gets a ``forget`` (its row is
  removed; no agent is asked). Its replacement is one of the instance's missing replicas (``place``).
"""

from __future__ import annotations

from fleetd.planning.classify import Classified
from fleetd.planning.context import Need, Pass
from fleetd.planning.plans import Reason, forget_action


def forget_lost(p: Pass, need: Need, classified: Classified) -> None:
    for replica, why in classified.gone:
        if why is not Reason.NODE_LOST:
            continue
        p.draft.actions.append(
            forget_action(need.spec.name, replica.node, replica.replica, vram_bytes=replica.vram_bytes)
        )
        if (lost := p.fleet.capacity(replica.node)) is not None:
            lost.give_back(need.spec.name, 0)
