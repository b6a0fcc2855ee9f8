"""The registry: fleetd's memory of what is observed and what was applied (architecture.md §7).

SQLite by default (zero setup), PostgreSQL for fleets with several controllers. Modules hold the queries of
one concern each (``nodes``, ``reservations``, ``pending_ops``, ``leases``, ``replicas``, ``instances``,
``apply_log``, ``snapshots``); each function takes a ``Connection`` so callers choose the transaction, and
``now_ms`` so tests control time. ``facade.Registry`` bundles them with an engine and a clock.
"""
