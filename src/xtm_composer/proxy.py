"""Proxy settings for the agent's own requests and for the connectors it deploys.

With `with_proxy: false` no proxy applies at all, and HTTP_PROXY and friends in
the agent's own environment are ignored. With `with_proxy: true` the explicit
`http_proxy`, `https_proxy` and `no_proxy` settings apply; when neither proxy is
set, the process environment's variables are read instead.

`no_proxy` entries are host names (`opencti.internal`), domains with a leading
dot (`.example.com`); a name matches itself and its subdomains. IP addresses,
CIDR blocks (`127.0.0.0/8`) or `*` (everything). A port after a host is ignored.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlsplit

import httpx
from cryptography import x509

from xtm_composer import logs
from xtm_composer.orchestrators.base import CA_BUNDLE_PATH
from xtm_composer.settings import ConfigurationError, PlatformSettings

CA_MOUNT_PATH = CA_BUNDLE_PATH
CA_ENV_NAMES = (
    "SSL_CERT_FILE",
    "REQUESTS_CA_BUNDLE",
    "NODE_EXTRA_CA_CERTS",
    "CURL_CA_BUNDLE",
)


@dataclass(frozen=True)
class ProxyConfig:
    """Resolved proxy settings of one platform."""

    http_proxy: str | None = None
    https_proxy: str | None = None
    no_proxy: tuple[str, ...] = ()
    ca_bundle: str = field(default="", repr=False)
    reject_unauthorized: bool = True

    @property
    def enabled(self) -> bool:
        return bool(self.http_proxy or self.https_proxy)

    def proxy_for(self, url: str) -> str | None:
        """Return the proxy URL to reach `url`, or None to connect directly."""
        parts = urlsplit(url)
        if bypasses_proxy(parts.hostname or "", self.no_proxy):
            return None
        return self.https_proxy if parts.scheme == "https" else self.http_proxy


def resolve_proxy(
    settings: PlatformSettings,
    environ: Mapping[str, str] | None = None,
    name: str = "opencti",
) -> ProxyConfig:
    """Build the proxy configuration of a platform, reading CA files now."""
    if not settings.with_proxy:
        return ProxyConfig()
    environ = os.environ if environ is None else environ
    http_proxy = secret_text(settings.http_proxy)
    https_proxy = secret_text(settings.https_proxy)
    no_proxy = settings.no_proxy
    if not (http_proxy or https_proxy):
        http_proxy = env_value(environ, "HTTP_PROXY")
        https_proxy = env_value(environ, "HTTPS_PROXY")
        no_proxy = no_proxy or env_value(environ, "NO_PROXY")
    for proxy_url, key in ((http_proxy, "http_proxy"), (https_proxy, "https_proxy")):
        register_proxy_secrets(proxy_url)
        check_proxy_url(proxy_url, f"{name}.{key}")
    return ProxyConfig(
        http_proxy=http_proxy,
        https_proxy=https_proxy,
        no_proxy=split_no_proxy(no_proxy),
        ca_bundle=read_ca_bundle(settings.https_proxy_ca, name),
        reject_unauthorized=settings.https_proxy_reject_unauthorized,
    )


def check_proxy_url(proxy_url: str | None, label: str) -> None:
    """Reject a proxy URL httpx cannot use; the message never shows the URL."""
    if not proxy_url:
        return
    try:
        parsed = httpx.URL(proxy_url)
    except httpx.InvalidURL as error:
        raise ConfigurationError(
            f"{label} is not a valid URL ({error}); write it as "
            "http://[user:password@]host:port"
        ) from None
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise ConfigurationError(
            f"{label} must be an http:// or https:// URL with a host, such as "
            "http://proxy.example.com:3128 (SOCKS proxies are not supported)"
        )


def secret_text(value: object) -> str | None:
    getter = getattr(value, "get_secret_value", None)
    text = getter() if getter else None
    return text or None


def env_value(environ: Mapping[str, str], name: str) -> str | None:
    return environ.get(name) or environ.get(name.lower()) or None


def register_proxy_secrets(proxy_url: str | None) -> None:
    """Mask the whole proxy URL and its password wherever they would be logged."""
    if not proxy_url:
        return
    logs.register_secret(proxy_url)
    password = urlsplit(proxy_url).password
    if password:
        logs.register_secret(password)
        logs.register_secret(unquote(password))


def split_no_proxy(value: str | None) -> tuple[str, ...]:
    if not value:
        return ()
    return tuple(entry.strip().lower() for entry in value.split(",") if entry.strip())


def bypasses_proxy(host: str, no_proxy: tuple[str, ...]) -> bool:
    """Tell whether `host` matches an entry of `no_proxy`."""
    host = host.lower().strip("[]")
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        address = None
    for entry in no_proxy:
        if entry == "*":
            return True
        if "/" in entry and address is not None:
            try:
                if address in ipaddress.ip_network(entry, strict=False):
                    return True
            except ValueError:
                continue
            continue
        # Like curl and Python's requests: a name matches itself and its
        # subdomains, with or without a leading dot or "*.".
        name = strip_port(entry).lstrip("*").lstrip(".")
        if name and (host == name or host.endswith("." + name)):
            return True
    return False


def strip_port(entry: str) -> str:
    if entry.startswith("["):
        return entry[1:].split("]", 1)[0]
    if entry.count(":") == 1:
        return entry.split(":", 1)[0]
    return entry


def read_ca_bundle(entries: list[str], platform: str) -> str:
    """Concatenate the CA entries (file paths or inline PEM) into one PEM bundle."""
    blocks: list[str] = []
    for index, entry in enumerate(entries):
        label = f"{platform}.https_proxy_ca[{index}]"
        if entry.lstrip().startswith("-----BEGIN"):
            text = entry
        else:
            text = read_ca_file(Path(entry), label)
        check_certificates(text, label)
        blocks.append(text.strip() + "\n")
    return "".join(blocks)


def read_ca_file(path: Path, label: str) -> str:
    try:
        return path.read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as error:
        reason = getattr(error, "strerror", None) or "not a PEM text file"
        raise ConfigurationError(
            f"{label}: cannot read CA file {path} ({reason}); give a readable PEM "
            "file path or an inline PEM certificate"
        ) from None


def check_certificates(text: str, label: str) -> None:
    try:
        certificates = x509.load_pem_x509_certificates(text.encode())
    except ValueError:
        certificates = []
    if not certificates:
        raise ConfigurationError(
            f"{label}: no PEM certificate found; give a file path or an inline "
            "block starting with -----BEGIN CERTIFICATE-----"
        )


def connector_environment(config: ProxyConfig) -> dict[str, str]:
    """Return the proxy variables every deployed connector receives.

    Both upper and lower case are set because connector runtimes read either:
    Python's requests reads both, curl reads lower-case `http_proxy` only.
    """
    environment: dict[str, str] = {}
    for name, value in (
        ("HTTP_PROXY", config.http_proxy),
        ("HTTPS_PROXY", config.https_proxy),
        ("NO_PROXY", ",".join(config.no_proxy) or None),
    ):
        if value:
            environment[name] = value
            environment[name.lower()] = value
    if config.ca_bundle:
        environment.update(dict.fromkeys(CA_ENV_NAMES, CA_MOUNT_PATH))
    if config.enabled and not config.reject_unauthorized:
        environment["NODE_TLS_REJECT_UNAUTHORIZED"] = "0"
    return environment


def fingerprint(config: ProxyConfig) -> str:
    """Return a short hash of what the proxy settings change in a connector.

    It joins the contract hash in the deployment hash, so that a change of proxy
    settings or CA content redeploys the connectors.
    """
    if not config.enabled and not config.ca_bundle:
        return ""
    lines = [
        f"{key}={value}" for key, value in sorted(connector_environment(config).items())
    ]
    material = "\n".join([*lines, config.ca_bundle])
    return hashlib.sha256(material.encode()).hexdigest()[:8]
