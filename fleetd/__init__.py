"""fleetd: keep a fleet of self-hosted LLM inference servers in the state a manifest declares.

The package is layered (architecture.md §2, enforced by import-linter): ``core`` holds frozen values,
``runtimes`` the pure per-backend knowledge, ``manifest`` turns YAML into a ``DesiredState``, and ``cli``
formats. Nothing below ``manifest`` performs I/O.
"""

__version__ = "0.1.0"
