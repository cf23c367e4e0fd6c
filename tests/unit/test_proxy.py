"""Proxy resolution, no_proxy matching and connector variables."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography import x509

from tests.support.certificates import certificate_pem
from xtm_composer import logs, proxy
from xtm_composer.settings import ConfigurationError, PlatformSettings


def platform(**values: object) -> PlatformSettings:
    return PlatformSettings.model_validate({"enable": True, **values})


def test_disabled_ignores_environment() -> None:
    """with_proxy false ignores proxy variables of the agent's environment."""
    environ = {
        "HTTP_PROXY": "http://127.0.0.1:3128",
        "HTTPS_PROXY": "http://127.0.0.1:3128",
    }

    config = proxy.resolve_proxy(platform(with_proxy=False), environ)

    assert config.enabled is False
    assert config.proxy_for("http://127.0.0.1:4000") is None


def test_explicit_settings_win_over_environment() -> None:
    """Explicit proxy settings are used instead of the environment."""
    environ = {"HTTP_PROXY": "http://127.0.0.1:9999"}
    settings = platform(with_proxy=True, http_proxy="http://127.0.0.1:3128")

    config = proxy.resolve_proxy(settings, environ)

    assert "http://127.0.0.1:3128" == config.proxy_for("http://opencti.internal:4000")


def test_environment_used_without_explicit_settings() -> None:
    """Without explicit proxies, the process environment applies, lower case too."""
    environ = {"https_proxy": "http://127.0.0.1:3129", "no_proxy": "localhost"}

    config = proxy.resolve_proxy(platform(with_proxy=True), environ)

    assert "http://127.0.0.1:3129" == config.proxy_for("https://opencti.internal")
    assert config.proxy_for("https://localhost") is None


@pytest.mark.parametrize(
    ("host", "bypass"),
    [
        ("localhost", True),
        ("opencti.internal.example.com", True),
        ("internal.example.com", True),
        ("api.opencti.io", True),
        ("opencti.io", True),
        ("evil-opencti.io", False),
        ("127.0.0.9", True),
        ("128.0.0.1", False),
        ("::1", True),
        ("example.com", False),
    ],
)
def test_no_proxy_matching(host: str, bypass: bool) -> None:
    """Hosts, leading-dot domains, ports, CIDRs and IPv6 entries match as documented."""
    entries = (
        "localhost",
        ".internal.example.com",
        "127.0.0.0/8",
        "opencti.io:8080",
        "[::1]",
    )

    assert bypass is proxy.bypasses_proxy(host, entries)


def test_wildcard_bypasses_everything() -> None:
    """`*` in no_proxy disables the proxy for every host."""
    assert proxy.bypasses_proxy("anything.example", ("*",))


def test_credentials_registered_as_secrets() -> None:
    """A proxy URL with credentials is masked in logs, and so is its password."""
    settings = platform(
        with_proxy=True, http_proxy="http://user:pa%40ss-word@127.0.0.1:3128"
    )

    proxy.resolve_proxy(settings, {})

    assert "pa%40ss-word" not in logs.mask_secrets("x pa%40ss-word y")
    assert "pa@ss-word" not in logs.mask_secrets("x pa@ss-word y")


def test_ca_entries_from_file_and_inline(tmp_path: Path) -> None:
    """CA entries may be file paths or inline PEM; the bundle contains both."""
    first, second = certificate_pem("first"), certificate_pem("second")
    path = tmp_path / "ca.pem"
    path.write_text(first)

    config = proxy.resolve_proxy(
        platform(with_proxy=True, https_proxy_ca=[str(path), second]), {}
    )

    assert 2 == len(x509.load_pem_x509_certificates(config.ca_bundle.encode()))


def test_unreadable_ca_is_start_error(tmp_path: Path) -> None:
    """A CA file that cannot be read stops the start with its index and path."""
    missing = tmp_path / "absent.pem"

    with pytest.raises(ConfigurationError, match=r"https_proxy_ca\[0\].*absent.pem"):
        proxy.resolve_proxy(
            platform(with_proxy=True, https_proxy_ca=[str(missing)]), {}
        )


def test_ca_without_certificate_rejected(tmp_path: Path) -> None:
    """A file with no PEM certificate is rejected, not silently skipped."""
    path = tmp_path / "empty.pem"
    path.write_text("nothing here\n")

    with pytest.raises(ConfigurationError, match="no PEM certificate"):
        proxy.resolve_proxy(platform(with_proxy=True, https_proxy_ca=[str(path)]), {})


def test_connector_environment() -> None:
    """Connectors get both cases of each variable and the CA variables."""
    config = proxy.ProxyConfig(
        http_proxy="http://127.0.0.1:3128",
        https_proxy="http://127.0.0.1:3128",
        no_proxy=("localhost", ".internal"),
        ca_bundle=certificate_pem(),
    )

    environment = proxy.connector_environment(config)

    assert "http://127.0.0.1:3128" == environment["HTTP_PROXY"]
    assert "http://127.0.0.1:3128" == environment["https_proxy"]
    assert "localhost,.internal" == environment["no_proxy"]
    assert proxy.CA_MOUNT_PATH == environment["REQUESTS_CA_BUNDLE"]
    assert proxy.CA_MOUNT_PATH == environment["NODE_EXTRA_CA_CERTS"]
    assert "NODE_TLS_REJECT_UNAUTHORIZED" not in environment


def test_reject_unauthorized_false_sets_node_variable() -> None:
    """NODE_TLS_REJECT_UNAUTHORIZED=0 appears only when asked."""
    config = proxy.ProxyConfig(
        http_proxy="http://127.0.0.1:3128", reject_unauthorized=False
    )

    assert "0" == proxy.connector_environment(config)["NODE_TLS_REJECT_UNAUTHORIZED"]


def test_fingerprint_changes_with_ca() -> None:
    """A change of CA content changes the fingerprint, so connectors redeploy."""
    base = proxy.ProxyConfig(
        http_proxy="http://127.0.0.1:3128", ca_bundle=certificate_pem()
    )
    other = proxy.ProxyConfig(
        http_proxy="http://127.0.0.1:3128", ca_bundle=certificate_pem()
    )

    assert proxy.fingerprint(base) != proxy.fingerprint(other)
    assert "" == proxy.fingerprint(proxy.ProxyConfig())


@pytest.mark.parametrize(
    "url",
    [
        "not a url",
        "http://user:pa55-word@127.0.0.1:notaport",
        "socks5://user:pa55-word@127.0.0.1:1080",
    ],
)
def test_unusable_proxy_url_rejected(url: str) -> None:
    """A proxy URL httpx cannot use stops the start, without showing the URL."""
    settings = platform(with_proxy=True, http_proxy=url)

    with pytest.raises(ConfigurationError, match=r"opencti\.http_proxy") as caught:
        proxy.resolve_proxy(settings, {})

    assert "pa55-word" not in str(caught.value)
