"""The gRPC server of ``fleetd agent``: the ``AgentService`` on one listen address, mutual TLS or ``--insecure``.

With TLS the server demands a client certificate signed by its CA (``require_client_auth``): a caller without
one is refused during the handshake and reaches no handler. The keepalive settings accept the controller's
pings (every 10 s, also between calls), which is how a controller notices a node that stopped answering.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import grpc

from fleetd.agent.fencing import EpochGuard
from fleetd.agent.service import AgentService, ServedAgent
from fleetd.transport import agent_service_pb2_grpc as pb_grpc
from fleetd.transport.security import Security

SERVER_OPTIONS: list[tuple[str, int]] = [
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_recv_ping_interval_without_data_ms", 5_000),
    ("grpc.http2.max_ping_strikes", 0),
    ("grpc.max_receive_message_length", 16 * 1024 * 1024),
]


class ListenError(OSError):
    """The agent cannot listen on its address (in use, not this machine's); the message names it."""


@dataclass(frozen=True)
class RunningServer:
    server: grpc.Server
    port: int
    """The port bound (the one asked for, or the OS's choice for port 0)."""

    def stop(self, grace_s: float = 5.0) -> None:
        """Stop taking calls; calls in flight get ``grace_s`` to finish."""
        self.server.stop(grace_s).wait(grace_s + 1)


def start_server(
    agent: ServedAgent, guard: EpochGuard, listen: str, security: Security, *, max_workers: int = 16
) -> RunningServer:
    """Serve ``agent`` on ``listen`` (``HOST:PORT``; port 0 takes a free one). Raises ``ListenError``."""
    server = grpc.server(
        ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="fleetd-grpc"), options=SERVER_OPTIONS
    )
    pb_grpc.add_AgentServiceServicer_to_server(AgentService(agent, guard, mark=security.mark), server)
    try:
        if security.tls is None:
            port = server.add_insecure_port(listen)
        else:
            credentials = grpc.ssl_server_credentials(
                [(security.tls.key, security.tls.cert)],
                root_certificates=security.tls.ca,
                require_client_auth=True,
            )
            port = server.add_secure_port(listen, credentials)
    except RuntimeError as exc:
        raise ListenError(f"cannot listen on {listen}: {exc}") from exc
    if port == 0:
        raise ListenError(f"cannot listen on {listen}: the address is in use or not one of this machine's")
    server.start()
    return RunningServer(server, port)
