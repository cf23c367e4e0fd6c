"""A test image whose log has stderr lines in the middle of a long stdout line.

The engine stores a line longer than 16 KiB as several partial messages and
sends each as its own frame. The script writes a 70,000-byte stdout line in
four parts and one stderr line after each part, so stderr frames arrive between
the frames of the long line. A reader that joins the frames of both streams
puts the stderr text into the long line.
"""

from __future__ import annotations

import json

import docker

LONG_LINE_BYTES = 70_000
"""Longer than the 64 KiB buffers of HTTP clients and the engine's 16 KiB chunks."""

PART_BYTES = 17_500
"""Each part is over 16 KiB, so the engine emits a partial message for it."""

STDERR_LINES = [f"to stderr {number}" for number in range(1, 5)]
LAST_LINE = "to stdout"

LOG_SCRIPT = (
    f"for number in 1 2 3 4; do head -c {PART_BYTES} /dev/zero | tr '\\0' x; "
    "echo to stderr $number >&2; sleep 0.2; done; "
    f"echo; echo {LAST_LINE}; "
    "trap 'exit 0' TERM; while true; do sleep 1 & wait $!; done"
)

EXPECTED_SUMMARY = sorted([f"<{LONG_LINE_BYTES} characters>", *STDERR_LINES, LAST_LINE])
"""`summarize` of the whole log, sorted."""


def push_log_image(
    engine: docker.DockerClient, base_image: str, repository: str
) -> str:
    """Commit `base_image` running `LOG_SCRIPT`, push it and return its reference.

    `base_image` needs a shell with `head`, `tr` and `sleep` (busybox has them).
    """
    base = engine.containers.create(base_image, command=["true"])
    try:
        base.commit(
            repository=repository,
            tag="1",
            changes=[f"CMD {json.dumps(['/bin/sh', '-c', LOG_SCRIPT])}"],
        )
    finally:
        base.remove()
    engine.images.push(repository, tag="1")
    return f"{repository}:1"


def summarize(lines: list[str]) -> list[str]:
    """Replace long lines by their length, to keep failure messages readable."""
    return [line if len(line) <= 80 else f"<{len(line)} characters>" for line in lines]


def assert_lines_whole(lines: list[str]) -> None:
    """Check that `lines` is the whole log, each line whole and without header bytes.

    Pytest does not rewrite asserts outside test modules, so each one carries
    its own message.
    """
    summary = sorted(summarize(lines))
    assert EXPECTED_SUMMARY == summary, f"expected {EXPECTED_SUMMARY}, got {summary}"
    long_line = max(lines, key=len)
    assert {"x"} == set(long_line), f"long line contains {sorted(set(long_line))}"
    for line in lines:
        # A frame header starts with the stream byte 1 or 2 and three zeros.
        assert "\x00" not in line, f"NUL byte in {line[:80]!r}"
        assert not line.startswith(("\x01", "\x02")), f"header in {line[:80]!r}"
