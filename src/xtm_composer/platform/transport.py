"""The HTTP client used to reach a platform: timeouts, TLS and proxies."""

from __future__ import annotations

import httpx

from xtm_composer.settings import PlatformSettings


def build_client(
    settings: PlatformSettings, http_transport: httpx.AsyncBaseTransport | None = None
) -> httpx.AsyncClient:
    """Return a client with the platform's token, timeouts and TLS settings."""
    timeout = httpx.Timeout(settings.request_timeout, connect=settings.connect_timeout)
    headers = {"Authorization": f"Bearer {settings.token.get_secret_value()}"}
    return httpx.AsyncClient(
        timeout=timeout,
        headers=headers,
        verify=not settings.unsecured_certificate,
        # Without `with_proxy`, HTTP_PROXY and friends of the agent's own
        # environment must not apply: the operator said "no proxy".
        trust_env=settings.with_proxy,
        transport=http_transport,
    )
