"""Command-line options that several commands share, declared once so their flags and help agree."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from fleetd.daemon.log_format import LogFormat

DatabaseUrl = Annotated[
    str | None,
    typer.Option(
        "--database-url",
        metavar="URL",
        envvar="FLEETD_DATABASE_URL",
        help="SQLAlchemy URL (postgresql+psycopg://...); default: SQLite under $FLEETD_STATE_DIR.",
        show_default=False,
    ),
]

PathsArg = Annotated[
    list[Path] | None,
    typer.Argument(
        metavar="PATH",
        help="Manifest files or directories of *.yaml files (default: fleet.yaml).",
        show_default=False,
        readable=False,  # the manifest loader names an unreadable file, as it names every other problem
    ),
]

TlsCert = Annotated[
    Path | None,
    typer.Option(
        "--tls-cert",
        metavar="FILE",
        envvar="FLEETD_TLS_CERT",
        help="This process's certificate (PEM) for mutual TLS with the agents (with --tls-key and --tls-ca).",
        show_default=False,
    ),
]
TlsKey = Annotated[
    Path | None,
    typer.Option(
        "--tls-key",
        metavar="FILE",
        envvar="FLEETD_TLS_KEY",
        help="The private key of --tls-cert (PEM).",
        show_default=False,
    ),
]
TlsCa = Annotated[
    Path | None,
    typer.Option(
        "--tls-ca",
        metavar="FILE",
        envvar="FLEETD_TLS_CA",
        help="The CA that signed the peers' certificates (PEM).",
        show_default=False,
    ),
]
Insecure = Annotated[
    bool,
    typer.Option(
        "--insecure",
        envvar="FLEETD_INSECURE",
        help="Talk to agents without TLS (tests on one machine only; every log line says so).",
    ),
]

LogFormatOption = Annotated[
    LogFormat,
    typer.Option(
        "--log-format",
        envvar="FLEETD_LOG_FORMAT",
        help="How each log line is written: logfmt (key=value) or json (one object per line).",
    ),
]
