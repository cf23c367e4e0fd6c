"""Container log lines from Docker's multiplexed log stream.

For a container without a TTY, `GET /containers/{id}/logs` sends stdout and
stderr in frames: an 8-byte header (stream number, three zero bytes, payload
size as a big-endian 32-bit integer) and the payload. The engine cuts a line
longer than 16 KiB into several frames, and a frame of the other stream can
come between them. So frames are not simply joined: each stream's bytes are
collected apart, and a line is emitted when its newline arrives. No header
byte reaches the returned lines.
"""

from __future__ import annotations

import struct

import docker
import docker.errors
import requests

FRAME_HEADER = struct.Struct(">BxxxL")


def fetch_logs(
    api: docker.APIClient,
    container_id: str,
    max_lines: int,
    *,
    timestamps: bool,
    tty: bool,
) -> list[str]:
    """Return the last `max_lines` lines of a container's stdout and stderr.

    Raises `docker.errors.APIError` for an error response, as the SDK does.
    """
    response = api.get(
        f"{api.base_url}/v{api.api_version}/containers/{container_id}/logs",
        params={
            "stdout": 1,
            "stderr": 1,
            "tail": max_lines,
            "timestamps": int(timestamps),
        },
        timeout=api.timeout,
    )
    try:
        response.raise_for_status()
    except requests.HTTPError as error:
        docker.errors.create_api_error_from_http_exception(error)
    lines = (
        split_lines(response.content) if tty else demultiplex_lines(response.content)
    )
    return lines[-max_lines:]


def demultiplex_lines(raw: bytes) -> list[str]:
    """Return the lines of a multiplexed stream, in the order they were completed."""
    pending: dict[int, bytearray] = {}
    lines: list[str] = []
    offset = 0
    while offset + FRAME_HEADER.size <= len(raw):
        stream, size = FRAME_HEADER.unpack_from(raw, offset)
        start = offset + FRAME_HEADER.size
        offset = start + size
        buffer = pending.setdefault(stream, bytearray())
        buffer += raw[start:offset]
        while (newline := buffer.find(b"\n")) >= 0:
            lines.append(decode(bytes(buffer[:newline])))
            del buffer[: newline + 1]

    # A last line without a newline still counts.
    for stream in sorted(pending):
        if pending[stream]:
            lines.append(decode(bytes(pending[stream])))
    return lines


def split_lines(raw: bytes) -> list[str]:
    """Return the lines of a TTY container's log, which has no frames."""
    lines = [decode(line) for line in raw.split(b"\n")]
    if lines and not lines[-1]:
        lines.pop()
    return lines


def decode(line: bytes) -> str:
    return line.removesuffix(b"\r").decode("utf-8", errors="replace")
