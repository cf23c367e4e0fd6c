"""Image pulls through the Docker Engine API, with credentials only where they belong.

The pull is sent as a plain `POST /images/create` on the docker SDK's HTTP
session. The SDK's own `pull` would, when given no credentials, look them up in
the user's `~/.docker/config.json` or a credential helper. The agent must send
the configured registry credentials to that registry only and nothing
otherwise, so the `X-Registry-Auth` header is set here or not at all.

Docker Engine 20.10 reports a failure found before the pull starts as an HTTP
error status (500 for denied credentials, 404 for a missing manifest), and a
later failure as an `error` line in the progress stream. Both are classified
with `pull_error`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

import docker
import docker.utils
import requests

from xtm_composer.orchestrators.base import (
    EngineUnavailableError,
    ImagePullError,
    OrchestratorError,
    RegistryAuthError,
)
from xtm_composer.registry import ResolvedImage, registry_auth_header
from xtm_composer.settings import RegistrySettings

PULL_READ_TIMEOUT = 300.0
"""Seconds the engine may stay silent during a pull, which sends progress often."""

MAX_DETAIL_LENGTH = 300
DEFAULT_TAG = "latest"

# Engine messages when the registry rejects the credentials or got none.
AUTH_MARKERS = (
    "no basic auth credentials",
    "unauthorized",
    "authentication required",
    "incorrect username or password",
)
NOT_FOUND_MARKERS = ("manifest unknown", "name unknown", "not found", "does not exist")
DENIED_MARKER = "denied"


def pull_image(
    api: docker.APIClient,
    image: ResolvedImage,
    registry: RegistrySettings | None,
) -> None:
    """Pull `image.reference`, with the registry credentials when the image allows."""
    repository, tag = docker.utils.parse_repository_tag(image.reference)
    headers = registry_auth_headers(image, registry)

    url = f"{api.base_url}/v{api.api_version}/images/create"
    # An empty tag would pull every tag of the repository.
    params = {"fromImage": repository, "tag": tag or DEFAULT_TAG}
    try:
        with api.post(
            url, params=params, headers=headers, stream=True, timeout=PULL_READ_TIMEOUT
        ) as response:
            if response.status_code != requests.codes.ok:
                raise pull_error(response_message(response), image, registry)
            for message in progress_messages(response.iter_lines()):
                if message.get("error"):
                    raise pull_error(str(message["error"]), image, registry)
    except requests.Timeout as error:
        raise ImagePullError(
            f"the pull of {image.reference} timed out: the Docker Engine sent "
            f"nothing for {PULL_READ_TIMEOUT:.0f} s"
        ) from error
    except requests.ConnectionError as error:
        raise EngineUnavailableError(
            f"the connection to the Docker Engine failed during the pull of "
            f"{image.reference}: {error}; check that dockerd is running"
        ) from error


def registry_auth_headers(
    image: ResolvedImage, registry: RegistrySettings | None
) -> dict[str, str]:
    """Return the `X-Registry-Auth` header when the image allows credentials."""
    if not image.send_credentials:
        return {}
    if registry is None or not registry.has_credentials:
        raise OrchestratorError(
            f"the image {image.reference} needs registry credentials, "
            "but none are configured"
        )
    return {"X-Registry-Auth": registry_auth_header(registry)}


def response_message(response: requests.Response) -> str:
    """Return the `message` of an engine error response, or its start."""
    try:
        body = response.json()
    except ValueError:
        return response.text[:MAX_DETAIL_LENGTH]
    if isinstance(body, dict) and "message" in body:
        return str(body["message"])
    return str(body)[:MAX_DETAIL_LENGTH]


def progress_messages(lines: Iterable[bytes]) -> Iterable[dict[str, Any]]:
    """Decode the JSON lines of a pull progress stream, skipping blank ones."""
    for line in lines:
        if not line.strip():
            continue
        try:
            message = json.loads(line)
        except ValueError:
            continue
        if isinstance(message, dict):
            yield message


def pull_error(
    detail: str, image: ResolvedImage, registry: RegistrySettings | None
) -> ImagePullError:
    """Classify an engine pull failure as denied credentials, missing image or other."""
    detail = sanitize_detail(detail, registry)
    lowered = detail.lower()
    if any(marker in lowered for marker in AUTH_MARKERS):
        return RegistryAuthError(denied_message(image, registry, detail))
    if any(marker in lowered for marker in NOT_FOUND_MARKERS):
        return ImagePullError(
            f"the image {image.reference} was not found on the registry "
            f"{image.registry_host}; check the image name and tag ({detail})"
        )
    if DENIED_MARKER in lowered:
        return RegistryAuthError(denied_message(image, registry, detail))
    return ImagePullError(f"failed to pull the image {image.reference}: {detail}")


def denied_message(
    image: ResolvedImage, registry: RegistrySettings | None, detail: str
) -> str:
    host = image.registry_host
    if image.send_credentials:
        return (
            f"the registry {host} denied the credentials for the image "
            f"{image.reference}: check the registry username and password ({detail})"
        )
    if registry is None or not registry.has_credentials:
        advice = "no registry credentials are configured"
    else:
        advice = (
            f"the configured credentials are for {registry.server}, "
            f"so they were not sent to {host}"
        )
    return (
        f"the registry {host} denied the pull of the image {image.reference} "
        f"without credentials ({advice}; {detail})"
    )


def sanitize_detail(detail: str, registry: RegistrySettings | None) -> str:
    """Cut an engine message short, without the registry password in it."""
    detail = " ".join(detail.split())
    if registry is not None and registry.password is not None:
        password = registry.password.get_secret_value()
        if password:
            detail = detail.replace(password, "***")
    return detail[:MAX_DETAIL_LENGTH]
