"""Service log lines in time order, from the Engine API's service logs.

The service logs endpoint returns the logs of every task of the service, on
any node, but task after task in no fixed order, and `tail` counts lines per
task. So the lines are requested with timestamps, sorted by them, and cut to
the requested count.

Docker Engine (20.10, json-file and journald log drivers) splits an output line
longer than 16 KiB into 16 KiB chunks and writes the timestamp before each
chunk, with no newline between them. `join_partial_chunks` removes the
timestamps found exactly at those chunk boundaries, so a long line comes back
whole.
"""

from __future__ import annotations

import re

PARTIAL_CHUNK_BYTES = 16 * 1024
TIMESTAMP = re.compile(rb"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?(?:Z|[+-]\d\d:\d\d) ")


def sorted_log_lines(raw: bytes, max_lines: int, *, timestamps: bool) -> list[str]:
    """Return the last `max_lines` lines of timestamped service logs, oldest first.

    With `timestamps` false, the timestamp that the engine put before each
    line is removed.
    """
    entries = []
    for line in raw.split(b"\n"):
        line = line.removesuffix(b"\r")
        if not line:
            continue
        match = TIMESTAMP.match(line)
        stamp = match.group(0) if match else b""
        message = join_partial_chunks(line[len(stamp) :])
        entries.append((stamp, message))

    # A stable sort keeps the engine's order of lines with the same timestamp.
    entries.sort(key=lambda entry: entry[0])
    return [
        (stamp + message if timestamps else message).decode("utf-8", errors="replace")
        for stamp, message in entries[-max_lines:]
    ]


def join_partial_chunks(message: bytes) -> bytes:
    """Remove the timestamps that the engine wrote between chunks of a long line."""
    parts = []
    while len(message) > PARTIAL_CHUNK_BYTES:
        match = TIMESTAMP.match(message, PARTIAL_CHUNK_BYTES)
        if match is None:
            break
        parts.append(message[:PARTIAL_CHUNK_BYTES])
        message = message[match.end() :]
    parts.append(message)
    return b"".join(parts)
