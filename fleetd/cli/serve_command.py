"""``fleetd serve``: the command line of the reconcile daemon (the daemon itself is ``fleetd.daemon.serve``).

Kept in its own module so that ``fleetd.cli.app`` only registers it; the daemon's imports (APScheduler,
watchfiles, prometheus_client, the agent) load when the command runs, not for every ``fleetd validate``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from fleetd.cli.common import agent_access, duration_flag, fail, os_error_line, parse_flag, registry_errors
from fleetd.cli.options import DatabaseUrl, Insecure, LogFormatOption, TlsCa, TlsCert, TlsKey
from fleetd.daemon.log_format import LogFormat

if TYPE_CHECKING:
    from fleetd.daemon.serve import Liveness

EXIT_ERROR = 1


def serve(
    paths: Annotated[
        list[Path] | None,
        typer.Argument(
            metavar="PATH",
            help="Manifest files or directories of *.yaml files (default: fleet.yaml).",
            show_default=False,
            readable=False,  # serve reports an unreadable manifest as an invalid one, and waits for a fix
        ),
    ] = None,
    *,
    interval: Annotated[
        str, typer.Option("--interval", metavar="DURATION", help="Reconcile at least this often (e.g. 10s, 1m).")
    ] = "10s",
    http: Annotated[
        str,
        typer.Option(
            "--http",
            metavar="HOST:PORT",
            help="Address of /healthz, /readyz, /metrics and /status (HOST:PORT, or 'off').",
        ),
    ] = "127.0.0.1:9464",
    stop_on_exit: Annotated[
        bool, typer.Option("--stop-on-exit", help="Stop the replicas on shutdown (default: leave them running).")
    ] = False,
    database_url: DatabaseUrl = None,
    lease_ttl: Annotated[str, typer.Option("--lease-ttl", hidden=True)] = "15s",
    nats: Annotated[
        str | None,
        typer.Option(
            "--nats",
            metavar="URL",
            envvar="FLEETD_NATS_URL",
            help="nats://HOST:PORT: admit nodes and take heartbeats over NATS.",
            show_default=False,
        ),
    ] = None,
    nats_listen: Annotated[
        str | None,
        typer.Option(
            "--nats-listen",
            metavar="HOST:PORT",
            help="HOST:PORT: run the bundled nats-server there and use it.",
            show_default=False,
        ),
    ] = None,
    unhealthy_after: Annotated[
        str,
        typer.Option(
            "--unhealthy-after",
            metavar="DURATION",
            help="A node silent this long is unhealthy: nothing new is placed there.",
        ),
    ] = "6s",
    lost_after: Annotated[
        str,
        typer.Option(
            "--lost-after",
            metavar="DURATION",
            help="A node silent this long is lost: its replicas are re-placed elsewhere.",
        ),
    ] = "20s",
    max_replacements: Annotated[
        int,
        typer.Option(
            "--max-replacements",
            metavar="N",
            help="Replicas of lost nodes re-placed per cycle; the rest wait for the next one.",
        ),
    ] = 20,
    tls_cert: TlsCert = None,
    tls_key: TlsKey = None,
    tls_ca: TlsCa = None,
    insecure: Insecure = False,
    log_format: LogFormatOption = LogFormat.LOGFMT,
    stuck_after: Annotated[
        str | None,
        typer.Option(
            "--stuck-after",
            metavar="DURATION",
            help="A cycle without progress this long is stuck: /healthz, /readyz and the systemd watchdog say "
            "so (default: 5 × --interval, at least 5m; a load's own deadline counts as progress).",
            show_default=False,
        ),
    ] = None,
    stop_timeout: Annotated[
        str,
        typer.Option(
            "--stop-timeout",
            metavar="DURATION",
            help="On SIGTERM, wait this long for the running cycle, then exit 1 without it.",
        ),
    ] = "20s",
) -> None:
    """Reconcile continuously: on every manifest change, every --interval, and on SIGHUP."""
    from fleetd.daemon.http_api import parse_address
    from fleetd.daemon.nats_server import NatsServerError
    from fleetd.daemon.serve import ServeOptions
    from fleetd.daemon.serve import serve as run_serve
    from fleetd.transport.bus_api import BusError
    from fleetd.transport.security import SecurityError

    stuck_ms = duration_flag("--stuck-after", stuck_after, at_least_ms=1) if stuck_after is not None else None
    stop_ms = duration_flag("--stop-timeout", stop_timeout, at_least_ms=1)
    options = ServeOptions(
        paths=tuple(paths or [Path("fleet.yaml")]),
        interval_s=duration_flag("--interval", interval, at_least_ms=1) / 1000,
        http=None if http == "off" else parse_flag("--http", http, parse_address),
        stop_on_exit=stop_on_exit,
        database_url=database_url,
        lease_ttl_s=duration_flag("--lease-ttl", lease_ttl, at_least_ms=300) / 1000,
        access=agent_access(tls_cert, tls_key, tls_ca, insecure),
        nats_url=nats,
        nats_listen=parse_flag("--nats-listen", nats_listen, parse_address) if nats_listen is not None else None,
        liveness=_liveness(unhealthy_after, lost_after, max_replacements),
        log_format=log_format,
        stuck_after_s=stuck_ms / 1000 if stuck_ms is not None else None,
        stop_timeout_s=stop_ms / 1000,
    )
    if nats and nats_listen:
        sys.stderr.write("error: give --nats (a server to use) or --nats-listen (run one), not both\n")
        raise typer.Exit(EXIT_ERROR)
    try:
        with registry_errors(database_url):
            code = run_serve(options)
    except OSError as exc:  # e.g. the HTTP address is in use (HttpAddressError names it)
        sys.stderr.write(f"error: fleetd serve: {os_error_line(exc)}\n")
        raise typer.Exit(EXIT_ERROR) from None
    except (BusError, NatsServerError, SecurityError) as exc:
        sys.stderr.write(f"error: fleetd serve: {exc}\n")
        raise typer.Exit(EXIT_ERROR) from None
    raise typer.Exit(code)


def _liveness(unhealthy_after: str, lost_after: str, max_replacements: int) -> Liveness:
    """When a silent node is unhealthy and when lost; each flag named when it is not a duration."""
    from fleetd.daemon.serve import Liveness

    unhealthy_ms = duration_flag("--unhealthy-after", unhealthy_after, at_least_ms=1)
    lost_ms = duration_flag("--lost-after", lost_after, at_least_ms=1)
    try:
        return Liveness(unhealthy_ms, lost_ms, max_replacements)
    except ValueError as exc:  # its message names the flags
        fail(str(exc))
