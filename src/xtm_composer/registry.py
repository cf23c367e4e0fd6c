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

from xtm_composer.references import (
    DOCKER_HUB,
    ImageReferenceError,
    check_image,
    image_host,
    normalize_server,
    server_host,
)
from xtm_composer.settings import RegistrySettings

__all__ = [
    "DOCKER_HUB",
    "ImageReferenceError",
    "ResolvedImage",
    "auth_config",
    "docker_config_json",
    "image_host",
    "normalize_server",
    "registry_auth_header",
    "resolve_image",
    "server_host",
]

DOCKER_HUB_AUTH_KEY = "https://index.docker.io/v1/"


@dataclass(frozen=True)
class ResolvedImage:
    """The image to pull and whether the configured credentials go with it."""

    reference: str
    registry_host: str
    send_credentials: bool


def resolve_image(image: str, registry: RegistrySettings | None) -> ResolvedImage:
    """Return the image that will be pulled and whether credentials go with it."""
    image = image.strip()
    if not image or any(char.isspace() for char in image):
        raise ImageReferenceError(f"invalid image reference {image!r}")
    check_image(image)

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
