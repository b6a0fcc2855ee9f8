"""What every command shares: exit codes, one-line errors, the manifest loaded or its diagnostics printed, and
a database failure turned into one line that names the registry (architecture.md §5; never a traceback).

This module is the bottom of ``fleetd.cli``: the command modules import it, it imports none of them.
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn, TypeVar

import typer

if TYPE_CHECKING:
    from fleetd.controlling.opening import AgentAccess
    from fleetd.manifest.loading import LoadedManifest
    from fleetd.transport.security import TlsFiles

T = TypeVar("T")

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_CHANGES = 2
EXIT_DEGRADED = 3


def out(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


def error(message: str) -> int:
    """Print ``error: message`` on stderr; returns the error exit code."""
    sys.stderr.write(f"error: {message}\n")
    return EXIT_ERROR


def fail(message: str) -> NoReturn:
    """Print ``error: message`` and exit 1."""
    raise typer.Exit(error(message))


def parse_flag(flag: str, value: str, parse: Callable[[str], T]) -> T:
    """``parse(value)``; a ``ValueError`` (its message names the value) is ``error: FLAG: message``, exit 1."""
    try:
        return parse(value)
    except ValueError as exc:
        fail(f"{flag}: {exc}")


def duration_flag(flag: str, value: str, *, at_least_ms: int = 0) -> int:
    """A duration flag in milliseconds: ``error: FLAG: 'abc' is not a duration; use ...`` (exit 1) when it is
    not one, and a line naming the flag when it is shorter than ``at_least_ms``."""
    from fleetd.core.units import format_duration, parse_duration_ms

    milliseconds = parse_flag(flag, value, parse_duration_ms)
    if milliseconds < at_least_ms:
        fail(f"{flag}: {value!r} is too short; give at least {format_duration(at_least_ms)}")
    return milliseconds


def validity_summary(paths: Sequence[str], errors: int, warnings: int, valid: bool) -> str:
    where = ", ".join(paths) if paths else "manifest"
    counts = f"{errors} error{'s' if errors != 1 else ''}, {warnings} warning{'s' if warnings != 1 else ''}"
    return f"{where}: {'valid' if valid else 'invalid'} ({counts})"


def print_invalid(loaded: LoadedManifest, paths: Sequence[Path | str], *, stream: str = "stderr") -> None:
    """An invalid manifest's diagnostics with their source lines, and the summary line."""
    from fleetd.cli.diagnostics_output import render_text

    summary = validity_summary(
        loaded.paths or [str(p) for p in paths], len(loaded.errors), len(loaded.warnings), False
    )
    (sys.stderr if stream == "stderr" else sys.stdout).write(
        render_text(loaded.diagnostics, {f.name: f.text for f in loaded.files}, summary)
    )


def load_or_exit(paths: Sequence[Path | str]) -> LoadedManifest:
    """Load a manifest; when it is invalid, print its diagnostics on stderr and exit 1."""
    from fleetd.manifest.loading import load_manifest

    loaded = load_manifest(paths)
    if loaded.desired is None:
        print_invalid(loaded, paths)
        raise typer.Exit(EXIT_ERROR)
    return loaded


@contextmanager
def registry_errors(url: str | None) -> Iterator[None]:
    """Turn a database failure into one line that says where and what, and exit 1 (no traceback). A SQLite
    registry file that must not be used as it is (``RegistryFileError``) says so itself, naming the file."""
    from fleetd.registry.instance_lock import RegistryFileError

    try:
        yield
    except RegistryFileError as exc:
        sys.stderr.write(f"error: {exc}\n")
        raise typer.Exit(EXIT_ERROR) from None
    except _registry_errors() as exc:
        from fleetd.registry.engine import default_database_url

        where = redact_url(url or default_database_url())
        sys.stderr.write(f"error: registry at {where}: {_registry_reason(exc)}\n")
        raise typer.Exit(EXIT_ERROR) from None


def registry_failure(exc: BaseException) -> str | None:
    """One line for a database failure that no command caught (``main``'s last resort), else ``None``."""
    if not isinstance(exc, _registry_errors()):
        return None
    return f"the registry: {_registry_reason(exc)}"


def _registry_errors() -> tuple[type[Exception], ...]:
    """What a registry that cannot be used raises (imported when needed: sqlalchemy is slow to import)."""
    from sqlalchemy.exc import SQLAlchemyError

    from fleetd.registry.facade import RegistryNotWritable
    from fleetd.registry.migrating import SchemaNotCurrent

    return (SQLAlchemyError, SchemaNotCurrent, RegistryNotWritable)


def _registry_reason(exc: BaseException) -> str:
    reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
    return reason + next((hint for cause, hint in _REGISTRY_HINTS.items() if cause in reason), "")


_REGISTRY_HINTS = {
    "readonly database": (
        " (this user may not write it: run the command as the user the service runs as, e.g. sudo -u fleetd)"
    ),
    "disk I/O error": (
        " (were its -wal and -shm files left from a deleted database? with no fleetd using it, restore the "
        "database or move those two files away)"
    ),
    "unable to open database file": (
        " (check that its directory exists and this user may read and write it; the state directory is "
        "$FLEETD_STATE_DIR)"
    ),
}


def redact_url(url: str) -> str:
    """Hide a password in a database URL before printing it (a URL without one is printed as given)."""
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    return url if parsed.password is None else parsed.render_as_string(hide_password=True)


def write_atomically(path: Path, text: str) -> None:
    """Write to a temporary file beside ``path`` and rename it over: a reader never sees half a file."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        Path(tmp).replace(path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def tls_files(cert: Path | None, key: Path | None, ca: Path | None) -> TlsFiles | None:
    """The three TLS files, all or none (exit 1 naming what is missing)."""
    from fleetd.transport.security import TlsFiles

    given = {"--tls-cert": cert, "--tls-key": key, "--tls-ca": ca}
    if not any(given.values()):
        return None
    missing = [flag for flag, value in given.items() if value is None]
    if missing:
        fail(f"mutual TLS needs --tls-cert, --tls-key and --tls-ca together; missing {', '.join(missing)}")
    assert cert is not None and key is not None and ca is not None
    return TlsFiles(cert, key, ca)


def agent_access(cert: Path | None, key: Path | None, ca: Path | None, insecure: bool) -> AgentAccess:
    """How a controller command reaches the agents (read only when the manifest's nodes have addresses): the
    given files, ``--insecure``, or by default the fleet's CA in the state dir (``fleetd serve`` creates it)."""
    from fleetd.controlling.opening import AgentAccess
    from fleetd.registry.engine import default_state_dir
    from fleetd.transport.certificates import authority_dir

    files = tls_files(cert, key, ca)
    if files is not None and insecure:
        fail("give either --tls-cert/--tls-key/--tls-ca or --insecure, not both")
    fleet_ca = authority_dir(default_state_dir()) if files is None and not insecure else None
    return AgentAccess(files, insecure, fleet_ca)


def os_error_line(exc: OSError) -> str:
    """One line for an operating-system error no command caught: what failed, on which path, what to do."""
    what = exc.strerror or str(exc)
    if exc.filename is None:
        return what
    hint = "check that it exists, is a directory where one is expected, and is writable by this user"
    return f"{what}: {exc.filename} ({hint}; the state directory is $FLEETD_STATE_DIR, or the agent's --state-dir)"
