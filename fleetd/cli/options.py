"""Command-line options that several commands share, declared once so their flags and help agree."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

DatabaseUrl = Annotated[
    str | None,
    typer.Option(
        "--database-url",
        envvar="FLEETD_DATABASE_URL",
        help="SQLAlchemy URL (postgresql+psycopg://...); default: SQLite under $FLEETD_STATE_DIR.",
        show_default=False,
    ),
]

PathsArg = Annotated[
    list[Path] | None,
    typer.Argument(
        help="Manifest files or directories of *.yaml files (default: fleet.yaml).", show_default=False
    ),
]
