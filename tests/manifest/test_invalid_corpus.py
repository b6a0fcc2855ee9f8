"""The manifest corpus: every invalid case reports exactly the errors its header expects; valid cases load.

An invalid case is ``corpus/invalid/<name>.yaml`` whose leading comment lines say what the loader must report,
one line per diagnostic::

    # expect: LINE:COLUMN DOTTED_PATH | MESSAGE_SUBSTRING
    # expect-warning: LINE:COLUMN DOTTED_PATH | MESSAGE_SUBSTRING

(``-`` for an empty path), or a directory ``corpus/invalid/<name>/`` of manifest files with the same lines in
a file named ``EXPECT``, each position prefixed with the file it is in (``b.yaml:6:3``). Error diagnostics must
match the ``expect`` lines exactly: same count, file, line, column and path, and a message containing the
substring. Warnings are ignored unless the case has ``expect-warning`` lines; then they must match exactly too.

Inputs that cannot be committed as text (bytes that are not UTF-8, NUL bytes, more than the size cap) are
written by the tests below into a temporary directory and held to the same expectations.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tracemalloc
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from fleetd.core.diagnostics import Diagnostic, Severity
from fleetd.manifest.loading import LoadedManifest, load_manifest
from fleetd.manifest.reading import MAX_MANIFEST_BYTES

CORPUS = Path(__file__).parent / "corpus"
INVALID = CORPUS / "invalid"
VALID = CORPUS / "valid"
ROOT = Path(__file__).resolve().parents[2]

_EXPECT = re.compile(
    r"# (?P<kind>expect|expect-warning): (?:(?P<file>[^\s:]+\.ya?ml):)?(?P<line>\d+):(?P<column>\d+) "
    r"(?P<path>.+?) \| (?P<message>.+)"
)


@dataclass(frozen=True, slots=True)
class Expectation:
    """One diagnostic a case must produce; ``file`` is relative to a directory case, ``None`` for a file."""

    severity: Severity
    file: str | None
    line: int
    column: int
    path: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:" if self.file else ""
        return f"{self.severity.value} {where}{self.line}:{self.column} {self.path} | {self.message}"


def parse_expectations(lines: Sequence[str]) -> list[Expectation]:
    """The ``# expect`` lines of a header; a line that starts like one but does not parse is an error."""
    found: list[Expectation] = []
    for raw in lines:
        line = raw.rstrip("\n")
        if not line.startswith("# expect"):
            continue
        match = _EXPECT.fullmatch(line)
        if match is None:
            raise ValueError(f"malformed expectation line: {line!r}")
        found.append(
            Expectation(
                Severity.WARNING if match["kind"] == "expect-warning" else Severity.ERROR,
                match["file"],
                int(match["line"]),
                int(match["column"]),
                "" if match["path"] == "-" else match["path"],
                match["message"],
            )
        )
    return found


def header_lines(text: str) -> list[str]:
    """The leading comment block of a case file: expectations live there and nowhere else."""
    header: list[str] = []
    for line in text.splitlines():
        if not line.startswith("#"):
            break
        header.append(line)
    return header


def case_expectations(case: Path) -> list[Expectation]:
    if case.is_dir():
        return parse_expectations((case / "EXPECT").read_text(encoding="utf-8").splitlines())
    return parse_expectations(header_lines(case.read_text(encoding="utf-8")))


def _describe(d: Diagnostic, file: str | None) -> str:
    loc = d.location
    where = "" if loc is None else f"{file + ':' if file else ''}{loc.line}:{loc.column}"
    return f"{d.severity.value} {where} {d.dotted_path or '-'} | {d.message}"


def assert_matches(loaded: LoadedManifest, expected: list[Expectation], file_of: dict[str, str | None]) -> None:
    """Errors (and warnings, when any are expected) equal ``expected``; ``file_of`` maps location files."""
    severities = {Severity.ERROR} | {e.severity for e in expected}
    actual = [d for d in loaded.diagnostics if d.severity in severities]
    unmatched = list(actual)
    missing: list[Expectation] = []
    for exp in expected:
        for d in unmatched:
            loc = d.location
            if (
                loc is not None
                and d.severity is exp.severity
                and loc.file in file_of
                and file_of[loc.file] == exp.file
                and (loc.line, loc.column) == (exp.line, exp.column)
                and d.dotted_path == exp.path
                and exp.message in d.message
            ):
                unmatched.remove(d)
                break
        else:
            missing.append(exp)
    report = "\n".join(
        ["reported:", *(_describe(d, file_of.get(d.location.file) if d.location else None) for d in actual)]
    )
    assert not missing, "expected but not reported:\n" + "\n".join(map(str, missing)) + "\n" + report
    assert not unmatched, "reported but not expected:\n" + "\n".join(
        _describe(d, file_of.get(d.location.file) if d.location else None) for d in unmatched
    )
    assert len(actual) == len(expected)


