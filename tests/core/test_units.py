"""Durations and sizes: parsing every accepted spelling to exact integers, rejecting the rest with a message
that says what is accepted, and formatting back to the shortest single-unit spelling."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fleetd.core.units import (
    DURATION_PATTERN,
    MAX_DURATION_MS,
    MAX_SIZE_BYTES,
    SIZE_PATTERN,
    UnitError,
    format_duration,
    format_size,
    parse_duration_ms,
    parse_size_bytes,
)

SECOND = 1000
MINUTE = 60 * SECOND
HOUR = 60 * MINUTE
DAY = 24 * HOUR
KIB, MIB, GIB, TIB = 1024, 1024**2, 1024**3, 1024**4


# --- durations ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "ms"),
    [
        ("500ms", 500),
        ("30s", 30 * SECOND),
        ("90s", 90 * SECOND),
        ("5m", 5 * MINUTE),
        ("1h", HOUR),
        ("2d", 2 * DAY),
        ("1m30s", 90 * SECOND),
        ("1h30m", 90 * MINUTE),
        ("1d2h3m4s5ms", DAY + 2 * HOUR + 3 * MINUTE + 4 * SECOND + 5),
        ("30m1h", 90 * MINUTE),  # order is not enforced
        ("5s5s", 10 * SECOND),  # nor uniqueness: parts add up
        ("0s", 0),
        ("0ms", 0),
        ("0", 0),
        (" 30s ", 30 * SECOND),
        ("007s", 7 * SECOND),
        ("366d", 366 * DAY),
    ],
)
def test_duration_spellings(text: str, ms: int) -> None:
    assert parse_duration_ms(text) == ms


@pytest.mark.parametrize(
    ("text", "ms"),
    [
        ("1.5s", 1500),
        ("0.5s", 500),
        ("0.001s", 1),
        ("1.25m", 75 * SECOND),
        ("1.5h", 90 * MINUTE),
        ("0.5d", 12 * HOUR),
        ("2.0ms", 2),
        ("1.5s500ms", 2 * SECOND),
    ],
)
def test_duration_fractions_that_are_whole_milliseconds(text: str, ms: int) -> None:
    assert parse_duration_ms(text) == ms


@pytest.mark.parametrize("text", ["1.5ms", "0.0001s", "0.1ms"])
def test_duration_fractions_of_a_millisecond_are_rejected(text: str) -> None:
    with pytest.raises(UnitError, match="is not a whole number of milliseconds"):
        parse_duration_ms(text)


def test_bare_integers_are_seconds_by_default() -> None:
    assert parse_duration_ms(90) == 90 * SECOND
    assert parse_duration_ms("90") == 90 * SECOND
    assert parse_duration_ms(0) == 0


def test_bare_integers_take_the_given_unit() -> None:
    # idle_timeout: a bare integer means minutes (llamactl compatible); spelled units are unaffected.
    assert parse_duration_ms(15, bare_unit_ms=MINUTE) == 15 * MINUTE
    assert parse_duration_ms("15", bare_unit_ms=MINUTE) == 15 * MINUTE
    assert parse_duration_ms("15s", bare_unit_ms=MINUTE) == 15 * SECOND
    assert parse_duration_ms(1500, bare_unit_ms=1) == 1500


@pytest.mark.parametrize(
    "text",
    [
        "",
        " ",
        "5 s",
        "5S",
        "5sec",
        "5 minutes",
        "s",
        "-1s",
        "+1s",
        "1e3s",
        ".5s",
        "5.s",
        "1,5s",
        "5s ago",
        "1h 30m",
        "ten seconds",
        "0x10s",
        "١٢s",  # Arabic-Indic digits: Python's \d matches them, the schema's does not
        "²",
        "１２s",  # fullwidth digits
    ],
)
def test_malformed_durations_are_rejected_with_the_accepted_forms(text: str) -> None:
    with pytest.raises(UnitError, match=r"is not a duration; use a number with a unit \(ms, s, m, h, d\)"):
        parse_duration_ms(text)


def test_negative_and_boolean_durations_are_rejected() -> None:
    with pytest.raises(UnitError, match="a duration cannot be negative, got -1"):
        parse_duration_ms(-1)
    with pytest.raises(UnitError, match="got a boolean"):
        parse_duration_ms(True)
    with pytest.raises(UnitError, match="got a boolean"):
        parse_duration_ms(False)


def test_duration_bounds() -> None:
    assert MAX_DURATION_MS == 366 * DAY
    assert parse_duration_ms(f"{MAX_DURATION_MS}ms") == MAX_DURATION_MS
    assert parse_duration_ms(MAX_DURATION_MS // SECOND) == MAX_DURATION_MS
    with pytest.raises(UnitError, match="a duration of 367d is longer than the limit of 366d"):
        parse_duration_ms("367d")
    with pytest.raises(UnitError, match=f"a duration of {MAX_DURATION_MS + 1}ms is longer than the limit"):
        parse_duration_ms(f"{MAX_DURATION_MS + 1}ms")
    with pytest.raises(UnitError, match="longer than the limit of 366d"):
        parse_duration_ms(MAX_DURATION_MS // SECOND + 1)
    with pytest.raises(UnitError, match="longer than the limit of 366d"):
        parse_duration_ms(10**30)
    with pytest.raises(UnitError, match="longer than the limit of 366d"):
        parse_duration_ms(367, bare_unit_ms=DAY)


@pytest.mark.parametrize(
    ("ms", "text"),
    [
        (0, "0s"),
        (1, "1ms"),
        (500, "500ms"),
        (1500, "1500ms"),
        (SECOND, "1s"),
        (90 * SECOND, "90s"),
        (5 * MINUTE, "5m"),
        (90 * MINUTE, "90m"),
        (HOUR, "1h"),
        (25 * HOUR, "25h"),
        (DAY, "1d"),
        (366 * DAY, "366d"),
        (DAY + SECOND, "86401s"),
    ],
)
def test_format_duration_uses_the_largest_exact_unit(ms: int, text: str) -> None:
    assert format_duration(ms) == text


# --- sizes -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("512MiB", 512 * MIB),
        ("6GiB", 6 * GIB),
        ("6GB", 6 * 10**9),
        ("1TiB", TIB),
        ("2TB", 2 * 10**12),
        ("1KiB", KIB),
        ("1KB", 1000),
        ("1kb", 1000),
        ("1kib", KIB),
        ("6gib", 6 * GIB),
        ("100B", 100),
        ("100b", 100),
        ("0B", 0),
        ("6 GiB", 6 * GIB),
        (" 6GiB ", 6 * GIB),
        ("1.5GiB", 3 * GIB // 2),
        ("0.5KiB", 512),
        ("1.5GB", 1_500_000_000),
        ("1024TiB", 1024 * TIB),
    ],
)
def test_size_spellings(text: str, size: int) -> None:
    assert parse_size_bytes(text) == size


def test_bare_integers_are_bytes() -> None:
    assert parse_size_bytes(6442450944) == 6 * GIB
    assert parse_size_bytes("6442450944") == 6 * GIB
    assert parse_size_bytes(0) == 0


def test_size_fractions_must_be_whole_bytes() -> None:
    with pytest.raises(UnitError, match="is not a whole number of bytes"):
        parse_size_bytes("0.1GiB")
    with pytest.raises(UnitError, match="is not a whole number of bytes"):
        parse_size_bytes("1.5B")


@pytest.mark.parametrize(
    "text",
    ["", "GiB", "6G", "6Gi", "6GIB", "6 gigs", "-1GiB", "6PiB", "6iB", "1e9B", ".5GiB", "6GiB6MiB", "٦GiB"],
)
def test_malformed_sizes_are_rejected_with_the_accepted_forms(text: str) -> None:
    with pytest.raises(UnitError, match=r"is not a size; use a number with a unit \(B, KiB, MiB, GiB, TiB"):
        parse_size_bytes(text)


def test_negative_and_boolean_sizes_are_rejected() -> None:
    with pytest.raises(UnitError, match="a size cannot be negative, got -5"):
        parse_size_bytes(-5)
    with pytest.raises(UnitError, match="got a boolean"):
        parse_size_bytes(True)


def test_size_bounds() -> None:
    assert MAX_SIZE_BYTES == 1024 * TIB
    assert parse_size_bytes(MAX_SIZE_BYTES) == MAX_SIZE_BYTES
    with pytest.raises(UnitError, match=r"a size of 1025TiB is larger than the limit of 1024TiB"):
        parse_size_bytes("1025TiB")
    with pytest.raises(UnitError, match=f"a size of {MAX_SIZE_BYTES + 1}B is larger than the limit"):
        parse_size_bytes(MAX_SIZE_BYTES + 1)
    with pytest.raises(UnitError, match="larger than the limit of 1024TiB"):
        parse_size_bytes("2000TB")


@pytest.mark.parametrize(
    ("size", "text"),
    [
        (0, "0B"),
        (1, "1B"),
        (1000, "1000B"),
        (KIB, "1KiB"),
        (1536, "1536B"),
        (3 * KIB, "3KiB"),
        (512 * MIB, "512MiB"),
        (6 * GIB, "6GiB"),
        (6 * 10**9, "5859375KiB"),
        (3 * GIB // 2, "1536MiB"),
        (TIB, "1TiB"),
        (1024 * TIB, "1024TiB"),
    ],
)
def test_format_size_uses_the_largest_exact_binary_unit(size: int, text: str) -> None:
    assert format_size(size) == text


# --- round trips -------------------------------------------------------------------------------------

durations = st.integers(0, MAX_DURATION_MS)
sizes = st.integers(0, MAX_SIZE_BYTES)


@settings(max_examples=300, deadline=None)
@given(durations)
def test_duration_format_parse_round_trip(ms: int) -> None:
    text = format_duration(ms)
    assert parse_duration_ms(text) == ms
    assert re.fullmatch(DURATION_PATTERN, text)


@settings(max_examples=300, deadline=None)
@given(sizes)
def test_size_format_parse_round_trip(size: int) -> None:
    text = format_size(size)
    assert parse_size_bytes(text) == size
    assert re.fullmatch(SIZE_PATTERN, text)


@settings(max_examples=200, deadline=None)
@given(durations)
def test_format_duration_is_the_shortest_single_unit_spelling(ms: int) -> None:
    text = format_duration(ms)
    factors = {"d": DAY, "h": HOUR, "m": MINUTE, "s": SECOND, "ms": 1}
    exact = [f"{ms // f}{unit}" for unit, f in factors.items() if ms % f == 0]
    assert len(text) == min(len(t) for t in exact)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 10_000), st.sampled_from(["ms", "s", "m", "h", "d"])), min_size=1))
def test_compound_durations_add_up(parts: list[tuple[int, str]]) -> None:
    factors = {"ms": 1, "s": SECOND, "m": MINUTE, "h": HOUR, "d": DAY}
    total = sum(n * factors[unit] for n, unit in parts)
    text = "".join(f"{n}{unit}" for n, unit in parts)
    if total > MAX_DURATION_MS:
        with pytest.raises(UnitError, match="longer than the limit"):
            parse_duration_ms(text)
    else:
        assert parse_duration_ms(text) == total


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 10**6), st.integers(0, 999), st.sampled_from(["s", "m", "h"]))
def test_decimal_fractions_of_larger_units_are_exact(whole: int, thousandths: int, unit: str) -> None:
    factor = {"s": SECOND, "m": MINUTE, "h": HOUR}[unit]
    expected = whole * factor + thousandths * factor // 1000
    text = f"{whole}.{thousandths:03d}{unit}"
    if expected > MAX_DURATION_MS:
        with pytest.raises(UnitError):
            parse_duration_ms(text)
    else:
        assert parse_duration_ms(text) == expected


@given(st.text(max_size=12))
def test_parsers_raise_only_unit_errors(text: str) -> None:
    """Any string is a value or a UnitError (with its explanation), never another exception."""
    for parse in (parse_duration_ms, parse_size_bytes):
        try:
            value = parse(text)
        except UnitError as exc:
            assert str(exc)
        else:
            assert isinstance(value, int)
            assert value >= 0
