"""Manifest paths -> file texts: directory expansion, the size cap, UTF-8 decoding.

A manifest is one file or a directory of ``*.yaml``/``*.yml`` files (not recursive, dotfiles skipped, read in
name order). Input is capped (5 MiB per manifest) so that a wrong path or a generated monster is refused
with a clear message instead of exhausting memory.

Reading never blocks for good (issue 15): only regular files are read (a FIFO, a socket or a device is an
error at its path, "PATH is not a regular file (a FIFO)": it is opened with ``O_NONBLOCK`` and checked with
``fstat`` before a byte is read, so a FIFO without a writer cannot hang ``validate`` or ``serve``), and the
whole read runs on a helper thread with a deadline (``READ_TIMEOUT_S``): a path on a hung network mount, whose
``stat`` or ``read`` never returns, becomes an error naming the path. That thread cannot be killed; while it
stays stuck, the next read of the same paths reports it at once instead of leaving another thread behind.
"""

from __future__ import annotations

import hashlib
import os
import stat
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from fleetd.core.diagnostics import Diagnostic, Severity, SourceLocation

MAX_MANIFEST_BYTES = 5 * 1024 * 1024
MANIFEST_SUFFIXES = (".yaml", ".yml")
READ_TIMEOUT_S = 10.0
"""How long reading a manifest's files may take before its path is reported as hung."""
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class ManifestFile:
    """One file's text, the name diagnostics use for it, and the digest of its bytes."""

    name: str
    text: str
    sha256: str


class _Stuck:
    """Reads that passed their deadline and have not returned, by the paths they read (one thread each)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._threads: dict[tuple[str, ...], tuple[threading.Thread, list[str]]] = {}

    def still(self, key: tuple[str, ...]) -> str | None:
        """The path an earlier read of ``key`` is stuck at, while it is."""
        with self._lock:
            found = self._threads.get(key)
            if found is not None and not found[0].is_alive():
                del self._threads[key]
                found = None
        return found[1][-1] if found is not None and found[1] else None

    def add(self, key: tuple[str, ...], thread: threading.Thread, at: list[str]) -> None:
        with self._lock:
            self._threads[key] = (thread, at)


_STUCK = _Stuck()


def read_manifest_files(
    paths: Sequence[str | Path], *, timeout_s: float = READ_TIMEOUT_S
) -> tuple[list[ManifestFile], list[Diagnostic]]:
    """Expand directories, enforce the size cap and decode. Unreadable inputs become diagnostics, and so does a
    read that did not finish within ``timeout_s`` (a hung mount), naming the path it was at."""
    key = tuple(str(p) for p in paths)
    at: list[str] = [key[0]] if key else []
    stuck = _STUCK.still(key)
    if stuck is not None:
        return [], [_error(stuck, _hung(stuck, timeout_s, again=True))]
    done, result = call_with_deadline(lambda: _read_all(paths, at), timeout_s, name="fleetd-manifest-read")
    if result is not None:
        return result
    _STUCK.add(key, done, at)
    where = at[-1] if at else ", ".join(key)
    return [], [_error(where, _hung(where, timeout_s, again=False))]


def call_with_deadline(
    function: Callable[[], T], timeout_s: float, *, name: str
) -> tuple[threading.Thread, T | None]:
    """Run ``function`` on a daemon thread and wait at most ``timeout_s``: (the thread, its result or ``None``
    when it has not returned). Its exception, if any, is raised here."""
    box: list[T] = []
    failed: list[BaseException] = []

    def run() -> None:
        try:
            box.append(function())
        except BaseException as exc:  # handed to the caller's thread
            failed.append(exc)

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    thread.join(timeout_s)
    if failed:
        raise failed[0]
    return thread, (box[0] if box else None)


def _hung(path: str, timeout_s: float, *, again: bool) -> str:
    since = "an earlier read has not returned" if again else f"reading did not finish within {timeout_s:g} s"
    return f"{path}: {since} (a hung network mount?); check the path, or copy the manifest to a local disk"


def _read_all(paths: Sequence[str | Path], at: list[str]) -> tuple[list[ManifestFile], list[Diagnostic]]:
    files: list[ManifestFile] = []
    diagnostics: list[Diagnostic] = []
    total = 0
    for candidate in _expand(paths, diagnostics, at):
        name = str(candidate)
        at.append(name)
        raw, problem = _read_one(candidate, name, MAX_MANIFEST_BYTES - total)
        if problem is None and raw is not None:
            total += len(raw)
            text, problem = _decode(raw, name)
            if problem is None:
                files.append(ManifestFile(name, text, "sha256:" + hashlib.sha256(raw).hexdigest()))
        if problem is not None:
            diagnostics.append(problem)
    return files, diagnostics


def _read_one(path: Path, name: str, room: int) -> tuple[bytes | None, Diagnostic | None]:
    """The file's bytes (at most ``room``), or why not: not a regular file, unreadable, or over the cap."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        kind = _not_regular(path)
        if kind is not None:  # a socket cannot even be opened
            return None, _error(name, f"{name} is not a regular file ({kind})")
        return None, _error(name, f"cannot read the file: {exc.strerror or exc}")
    with os.fdopen(fd, "rb") as handle:
        try:
            found = os.fstat(fd)
            if not stat.S_ISREG(found.st_mode):
                return None, _error(name, f"{name} is not a regular file ({_kind(found.st_mode)})")
            if found.st_size > room:
                return None, _too_large(name, MAX_MANIFEST_BYTES - room + found.st_size)
            raw = handle.read(room + 1)
        except OSError as exc:
            return None, _error(name, f"cannot read the file: {exc.strerror or exc}")
    if len(raw) > room:  # it grew while we looked
        return None, _too_large(name, None)
    return raw, None


