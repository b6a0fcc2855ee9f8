"""The pure planner (architecture.md §5 and §6): ``plan(desired, observed, now) -> Plan``.

Pure by contract: import-linter forbids every I/O library here, and the planner takes ``now`` as an
argument. It arrives with the planner issue; the package exists now so the contract guards it from the start.
"""
