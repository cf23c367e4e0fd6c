"""The agent process: wire settings, platform client, orchestrator and loops."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from urllib.parse import unquote, urlsplit

from cryptography.hazmat.primitives.asymmetric import rsa

from xtm_composer import crypto, logs, proxy
from xtm_composer.alive import AliveLoop, wait_or_stop
from xtm_composer.backoff import Backoff
from xtm_composer.orchestrators.base import Orchestrator, OrchestratorError
from xtm_composer.orchestrators.factory import build_orchestrator
from xtm_composer.platform.opencti import OpenCTIClient
from xtm_composer.reconciler import Reconciler
from xtm_composer.settings import ConfigurationError, PlatformSettings, Settings
from xtm_composer.settings.loader import unknown_keys

log = logs.get_logger(__name__)


def register_settings_secrets(settings: Settings) -> None:
    """Make every secret of the configuration unloggable."""
    for platform in (settings.opencti, settings.openaev):
        logs.register_secret(platform.token.get_secret_value())
        # Basic-auth credentials in the URL would otherwise show in every
        # log line that names the platform.
        url_password = urlsplit(platform.url).password
        if url_password:
            logs.register_secret(url_password)
            logs.register_secret(unquote(url_password))
        for proxy_url in (platform.http_proxy, platform.https_proxy):
            if proxy_url is not None:
                logs.register_secret(proxy_url.get_secret_value())
        registry = platform.daemon.registry
        if registry is not None and registry.password is not None:
            logs.register_secret(registry.password.get_secret_value())


def load_key(settings: Settings) -> rsa.RSAPrivateKey:
    manager = settings.manager
    if manager.credentials_key_filepath is not None and manager.credentials_key:
        log.warning(
            "Both manager.credentials_key and manager.credentials_key_filepath are "
            "set; using the file",
            path=str(manager.credentials_key_filepath),
        )
    inline = (
        manager.credentials_key.get_secret_value() if manager.credentials_key else None
    )
    return crypto.load_manager_key(inline, manager.credentials_key_filepath)


def enabled_platform(settings: Settings) -> PlatformSettings:
    if settings.openaev.enable:
        raise ConfigurationError(
            "openaev.enable is true, but this version manages OpenCTI connectors "
            "only; set openaev.enable to false"
        )
    if not settings.opencti.enable:
        raise ConfigurationError(
            "opencti.enable is false, so there is nothing to manage; set "
            "opencti.enable to true (or OPENCTI__ENABLE=true)"
        )
    if not settings.opencti.token.get_secret_value():
        raise ConfigurationError(
            "opencti.token is empty; set it to the token of an OpenCTI user allowed "
            "to manage connectors (OPENCTI__TOKEN)"
        )
    return settings.opencti


async def prepare_orchestrator(
    orchestrator: Orchestrator, stopping: asyncio.Event
) -> bool:
    """Run the orchestrator's start-up work, retrying while the engine is down."""
    backoff = Backoff(initial_delay=1, max_delay=60)
    while not stopping.is_set():
        try:
            await asyncio.to_thread(orchestrator.prepare)
            return True
        except OrchestratorError as error:
            delay = backoff.next_delay()
            log.error(
                "Orchestrator not ready, will retry",
                orchestrator=orchestrator.name,
                error=str(error),
                attempt=backoff.attempt,
                retry_in_seconds=round(delay, 1),
            )
            await wait_or_stop(stopping, delay)
    return False


async def run_agent(settings: Settings, stopping: asyncio.Event | None = None) -> None:
    """Run until SIGTERM or SIGINT (or until `stopping` is set)."""
    platform_settings = enabled_platform(settings)
    register_settings_secrets(settings)
    manager_key = load_key(settings)
    stopping = stopping or asyncio.Event()
    install_signal_handlers(stopping)

    proxy_config = proxy.resolve_proxy(platform_settings)
    ignored = unknown_keys(settings)
    if ignored:
        log.warning("Ignoring unknown configuration keys", keys=sorted(ignored))
    orchestrator = build_orchestrator(settings.manager, platform_settings, "opencti")
    client = OpenCTIClient(platform_settings, settings.manager, proxy_config)
    log.info(
        "Agent starting",
        manager_id=settings.manager.id,
        platform="opencti",
        url=platform_settings.url,
        orchestrator=orchestrator.name,
    )
    try:
        if not await prepare_orchestrator(orchestrator, stopping):
            return
        alive = AliveLoop(
            client,
            crypto.public_key_pem(manager_key),
            settings.manager.ping_alive_schedule,
            "opencti",
        )
        alive_task = asyncio.create_task(alive.run(stopping), name="alive-opencti")
        await wait_first(alive.registered, stopping)
        if not stopping.is_set():
            reconciler = Reconciler(
                client,
                orchestrator,
                settings.manager,
                platform_settings,
                manager_key,
                proxy_config=proxy_config,
            )
            await reconciler.run(stopping)
        await alive_task
    finally:
        await client.aclose()
        orchestrator.close()
        log.info("Agent stopped", manager_id=settings.manager.id)


async def wait_first(*events: asyncio.Event) -> None:
    waiters = [asyncio.create_task(event.wait()) for event in events]
    try:
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()


def install_signal_handlers(stopping: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()

    def request_stop(signal_name: str) -> None:
        # The flag first: nothing, not even a failing log write, may keep the
        # agent from stopping.
        first = not stopping.is_set()
        stopping.set()
        if first:
            log.info(
                "Stop requested, finishing in-flight operations", signal=signal_name
            )

    for signum in (signal.SIGTERM, signal.SIGINT):
        # Outside the main thread signals cannot be handled: the caller then
        # stops the agent through `stopping` instead.
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signum, request_stop, signum.name)
