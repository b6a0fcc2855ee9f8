"""Frozen values shared by every layer: names, units, diagnostics, the desired state.

Nothing here performs I/O or imports a third-party library; the planner builds on these types alone.
"""
