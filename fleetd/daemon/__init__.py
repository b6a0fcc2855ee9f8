"""The long-running side of fleetd: the embedded mode's wiring and the reconcile loop of ``fleetd serve``."""
