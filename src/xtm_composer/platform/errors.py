"""Errors of the platform API, from the most to the least likely to heal alone."""

from __future__ import annotations

MAX_DETAIL_LENGTH = 300


class PlatformError(Exception):
    """A platform request failed."""


class PlatformUnavailableError(PlatformError):
    """The platform could not be reached, timed out or responded 5xx: retry later."""


class PlatformAuthError(PlatformError):
    """The platform rejected the token (HTTP 401 or 403)."""


class PlatformResponseError(PlatformError):
    """The platform responded with GraphQL errors or a body that is not GraphQL."""


def shorten(text: str) -> str:
    """Cut a remote message so that a huge error body cannot flood the logs."""
    text = " ".join(text.split())
    if len(text) <= MAX_DETAIL_LENGTH:
        return text
    return text[: MAX_DETAIL_LENGTH - 3] + "..."
