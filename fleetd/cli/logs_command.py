"""``fleetd logs INSTANCE[/N] [-f] [--tail N]``: print a replica's output, and with ``-f`` follow it.

``fleetd.controlling.replica_logs`` decides where the log is (the registry names the node; this machine's state
dir or the node's agent over gRPC) and opens it; this module parses the arguments and writes the bytes to
stdout as they come, unchanged. Ctrl-C ends a follow quietly (exit 0); every failure is one line on stderr,
exit 1.
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from fleetd.cli.common import EXIT_OK, agent_access, fail, registry_errors
from fleetd.cli.options import DatabaseUrl, Insecure, TlsCa, TlsCert, TlsKey


def logs_command(
    target: Annotated[
        str,
        typer.Argument(
            help="INSTANCE (its only replica) or INSTANCE/N (replica N).",
            metavar="INSTANCE[/N]",
            show_default=False,
        ),
    ],
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing what the replica writes, until Ctrl-C.")
    ] = False,
    tail: Annotated[
        int,
        typer.Option(
            "--tail", min=0, metavar="N", help="Print the last N lines first (0: none; with -f, only new output)."
        ),
    ] = 100,
    node: Annotated[
        str | None,
        typer.Option(
            "--node",
            metavar="NAME",
            help="The node of replica N, when two nodes list one (a replacement under way).",
        ),
    ] = None,
    *,
    database_url: DatabaseUrl = None,
    tls_cert: TlsCert = None,
    tls_key: TlsKey = None,
    tls_ca: TlsCa = None,
    insecure: Insecure = False,
) -> None:
    """Print a replica's output (its log on its node). Exit 0, or 1 on error."""
    from fleetd.controlling.replica_logs import LogsError, LogsRequest, open_replica_log
    from fleetd.controlling.replica_restart import parse_target

    try:
        instance, index = parse_target(target)
    except ValueError as exc:
        fail(str(exc))
    request = LogsRequest(instance, index, node, tail_lines=tail, follow=follow)
    access = agent_access(tls_cert, tls_key, tls_ca, insecure)
    with registry_errors(database_url):
        try:
            log = open_replica_log(request, database_url=database_url, access=access)
        except LogsError as exc:
            fail(str(exc))
    try:
        for data in log.chunks:
            if data:
                sys.stdout.buffer.write(data)
                sys.stdout.buffer.flush()
    except LogsError as exc:
        fail(str(exc))
    except KeyboardInterrupt:  # how a follow ends: not an error
        raise typer.Exit(EXIT_OK) from None
    finally:
        log.chunks.close()
    raise typer.Exit(EXIT_OK)