def _invalid_cases() -> list[Path]:
    return sorted(p for p in INVALID.iterdir() if p.is_dir() or p.suffix == ".yaml")


INVALID_CASES = _invalid_cases()
VALID_CASES = sorted(VALID.glob("*.yaml"))


def _load_case(case: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[LoadedManifest, dict[str, str | None]]:
    """Load a case; a directory is loaded by its relative name so messages naming other files are stable."""
    if case.is_dir():
        monkeypatch.chdir(case.parent)
        loaded = load_manifest([case.name])
        return loaded, {str(Path(case.name) / f.name): f.name for f in case.iterdir()}
    return load_manifest([case]), {str(case): None}


def test_the_corpus_has_at_least_30_invalid_cases_of_each_kind() -> None:
    assert len(INVALID_CASES) >= 30
    assert sum(p.is_dir() for p in INVALID_CASES) >= 3  # several files: duplicates across files
    assert len(VALID_CASES) >= 5


def test_the_corpus_holds_no_stray_files() -> None:
    """A file the parametrization skips (wrong suffix) would silently be no test at all."""
    stray = [p.name for p in INVALID.iterdir() if not p.is_dir() and p.suffix != ".yaml"]
    assert stray == []
    for case in (p for p in INVALID_CASES if p.is_dir()):
        members = sorted(p.name for p in case.iterdir())
        assert "EXPECT" in members, case.name
        assert all(m == "EXPECT" or m.endswith((".yaml", ".yml")) for m in members), members


@pytest.mark.parametrize("case", INVALID_CASES, ids=lambda p: p.name.removesuffix(".yaml"))
def test_invalid_case_reports_exactly_the_expected_errors(case: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    expected = case_expectations(case)
    assert any(e.severity is Severity.ERROR for e in expected), "an invalid case expects at least one error"
    loaded, file_of = _load_case(case, monkeypatch)
    assert not loaded.valid
    assert loaded.desired is None and loaded.manifest is None
    assert_matches(loaded, expected, file_of)


@pytest.mark.parametrize("case", VALID_CASES, ids=lambda p: p.stem)
def test_valid_case_loads_without_errors(case: Path) -> None:
    expected = case_expectations(case)
    assert all(e.severity is Severity.WARNING for e in expected)
    loaded = load_manifest([case])
    assert loaded.errors == ()
    assert loaded.valid
    assert loaded.desired is not None
    assert_matches(loaded, expected, {str(case): None})
    if not expected:
        assert loaded.warnings == ()


def test_merge_keys_merge_and_explicit_keys_win() -> None:
    desired = load_manifest([VALID / "anchors-and-merge-keys.yaml"]).desired
    assert desired is not None
    base = desired.instance("qwen-7b")
    bigger = desired.instance("qwen-14b")
    coder = desired.instance("qwen-coder")
    assert base is not None and bigger is not None and coder is not None
    assert bigger.model == "/models/qwen2.5-14b-instruct-q4_k_m.gguf"
    assert bigger.options == base.options
    assert (bigger.scheduling.min_replicas, bigger.scheduling.max_replicas) == (2, 4)
    assert dict(coder.options) == {"ctx_size": 32768, "n_gpu_layers": 99, "flash_attn": True}
    assert coder.health.startup_timeout_ms == 20 * 60_000
    assert coder.health.interval_ms == 15_000


def test_quoting_keeps_yaml_strings_strings() -> None:
    desired = load_manifest([VALID / "comments-and-quoting.yaml"]).desired
    assert desired is not None
    node = desired.nodes[0]
    assert dict(node.labels) == {"on": "yes", "country": "no", "rack": "007"}
    qwen = desired.instance("qwen")
    assert qwen is not None
    assert qwen.command_override == ("/usr/local/bin/llama-server", "--alias", "qwen chat", "--threads", "8")
    assert {k: v.template for k, v in qwen.environment}["DEBUG"] == "true"


# Inputs written by the tests: name -> (files, expectation lines). A single file is named "fleet.yaml".
GENERATED: dict[str, tuple[dict[str, bytes], list[str]]] = {
    "zero-bytes": ({"fleet.yaml": b""}, ["# expect: 1:1 - | the file is empty"]),
    "whitespace-only": ({"fleet.yaml": b"\n   \n\n"}, ["# expect: 1:1 - | the file is empty"]),
    "not-utf8-latin1": (
        {"fleet.yaml": b"version: 1\nnodes:\n  caf\xe9: {}\n"},
        ["# expect: 3:6 - | the file is not UTF-8 (byte 0xe9)"],
    ),
    "not-utf8-utf16": (
        {"fleet.yaml": "version: 1\n".encode("utf-16")},
        ["# expect: 1:1 - | the file is not UTF-8 (byte 0xff)"],
    ),
    "nul-bytes": (
        {"fleet.yaml": b"version: 1\x00\n"},
        ["# expect: 1:1 - | the file contains NUL bytes; is it a binary file?"],
    ),
    "oversized": (
        {"fleet.yaml": b"version: 1\n" + b"# " + b"x" * MAX_MANIFEST_BYTES + b"\n"},
        ["# expect: 1:1 - | the manifest is larger than the 5 MiB limit"],
    ),
    "oversized-directory": (
        {
            "a.yaml": b"version: 1\n" + b"#" * (MAX_MANIFEST_BYTES // 2) + b"\n",
            "b.yaml": b"version: 1\n" + b"#" * (MAX_MANIFEST_BYTES // 2) + b"\n",
        },
        ["# expect: b.yaml:1:1 - | the manifest is larger than the 5 MiB limit"],
    ),
}


@pytest.mark.parametrize("name", sorted(GENERATED))
def test_generated_invalid_input(name: str, tmp_path: Path) -> None:
    files, lines = GENERATED[name]
    for file_name, content in files.items():
        (tmp_path / file_name).write_bytes(content)
    expected = parse_expectations(lines)
    target = tmp_path / "fleet.yaml" if list(files) == ["fleet.yaml"] else tmp_path
    loaded = load_manifest([target])
    assert not loaded.valid
    if target.is_dir():
        file_of: dict[str, str | None] = {str(tmp_path / f): f for f in files}
    else:
        file_of = {str(target): None}
    assert_matches(loaded, expected, file_of)


def test_oversized_file_is_refused_unread(tmp_path: Path) -> None:
    big = tmp_path / "fleet.yaml"
    big.write_bytes(b"version: 1\n" + b"#" * MAX_MANIFEST_BYTES)
    loaded = load_manifest([big])
    assert loaded.files == ()  # refused before its text was kept
    (error,) = loaded.errors
    assert "larger than the 5 MiB limit" in error.message
    assert f"{MAX_MANIFEST_BYTES + 11:,} bytes" in error.message


def test_a_file_just_under_the_cap_is_read(tmp_path: Path) -> None:
    """The cap refuses what is over it, not what is near it: the oversized cases fail for their size."""
    path = tmp_path / "fleet.yaml"
    path.write_bytes(b"version: 1\n#" + b"x" * (MAX_MANIFEST_BYTES - 13) + b"\n")
    assert path.stat().st_size == MAX_MANIFEST_BYTES
    loaded = load_manifest([path])
    assert loaded.diagnostics == ()
    assert loaded.valid


def test_alias_bomb_is_refused_without_expanding_it() -> None:
    """The bomb expands to 9**9 values; refusing it must not build them (that takes hundreds of MiB)."""
    tracemalloc.start()
    try:
        loaded = load_manifest([INVALID / "alias-bomb.yaml"])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert [d.dotted_path for d in loaded.errors] == ["x7"]
    assert peak < 16 * 1024 * 1024


def _validate(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fleetd", "validate", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
        timeout=120,
    )


@pytest.mark.parametrize(
    "case",
    ["syntax-unclosed-flow-mapping.yaml", "min-replicas-over-slots.yaml", "duplicate-instance-across-files"],
)
def test_cli_validate_fails_with_the_expected_diagnostics(case: str) -> None:
    path = INVALID / case
    expected = [e for e in case_expectations(path) if e.severity is Severity.ERROR]

    text = _validate(str(path))
    assert text.returncode == 1, text.stdout + text.stderr

    as_json = _validate("--format", "json", str(path))
    assert as_json.returncode == 1, as_json.stderr
    report = json.loads(as_json.stdout)
    assert report["valid"] is False
    assert report["error_count"] == len(expected)
    errors = [d for d in report["diagnostics"] if d["severity"] == "error"]
    assert sorted((d["line"], d["column"], d["path"] or "") for d in errors) == sorted(
        (e.line, e.column, e.path) for e in expected
    )


def test_cli_validate_accepts_a_valid_case() -> None:
    result = _validate("--format", "json", str(VALID / "anchors-and-merge-keys.yaml"))
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report["valid"] is True
    assert report["error_count"] == 0


def test_expectation_parser_reads_files_paths_and_rejects_typos() -> None:
    (plain, in_file, warning) = parse_expectations(
        [
            '# expect: 7:7 nodes.gpu-a.labels["rack row"] | label key',
            "# expect: b.yaml:6:3 instances.qwen | defined twice",
            "# expect-warning: 1:1 - | not used",
        ]
    )
    assert plain == Expectation(Severity.ERROR, None, 7, 7, 'nodes.gpu-a.labels["rack row"]', "label key")
    assert in_file == Expectation(Severity.ERROR, "b.yaml", 6, 3, "instances.qwen", "defined twice")
    assert warning == Expectation(Severity.WARNING, None, 1, 1, "", "not used")
    with pytest.raises(ValueError, match="malformed"):
        parse_expectations(["# expect: line 7 instances.qwen | oops"])
