"""``fleetd replica restart INSTANCE[/N]``: restart replicas now, and give a failed one its restarts back
(LESSONS.md: llama-swap #92, a model stuck "failed" until the whole proxy restarted).

It records the request in the registry, where the planner sees it (a ``restart`` with reason ``requested``),
then runs one targeted cycle itself when no other controller leads; while a ``serve`` leads, that ``serve``
restarts the replica on its next cycle (one on this machine is woken at once). This module parses and prints;
``fleetd.controlling.replica_restart`` decides.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from fleetd.cli.common import EXIT_OK, agent_access, error, fail, load_or_exit, out, registry_errors
from fleetd.cli.help_format import FleetdTyper
from fleetd.cli.options import DatabaseUrl, Insecure, TlsCa, TlsCert, TlsKey

replica_app = FleetdTyper(help="Act on replicas directly.", no_args_is_help=True)


@replica_app.command("restart")
def restart_command(
    target: Annotated[
        str,
        typer.Argument(
            metavar="INSTANCE[/N]",
            help="INSTANCE (every replica of it) or INSTANCE/N (replica N).",
            show_default=False,
        ),
    ],
    paths: Annotated[
        list[Path] | None,
        typer.Option(
            "--manifest",
            "-m",
            metavar="PATH",
            help="The manifest (default: fleet.yaml).",
            show_default=False,
            readable=False,  # the manifest loader names an unreadable file
        ),
    ] = None,
    *,
    database_url: DatabaseUrl = None,
    tls_cert: TlsCert = None,
    tls_key: TlsKey = None,
    tls_ca: TlsCa = None,
    insecure: Insecure = False,
) -> None:
    """Restart replicas now (a failed one gets its restarts back). Exit 0 done or handed to the running serve,
    1 on error, 3 restarted but not healthy."""
    from fleetd.controlling.replica_restart import parse_target, restart_replicas

    try:
        instance, index = parse_target(target)
    except ValueError as exc:
        fail(str(exc))
    loaded = load_or_exit(paths or [Path("fleet.yaml")])
    assert loaded.desired is not None
    with registry_errors(database_url):
        result = restart_replicas(
            loaded.desired,
            instance,
            index,
            database_url=database_url,
            access=agent_access(tls_cert, tls_key, tls_ca, insecure),
        )
    if result.error is not None:
        raise typer.Exit(error(result.error))
    for line in result.lines:
        out(f"{line}\n")
    if result.handed_to is not None:
        sys.stderr.write(f"note: {result.handed_to} holds the controller lease; it restarts the replica\n")
    raise typer.Exit(EXIT_OK if result.exit_code is None else result.exit_code)
