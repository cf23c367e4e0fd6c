"""Registry prefix resolution and the scoping of registry credentials.

An image reference whose first path component names a registry host is used as
it is. Following the Docker reference grammar, a component names a host when it
contains `.` or `:`, is `localhost`, or has an upper-case letter. Any other image
gets the configured server prepended. Credentials go to that server only.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from urllib.parse import urlsplit

from xtm_composer.settings import RegistrySettings

DOCKER_HUB = "docker.io"
DOCKER_HUB_ALIASES = frozenset({"docker.io", "index.docker.io", "registry-1.docker.io"})
DOCKER_HUB_AUTH_KEY = "https://index.docker.io/v1/"


class ImageReferenceError(ValueError):
    """An image reference that no registry would accept."""


@dataclass(frozen=True)
class ResolvedImage:
    """The image to pull and whether the configured credentials go with it."""

    reference: str
    registry_host: str
    send_credentials: bool


def normalize_server(server: str) -> str:
    """Turn `https://Registry.example.com/team/` into `registry.example.com/team`."""
    server = server.strip()
    if "://" in server:
        parts = urlsplit(server)
        server = parts.netloc + parts.path
    server = server.strip("/")
    if not server:
        raise ImageReferenceError("the registry server is empty")
    host, _, path = server.partition("/")
    host = host.lower()
    return f"{host}/{path}" if path else host


def server_host(server: str) -> str:
    """Return the host[:port] of a normalised server, with Docker Hub unified."""
    host = normalize_server(server).partition("/")[0]
    return DOCKER_HUB if host in DOCKER_HUB_ALIASES else host


def names_registry(component: str) -> bool:
    return (
        "." in component
        or ":" in component
        or component == "localhost"
        or component != component.lower()
    )


def image_host(image: str) -> str | None:
    """Return the registry host an image names, or None when it names none."""
    first, slash, _ = image.partition("/")
    if not slash or not names_registry(first):
        return None
    return DOCKER_HUB if first.lower() in DOCKER_HUB_ALIASES else first.lower()


def resolve_image(image: str, registry: RegistrySettings | None) -> ResolvedImage:
    """Return the image that will be pulled and whether credentials go with it."""
    image = image.strip()
    if not image or any(char.isspace() for char in image):
        raise ImageReferenceError(f"invalid image reference {image!r}")

    named_host = image_host(image)
    if registry is None:
        return ResolvedImage(image, named_host or DOCKER_HUB, send_credentials=False)

    configured = normalize_server(registry.server)
    configured_host = server_host(configured)
    if named_host is None:
        reference = f"{configured}/{image}"
        host = configured_host
    else:
        reference = image
        host = named_host
    send = registry.has_credentials and host == configured_host
    return ResolvedImage(reference, host, send_credentials=send)


def auth_config(registry: RegistrySettings) -> dict[str, str]:
    """Return the Docker Engine auth config for the configured registry."""
    if registry.password is None or not registry.username:
        raise ValueError("registry credentials are not configured")
    config = {
        "username": registry.username,
        "password": registry.password.get_secret_value(),
        "serveraddress": auth_key(registry.server),
    }
    if registry.email:
        config["email"] = registry.email
    return config


def auth_key(server: str) -> str:
    """Return the key under which Docker tools store credentials for `server`."""
    host = server_host(server)
    return DOCKER_HUB_AUTH_KEY if host == DOCKER_HUB else host


def docker_config_json(registry: RegistrySettings) -> str:
    """Return a `.dockerconfigjson` document with the configured credentials."""
    config = auth_config(registry)
    token = f"{config['username']}:{config['password']}".encode()
    entry = {key: value for key, value in config.items() if key != "serveraddress"}
    entry["auth"] = base64.b64encode(token).decode()
    return json.dumps({"auths": {config["serveraddress"]: entry}})


def registry_auth_header(registry: RegistrySettings) -> str:
    """Return the `X-Registry-Auth` header value of the Docker Engine API."""
    document = json.dumps(auth_config(registry)).encode()
    return base64.urlsafe_b64encode(document).decode()
