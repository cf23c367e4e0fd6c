"""Image references and registry servers: parsing and validation.

The rules follow the Docker reference grammar (distribution's `reference`
package): a path of lower-case components separated by `/`, an optional tag of
at most 128 word characters, dots and dashes, and an optional digest. The first
component names a registry host when it contains `.` or `:`, is `localhost`, or
has an upper-case letter.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

DOCKER_HUB = "docker.io"
DOCKER_HUB_ALIASES = frozenset({"docker.io", "index.docker.io", "registry-1.docker.io"})
DOCKER_HUB_LEGACY_PATH = "v1"
"""`https://index.docker.io/v1/` is Docker Hub's key in Docker client configs."""

_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_PATH = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*")
_TAG = re.compile(r"[\w][\w.-]{0,127}")
_DIGEST = re.compile(
    r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}"
)
_HOST_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
_HOST = re.compile(rf"{_HOST_LABEL}(?:\.{_HOST_LABEL})*")
MAX_PORT = 65535


class ImageReferenceError(ValueError):
    """An image reference or registry server that no registry would accept."""


def names_registry(component: str) -> bool:
    return (
        "." in component
        or ":" in component
        or component == "localhost"
        or component != component.lower()
    )


def split_host(image: str) -> tuple[str | None, str]:
    """Split `image` into the registry host it names (or None) and the rest."""
    first, slash, rest = image.partition("/")
    if slash and names_registry(first):
        return first, rest
    return None, image


def image_host(image: str) -> str | None:
    """Return the registry host an image names, Docker Hub unified, or None."""
    host, _ = split_host(image)
    if host is None:
        return None
    return DOCKER_HUB if host.lower() in DOCKER_HUB_ALIASES else host.lower()


def check_image(image: str) -> None:
    """Raise `ImageReferenceError` unless `image` is a valid reference."""
    host, remainder = split_host(image)
    if host is not None:
        check_host_port(host, f"image {image!r}")
    name, at, digest = remainder.partition("@")
    path, colon, tag = name.partition(":")
    problems = []
    if not _PATH.fullmatch(path):
        problems.append(
            "the repository must be lower-case letters, digits and separators "
            "(. _ __ -) between '/'"
        )
    if colon and not _TAG.fullmatch(tag):
        problems.append("the tag must be 1 to 128 letters, digits, '_', '.' or '-'")
    if at and not _DIGEST.fullmatch(digest):
        problems.append("the digest must look like sha256:<64 hex digits>")
    if problems:
        raise ImageReferenceError(
            f"invalid image reference {image!r}: " + "; ".join(problems)
        )


def check_host_port(host: str, context: str) -> None:
    name, colon, port = host.partition(":")
    if not _HOST.fullmatch(name):
        raise ImageReferenceError(f"invalid registry host {host!r} in {context}")
    if colon and not (port.isdigit() and 0 < int(port) <= MAX_PORT):
        raise ImageReferenceError(
            f"invalid port {port!r} of registry host {host!r} in {context}: "
            f"use a number from 1 to {MAX_PORT}"
        )


def normalize_server(server: str) -> str:
    """Turn `https://Registry.example.com/team/` into `registry.example.com/team`."""
    text = server.strip()
    # Credentials first: every later message repeats the server as written.
    authority = text.split("://", 1)[-1].split("/", 1)[0]
    if "@" in authority:
        raise ImageReferenceError(
            "the registry server must not contain credentials; set "
            "daemon.registry.username and daemon.registry.password instead"
        )

    if "://" in text:
        parts = urlsplit(text)
        if parts.scheme not in ("http", "https"):
            raise ImageReferenceError(
                f"registry server {server!r} must be host[:port][/path], or a URL "
                "with http:// or https://"
            )
        if parts.query or parts.fragment:
            raise ImageReferenceError(
                f"registry server {server!r} must not have a query or fragment"
            )
        text = parts.netloc + parts.path

    text = text.strip("/")
    if not text:
        raise ImageReferenceError("the registry server is empty")
    host, _, path = text.partition("/")
    check_host_port(host, f"registry server {server!r}")

    host = host.lower()
    if host in DOCKER_HUB_ALIASES and path == DOCKER_HUB_LEGACY_PATH:
        path = ""
    if path and not _PATH.fullmatch(path):
        raise ImageReferenceError(
            f"invalid path {path!r} in registry server {server!r}: use lower-case "
            "letters, digits and separators between '/'"
        )
    return f"{host}/{path}" if path else host


def server_host(server: str) -> str:
    """Return the host[:port] of a server, with Docker Hub's names unified."""
    host = normalize_server(server).partition("/")[0]
    return DOCKER_HUB if host in DOCKER_HUB_ALIASES else host
