"""``fleetd serve``: the command line of the reconcile daemon (the daemon itself is ``fleetd.daemon.serve``).

Kept in its own module so that ``fleetd.cli.app`` only registers it; the daemon's imports (APScheduler,
watchfiles, prometheus_client, the agent) load when the command runs, not for every ``fleetd validate``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from fleetd.cli.common import agent_access, os_error_line, registry_errors
from fleetd.cli.options import DatabaseUrl, Insecure, LogFormatOption, TlsCa, TlsCert, TlsKey
from fleetd.daemon.log_format import LogFormat

EXIT_ERROR = 1


def serve(
    paths: Annotated[
        list[Path] | None,
        typer.Argument(
            help="Manifest files or directories of *.yaml files (default: fleet.yaml).", show_default=False
        ),
    ] = None,
    *,
    interval: Annotated[
        str, typer.Option("--interval", help="Reconcile at least this often (e.g. 10s, 1m).")
    ] = "10s",
    http: Annotated[
        str,
        typer.Option("--http", help="Address of /healthz, /readyz, /metrics and /status (HOST:PORT, or 'off')."),
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
            envvar="FLEETD_NATS_URL",
            help="nats://HOST:PORT: admit nodes and take heartbeats over NATS.",
            show_default=False,
        ),
    ] = None,
    nats_listen: Annotated[
        str | None,
        typer.Option(
            "--nats-listen", help="HOST:PORT: run the bundled nats-server there and use it.", show_default=False
        ),
    ] = None,
    unhealthy_after: Annotated[
        str,
        typer.Option(
            "--unhealthy-after", help="A node silent this long is unhealthy: nothing new is placed there."
        ),
    ] = "6s",
    lost_after: Annotated[
        str,
        typer.Option(
            "--lost-after", help="A node silent this long is lost: its replicas are re-placed elsewhere."
        ),
    ] = "20s",
    max_replacements: Annotated[
        int,
        typer.Option(
            "--max-replacements",
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
            help="A cycle without progress this long is stuck: /healthz, /readyz and the systemd watchdog say "
            "so (default: 5 × --interval, at least 5m; a load's own deadline counts as progress).",
            show_default=False,
        ),
    ] = None,
    stop_timeout: Annotated[
        str,
        typer.Option(
            "--stop-timeout",
            help="On SIGTERM, wait this long for the running cycle, then exit 1 without it.",
        ),
    ] = "20s",
) -> None:
    """Reconcile continuously: on every manifest change, every --interval, and on SIGHUP."""
    from fleetd.core.units import UnitError, parse_duration_ms
    from fleetd.daemon.http_api import parse_address
    from fleetd.daemon.nats_server import NatsServerError
    from fleetd.daemon.serve import Liveness, ServeOptions
    from fleetd.daemon.serve import serve as run_serve
    from fleetd.transport.bus_api import BusError
    from fleetd.transport.security import SecurityError

    try:
        interval_ms = parse_duration_ms(interval)
        ttl_ms = parse_duration_ms(lease_ttl)
        address = None if http == "off" else parse_address(http)
        bus_listen = parse_address(nats_listen) if nats_listen is not None else None
        liveness = Liveness(parse_duration_ms(unhealthy_after), parse_duration_ms(lost_after), max_replacements)
        stuck_ms = parse_duration_ms(stuck_after) if stuck_after is not None else None
        stop_ms = parse_duration_ms(stop_timeout)
    except (UnitError, ValueError) as exc:
        sys.stderr.write(f"error: {exc}\n")
        raise typer.Exit(EXIT_ERROR) from None
    if interval_ms <= 0 or ttl_ms < 300:
        sys.stderr.write("error: --interval must be positive and --lease-ttl at least 300ms\n")
        raise typer.Exit(EXIT_ERROR)
    if (stuck_ms is not None and stuck_ms <= 0) or stop_ms <= 0:
        sys.stderr.write("error: --stuck-after and --stop-timeout must be positive\n")
        raise typer.Exit(EXIT_ERROR)
    options = ServeOptions(
        paths=tuple(paths or [Path("fleet.yaml")]),
        interval_s=interval_ms / 1000,
        http=address,
        stop_on_exit=stop_on_exit,
        database_url=database_url,
        lease_ttl_s=ttl_ms / 1000,
        access=agent_access(tls_cert, tls_key, tls_ca, insecure),
        nats_url=nats,
        nats_listen=bus_listen,
        liveness=liveness,
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