def _too_large(name: str, size: int | None) -> Diagnostic:
    limit = f"the manifest is larger than the {MAX_MANIFEST_BYTES // (1024 * 1024)} MiB limit"
    return _error(
        name, f"{limit} ({size:,} bytes); is this the right file?" if size else f"{limit}; is this the right file?"
    )


def _not_regular(path: Path) -> str | None:
    try:
        mode = path.stat().st_mode
    except OSError:
        return None
    return None if stat.S_ISREG(mode) else _kind(mode)


def _kind(mode: int) -> str:
    kinds = (
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISDIR, "a directory"),
    )
    return next((words for test, words in kinds if test(mode)), "not a file")


def files_fingerprint(files: Sequence[ManifestFile], diagnostics: Sequence[Diagnostic]) -> str:
    """A digest of what reading found (each file's name and bytes, and each read error): equal fingerprints,
    equal manifests, so a daemon can skip parsing a manifest that did not change."""
    h = hashlib.sha256()
    for f in files:
        h.update(f"{f.name}\0{f.sha256}\0".encode())
    for d in diagnostics:
        h.update(f"{d.message}\0".encode())
    return h.hexdigest()


def _expand(paths: Sequence[str | Path], diagnostics: list[Diagnostic], at: list[str]) -> list[Path]:
    """The files to read: each path, or a directory's ``*.yaml``/``*.yml`` entries other than directories (a
    FIFO or socket among them is read, and reported as not a regular file, rather than skipped)."""
    found: list[Path] = []
    if not paths:
        diagnostics.append(Diagnostic(Severity.ERROR, "no manifest path given"))
    for raw in paths:
        path = Path(raw)
        at.append(str(path))
        if path.is_dir():
            members = sorted(
                p
                for p in path.iterdir()
                if p.suffix in MANIFEST_SUFFIXES and not p.name.startswith(".") and p.exists() and not p.is_dir()
            )
            if not members:
                diagnostics.append(_error(str(path), "the directory holds no *.yaml or *.yml file"))
            found.extend(members)
        elif path.exists():
            found.append(path)
        else:
            diagnostics.append(_error(str(path), "no such file or directory"))
    unique: dict[Path, Path] = {}
    for path in found:
        unique.setdefault(path.resolve(), path)
    return list(unique.values())


def _decode(raw: bytes, name: str) -> tuple[str, Diagnostic | None]:
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        column = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        return "", Diagnostic(
            Severity.ERROR,
            f"the file is not UTF-8 (byte 0x{raw[exc.start]:02x})",
            (),
            SourceLocation(name, line, column),
        )
    if "\x00" in text:
        return "", _error(name, "the file contains NUL bytes; is it a binary file?")
    return text, None


def _error(name: str, message: str) -> Diagnostic:
    return Diagnostic(Severity.ERROR, message, (), SourceLocation(name, 1, 1))
