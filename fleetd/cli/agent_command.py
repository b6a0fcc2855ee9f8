"""``fleetd agent``: the command line of the node agent (the daemon itself is ``fleetd.daemon.agent_daemon``).

It checks the options (a bad one is one line naming it, exit 1), reads the facts and certificate files, sets
up logging to stderr (journald adds the time) and runs the daemon until SIGTERM.
"""

from __future__ import annotations

import logging
import re
import sys
from pathlib import Path
from typing import Annotated

import typer

from fleetd.cli.common import EXIT_ERROR, fail, tls_files
from fleetd.cli.options import LogFormatOption, TlsCa, TlsCert, TlsKey
from fleetd.daemon.log_format import LogFormat, configure_logging


def agent_command(
    *,
    node: Annotated[
        str,
        typer.Option(
            "--node",
            metavar="NAME",
            envvar="FLEETD_NODE",
            help="This node's name, as the manifest's `nodes` declares it.",
        ),
    ],
    listen: Annotated[
        str,
        typer.Option(
            "--listen",
            metavar="HOST:PORT",
            envvar="FLEETD_AGENT_LISTEN",
            help="HOST:PORT of the gRPC server (the manifest's address for this node).",
        ),
    ] = "127.0.0.1:7443",
    advertise: Annotated[
        str | None,
        typer.Option(
            "--advertise",
            metavar="HOST:PORT",
            envvar="FLEETD_AGENT_ADVERTISE",
            help="HOST:PORT others reach this node at, when --listen binds 0.0.0.0 (replicas listen on its host).",
            show_default=False,
        ),
    ] = None,
    state_dir: Annotated[
        Path | None,
        typer.Option(
            "--state-dir",
            metavar="DIR",
            envvar="FLEETD_STATE_DIR",
            help="Where the agent keeps its state.",
            show_default=False,
        ),
    ] = None,
    facts: Annotated[
        Path | None,
        typer.Option(
            "--facts",
            metavar="FILE",
            envvar="FLEETD_AGENT_FACTS",
            help="JSON {gpu_vendor, total_vram, total_ram} replacing detected hardware (tests, GPUs NVML cannot read).",
            show_default=False,
        ),
    ] = None,
    ports: Annotated[
        str,
        typer.Option(
            "--ports",
            metavar="FIRST-LAST",
            envvar="FLEETD_AGENT_PORTS",
            help="FIRST-LAST: the ports replicas listen on.",
        ),
    ] = "18000-18999",
    nats: Annotated[
        str | None,
        typer.Option(
            "--nats",
            metavar="URL",
            envvar="FLEETD_NATS_URL",
            help="nats://HOST:PORT: join the fleet and heartbeat over NATS.",
            show_default=False,
        ),
    ] = None,
    join_token_file: Annotated[
        Path | None,
        typer.Option(
            "--join-token-file",
            metavar="FILE",
            envvar="FLEETD_JOIN_TOKEN_FILE",
            help="A file holding a token from `fleetd node token create` (needed only to join the first time).",
            show_default=False,
        ),
    ] = None,
    tls_cert: TlsCert = None,
    tls_key: TlsKey = None,
    tls_ca: TlsCa = None,
    insecure: Annotated[
        bool,
        typer.Option("--insecure", help="Serve without TLS (tests on one machine only; logged on every start)."),
    ] = False,
    log_format: LogFormatOption = LogFormat.LOGFMT,
) -> None:
    """Run this node's agent: supervise its replicas and take the controller's commands over gRPC.

    With --nats and no --tls-* or --insecure, the gRPC server uses the certificate the controller's CA issues
    when the node registers (kept in the state dir)."""
    from fleetd.agent.node_facts import FactsFileError, read_facts_file
    from fleetd.agent.server import ListenError
    from fleetd.core.names import NAME_PATTERN
    from fleetd.daemon.agent_bus import BusSettings
    from fleetd.daemon.agent_daemon import AgentConfig, AgentConfigError, AgentDaemon, parse_ports
    from fleetd.registry.engine import default_state_dir
    from fleetd.transport.security import SecurityError, load_security

    if not re.match(NAME_PATTERN, node):
        fail(f"--node {node!r}: a node name is lower-case letters, digits, '.', '_' and '-' (as in the manifest)")
    if join_token_file is not None and not nats:
        fail("--join-token-file needs --nats: the token is presented to the controller over NATS")
    configure_logging(sys.stderr, log_format)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per probe would drown what happened
    try:
        files = tls_files(tls_cert, tls_key, tls_ca)
        bootstrap = files is None and not insecure and nats is not None  # the fleet's CA signs our certificate
        security = None if bootstrap else load_security(files, insecure=insecure, who="fleetd agent")
        declared = read_facts_file(facts) if facts is not None else None
        config = AgentConfig(
            node,
            listen,
            state_dir or default_state_dir(),
            security,
            advertise=advertise,
            facts=declared,
            ports=parse_ports(ports),
            bus=BusSettings(nats, join_token_file) if nats else None,
        )
        daemon = AgentDaemon(config)
        code = daemon.run()
    except SecurityError as exc:
        hint = "" if insecure or tls_cert else "; or --nats URL (with --join-token-file) for one from the fleet"
        sys.stderr.write(f"error: {exc}{hint}\n")  # the message names `fleetd agent`
        raise typer.Exit(EXIT_ERROR) from None
    except (FactsFileError, AgentConfigError, ListenError) as exc:
        sys.stderr.write(f"error: fleetd agent: {exc}\n")
        raise typer.Exit(EXIT_ERROR) from None
    raise typer.Exit(code)
