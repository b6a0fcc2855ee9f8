"""One health probe of one backend replica over HTTP: healthy, loading, busy or dead.

The supervisor decides restarts from these outcomes, so the distinction that matters is busy versus dead: a
single-threaded server deep in a long generation does not answer ``/health`` in time, yet its port still
accepts connections; restarting it would kill the very request it is serving. So a timeout is ``BUSY`` when a
plain TCP connect to the port succeeds, and only a refused or reset connection (or an error status other
than the 503 of a model still loading) is ``DEAD``. Which paths to ask and how to read the number of requests
in flight come from ``fleetd.runtimes`` (``ProbeSpec``, ``parse_in_flight``); nothing here branches on
backend type. ``probe`` never raises for network errors.

All probes share one HTTP client without keep-alive: every probe opens a fresh connection (a restarted backend
on a reused port never sees a stale one), but the client itself is built once. Building an httpx client
builds a TLS context and costs about 20 ms, which a probe at every 20 ms supervisor tick cannot afford.
"""

from __future__ import annotations

import enum
import functools
import socket
from dataclasses import dataclass

import httpx

from fleetd.core.desired import BackendType
from fleetd.runtimes.probes import ProbeSpec, parse_in_flight

LOADING_STATUS = 503
DETAIL_LIMIT = 200
"""Characters of a response body kept in ``ProbeResult.detail``."""


class ProbeOutcome(enum.StrEnum):
    HEALTHY = "healthy"
    """The health endpoint answered 200."""
    LOADING = "loading"
    """The backend answered 503: it is up and still loading its model."""
    BUSY = "busy"
    """The request timed out but the port accepts connections: working, not dead."""
    DEAD = "dead"
    """Connection refused or reset, or an error status other than loading."""


@dataclass(frozen=True, slots=True)
class ProbeResult:
    outcome: ProbeOutcome
    in_flight: int | None = None
    """Requests the backend is working on, when it says (and only for a healthy backend)."""
    detail: str = ""
    """For people: the status and body excerpt, or the network error."""


def probe(address: str, spec: ProbeSpec, backend_type: BackendType, *, timeout_s: float) -> ProbeResult:
    """Probe the backend listening at ``address`` (``host:port``) with requests of at most ``timeout_s``."""
    base = f"http://{address}"
    client = _client()
    try:
        response = client.get(base + spec.health_path, timeout=timeout_s)
    except httpx.TimeoutException as exc:
        if _accepts_connections(address, timeout_s):
            return ProbeResult(ProbeOutcome.BUSY, detail=f"no answer within {timeout_s:g} s ({_name(exc)})")
        return ProbeResult(ProbeOutcome.DEAD, detail=f"timed out and the port refuses connections ({_name(exc)})")
    except (httpx.HTTPError, OSError) as exc:
        return ProbeResult(ProbeOutcome.DEAD, detail=f"{_name(exc)}: {exc}")
    if response.status_code == LOADING_STATUS:
        return ProbeResult(ProbeOutcome.LOADING, detail=_describe(response))
    if response.status_code != httpx.codes.OK:
        return ProbeResult(ProbeOutcome.DEAD, detail=_describe(response))
    in_flight = _in_flight(client, base, spec, backend_type, timeout_s)
    return ProbeResult(ProbeOutcome.HEALTHY, in_flight=in_flight, detail=_describe(response))


def warm_up() -> None:
    """Build the probes' client now (tens of milliseconds: an SSL context), so that a fresh ``fleetd agent``'s
    first load does not pay it while the controller waits."""
    _client()


@functools.cache
def _client() -> httpx.Client:
    """The probes' client, built on first use (an httpx client is safe to share between threads; two threads
    racing on the first probe at worst build one client more, once)."""
    return httpx.Client(trust_env=False, limits=httpx.Limits(max_keepalive_connections=0), follow_redirects=False)


def _in_flight(
    client: httpx.Client, base: str, spec: ProbeSpec, backend_type: BackendType, timeout_s: float
) -> int | None:
    if spec.in_flight_path is None:
        return None
    try:
        response = client.get(base + spec.in_flight_path, timeout=timeout_s)
    except (httpx.HTTPError, OSError):
        return None
    if response.status_code != httpx.codes.OK:
        return None
    return parse_in_flight(backend_type, response.text)


def _accepts_connections(address: str, timeout_s: float) -> bool:
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s):
            return True
    except (OSError, ValueError):
        return False


def _describe(response: httpx.Response) -> str:
    body = " ".join(response.text.split())
    if len(body) > DETAIL_LIMIT:
        body = body[:DETAIL_LIMIT] + "…"
    return f"HTTP {response.status_code}" + (f": {body}" if body else "")


def _name(exc: BaseException) -> str:
    return type(exc).__name__
