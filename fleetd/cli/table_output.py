"""Plain-text tables for the commands that list things (``fleetd status``, ``fleetd node list``), so that every
list looks the same: aligned columns, sizes shown approximately, long errors cut to one short line."""

from __future__ import annotations

from collections.abc import Sequence


def table(header: tuple[str, ...], rows: Sequence[tuple[str, ...]], *, indent: str = "  ") -> list[str]:
    """Aligned lines, the header first; no lines at all when there are no rows."""
    if not rows:
        return []
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]
    return [
        indent + "  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip() for row in (header, *rows)
    ]


def approx_size(size: int) -> str:
    """``25769803776`` -> ``"24.0 GiB"``: one decimal, for reading, not for parsing back."""
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


def one_line(text: str | None, limit: int = 80) -> str:
    """Whitespace (newlines too) squeezed to single spaces, cut to ``limit`` characters; ``-`` when empty."""
    squeezed = " ".join((text or "").split())
    if len(squeezed) > limit:
        squeezed = squeezed[: limit - 3] + "..."
    return squeezed or "-"
