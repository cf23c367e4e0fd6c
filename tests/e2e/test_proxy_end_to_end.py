"""The agent and its connectors behind a real proxy (tinyproxy on loopback)."""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.responses import JSONResponse

from tests.e2e.conftest import Deployment
from tests.support.agent import wait_for
from tests.support.certificates import certificate_pem
from tests.support.tinyproxy import Tinyproxy
from xtm_composer.sandbox.admin import SandboxAdmin

pytestmark = [pytest.mark.docker, pytest.mark.proxy]

CA_PATH = "/etc/ssl/certs/xtm-proxy-ca.crt"

Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


class ProxyOnly:
    """ASGI middleware that rejects requests which did not come through tinyproxy.

    tinyproxy adds `Via: 1.1 tinyproxy`; a direct request has no such header and
    gets HTTP 403, so the platform stand-in is only reachable through the proxy.
    """

    def __init__(self, app: Any) -> None:
        self.app = app
        self.direct_requests = 0

    async def __call__(
        self, scope: dict[str, Any], receive: Receive, send: Send
    ) -> None:
        if scope["type"] == "http":
            headers = dict(scope["headers"])
            if b"tinyproxy" not in headers.get(b"via", b""):
                self.direct_requests += 1
                response = JSONResponse({"errors": [{"message": "use the proxy"}]}, 403)
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


@pytest.fixture
def tinyproxy(tmp_path: Path, deployment: Deployment) -> Iterator[Tinyproxy]:
    proxy = Tinyproxy(tmp_path).start()
    deployment.secrets += [proxy.password, proxy.url]
    yield proxy
    proxy.stop()


def add_started_connector(deployment: Deployment) -> str:
    api_key = f"api-key-{secrets.token_hex(8)}"
    deployment.secrets.append(api_key)
    admin = deployment.platform.admin
    created = admin.add_connector(
        "connector-test", "Proxied connector", {"TEST_API_KEY": api_key}
    )
    admin.request_status(created["id"], "starting")
    return str(created["id"])


def restart_behind_proxy(deployment: Deployment, tinyproxy: Tinyproxy) -> ProxyOnly:
    """Serve the stand-in to proxied requests only, the test's own included."""
    server = deployment.platform.server
    server.stop()
    guard = ProxyOnly(server.app)
    server.app = guard
    server.start()
    deployment.platform.admin.close()
    deployment.platform.admin = SandboxAdmin(
        server.url,
        deployment.platform.token,
        transport=httpx.HTTPTransport(proxy=tinyproxy.url),
    )
    return guard


def container_env(container: Any) -> dict[str, str]:
    container.reload()
    return dict(item.split("=", 1) for item in container.attrs["Config"]["Env"])


def test_agent_and_connector_behind_proxy(
    deployment: Deployment, tinyproxy: Tinyproxy, tmp_path: Path
) -> None:
    """The agent reaches the platform through the proxy; connectors get its settings."""
    guard = restart_behind_proxy(deployment, tinyproxy)
    ca_file = tmp_path / "proxy-ca.pem"
    ca_pem = certificate_pem()
    ca_file.write_text(ca_pem)

    deployment.start_agent(
        OPENCTI__WITH_PROXY="true",
        OPENCTI__HTTP_PROXY=tinyproxy.url,
        OPENCTI__HTTPS_PROXY=tinyproxy.url,
        OPENCTI__NO_PROXY="localhost,.internal.example",
        OPENCTI__HTTPS_PROXY_CA=f'["{ca_file}"]',
    )
    connector_id = add_started_connector(deployment)
    wait_for(
        lambda: (
            deployment.platform.admin.connector(connector_id)["current_status"]
            == "started"
        ),
        60,
        what="the connector started through the proxy",
    )

    agent_requests = [line for line in tinyproxy.requests() if "/graphql" in line]
    assert len(agent_requests) > 5
    assert 0 == guard.direct_requests
    container = deployment.container_of(connector_id)
    environment = container_env(container)
    for name in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy"):
        assert tinyproxy.url == environment[name]
    assert "localhost,.internal.example" == environment["NO_PROXY"]
    for name in (
        "SSL_CERT_FILE",
        "REQUESTS_CA_BUNDLE",
        "NODE_EXTRA_CA_CERTS",
        "CURL_CA_BUNDLE",
    ):
        assert CA_PATH == environment[name]
    assert "NODE_TLS_REJECT_UNAUTHORIZED" not in environment
    bundle = container.exec_run(["cat", CA_PATH])
    assert 0 == bundle.exit_code
    assert ca_pem.strip() == bundle.output.decode().strip()


def test_reject_unauthorized_false_reaches_connector(
    deployment: Deployment, tinyproxy: Tinyproxy
) -> None:
    """NODE_TLS_REJECT_UNAUTHORIZED=0 is set when reject_unauthorized is false."""
    deployment.start_agent(
        OPENCTI__WITH_PROXY="true",
        OPENCTI__HTTP_PROXY=tinyproxy.url,
        OPENCTI__HTTPS_PROXY_REJECT_UNAUTHORIZED="false",
    )
    connector_id = add_started_connector(deployment)
    container = wait_for(
        lambda: deployment.container_of(connector_id),
        60,
        what="the connector's container",
    )

    assert "0" == container_env(container)["NODE_TLS_REJECT_UNAUTHORIZED"]


def test_no_proxy_host_reached_directly(
    deployment: Deployment, tinyproxy: Tinyproxy
) -> None:
    """A platform host listed in no_proxy is reached without the proxy."""
    deployment.start_agent(
        OPENCTI__WITH_PROXY="true",
        OPENCTI__HTTP_PROXY=tinyproxy.url,
        OPENCTI__NO_PROXY="127.0.0.0/8",
    )
    connector_id = add_started_connector(deployment)
    wait_for(
        lambda: (
            deployment.platform.admin.connector(connector_id)["current_status"]
            == "started"
        ),
        60,
        what="the connector started without the proxy",
    )

    assert [] == tinyproxy.requests()


def test_with_proxy_false_ignores_environment(
    deployment: Deployment, tinyproxy: Tinyproxy
) -> None:
    """with_proxy false ignores HTTP_PROXY and friends in the agent's environment."""
    deployment.start_agent(
        OPENCTI__WITH_PROXY="false",
        HTTP_PROXY=tinyproxy.url,
        HTTPS_PROXY=tinyproxy.url,
        http_proxy=tinyproxy.url,
        ALL_PROXY=tinyproxy.url,
    )
    connector_id = add_started_connector(deployment)
    container = wait_for(
        lambda: deployment.container_of(connector_id),
        60,
        what="the connector's container",
    )

    assert [] == tinyproxy.requests()
    assert "HTTP_PROXY" not in container_env(container)
