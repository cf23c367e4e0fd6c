"""The HTTP client used to reach a platform: timeouts, TLS and proxies."""

from __future__ import annotations

import ssl

import httpx

from xtm_composer.proxy import ProxyConfig
from xtm_composer.settings import PlatformSettings


def build_client(
    settings: PlatformSettings,
    proxy: ProxyConfig | None = None,
    http_transport: httpx.AsyncBaseTransport | None = None,
) -> httpx.AsyncClient:
    """Return a client with the platform's token, timeouts, TLS and proxy."""
    proxy = proxy or ProxyConfig()
    timeout = httpx.Timeout(settings.request_timeout, connect=settings.connect_timeout)
    headers = {"Authorization": f"Bearer {settings.token.get_secret_value()}"}
    proxy_url = proxy.proxy_for(settings.url)
    return httpx.AsyncClient(
        timeout=timeout,
        headers=headers,
        verify=tls_verification(settings, proxy, proxy_url is not None),
        proxy=proxy_url,
        # The proxy environment was already read, or must be ignored: either
        # way httpx must not read HTTP_PROXY and friends on its own.
        trust_env=False,
        transport=http_transport,
    )


def tls_verification(
    settings: PlatformSettings, proxy: ProxyConfig, through_proxy: bool
) -> ssl.SSLContext | bool:
    """Verify with the system roots plus the proxy CA bundle, unless disabled."""
    if settings.unsecured_certificate:
        return False
    if through_proxy and not proxy.reject_unauthorized:
        return False
    context = ssl.create_default_context()
    if proxy.ca_bundle:
        context.load_verify_locations(cadata=proxy.ca_bundle)
    return context
