"""The one controller path (architecture.md §1-§3): observe -> plan -> save -> apply.

``fleetd plan``, ``apply``, ``status`` and the ``serve`` loop call the functions of this layer and nothing
else decides: a ``Fleet`` (embedded today, distributed next) gives the registry, an ``AgentClient`` per node and
a fresh observation; a ``ManifestSource`` (files today, a git remote next) gives the manifest and its
revision; ``cycles`` runs the pure planner and the executor over them; ``leadership`` holds the controller
lease whose fencing epoch every write carries. The CLI parses and formats; the daemon wires triggers to cycles.
"""
