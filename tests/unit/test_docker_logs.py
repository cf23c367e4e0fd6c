"""Docker's multiplexed log stream turned into lines."""

from __future__ import annotations

import struct

from xtm_composer.orchestrators.docker_logs import demultiplex_lines, split_lines

STDOUT = 1
STDERR = 2


def frame(stream: int, payload: bytes) -> bytes:
    return struct.pack(">BxxxL", stream, len(payload)) + payload


def test_frames_become_lines() -> None:
    """Headers are removed and each stream's lines come back."""
    raw = frame(STDOUT, b"first\nsecond\n") + frame(STDERR, b"error\n")

    assert ["first", "second", "error"] == demultiplex_lines(raw)


def test_line_split_across_frames() -> None:
    """A line cut into several frames comes back whole."""
    raw = frame(STDOUT, b"x" * 16384) + frame(STDOUT, b"x" * 100 + b"\n")

    assert ["x" * 16484] == demultiplex_lines(raw)


def test_other_stream_inside_long_line() -> None:
    """A stderr line that arrives between chunks of a stdout line stays apart."""
    raw = (
        frame(STDOUT, b"a" * 16384)
        + frame(STDERR, b"to stderr\n")
        + frame(STDOUT, b"a" * 10 + b"\nto stdout\n")
    )

    assert ["to stderr", "a" * 16394, "to stdout"] == demultiplex_lines(raw)


def test_unterminated_last_line_kept() -> None:
    raw = frame(STDOUT, b"done\npartial") + frame(STDERR, b"half")

    assert ["done", "partial", "half"] == demultiplex_lines(raw)


def test_truncated_frame_ignored() -> None:
    """Bytes too short for a header are not mistaken for output."""
    raw = frame(STDOUT, b"line\n") + b"\x01\x00\x00"

    assert ["line"] == demultiplex_lines(raw)


def test_carriage_returns_and_bad_utf8() -> None:
    raw = frame(STDOUT, b"windows\r\nbad \xff byte\n")

    assert ["windows", "bad \ufffd byte"] == demultiplex_lines(raw)


def test_tty_output_split_at_newlines() -> None:
    assert ["one", "two"] == split_lines(b"one\r\ntwo\n")
