"""The alive loop: register the manager, ping it, re-register after upgrades.

The loop never gives up: while the platform is unreachable it retries with capped
exponential backoff, and connectors already deployed keep running meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Protocol

from xtm_composer import logs
from xtm_composer.backoff import Backoff
from xtm_composer.platform.errors import PlatformAuthError, PlatformError

log = logs.get_logger(__name__)


class ManagerApi(Protocol):
    async def version(self) -> str: ...

    async def register(self, public_key_pem: str) -> str: ...

    async def ping(self) -> str: ...


class AliveLoop:
    """Keeps the manager registered; `registered` is set once it first is."""

    def __init__(
        self,
        api: ManagerApi,
        public_key_pem: str,
        ping_interval: float,
        platform: str,
        backoff: Backoff | None = None,
    ) -> None:
        self._api = api
        self._public_key_pem = public_key_pem
        self._ping_interval = ping_interval
        self._platform = platform
        self._backoff = backoff or Backoff(initial_delay=1, max_delay=60)
        self.registered = asyncio.Event()
        self.platform_version: str | None = None

    async def run(self, stopping: asyncio.Event) -> None:
        while not stopping.is_set():
            try:
                await self.beat()
            except PlatformAuthError as error:
                delay = self._backoff.next_delay()
                log.error(
                    "Platform rejected the token, will retry",
                    platform=self._platform,
                    error=str(error),
                    attempt=self._backoff.attempt,
                    retry_in_seconds=round(delay, 1),
                )
            except PlatformError as error:
                delay = self._backoff.next_delay()
                log.warning(
                    "Platform unreachable, will retry",
                    platform=self._platform,
                    error=str(error),
                    attempt=self._backoff.attempt,
                    retry_in_seconds=round(delay, 1),
                )
            else:
                self._backoff.reset()
                delay = self._ping_interval
            await wait_or_stop(stopping, delay)

    async def beat(self) -> None:
        """Register when not registered or after a platform upgrade; else ping."""
        if self.platform_version is None:
            await self.register()
            return
        version = await self._api.ping()
        if version and version != self.platform_version:
            log.info(
                "Platform version changed, registering again",
                platform=self._platform,
                previous_version=self.platform_version,
                version=version,
            )
            await self.register()
        else:
            log.debug("Manager ping sent", platform=self._platform)

    async def register(self) -> None:
        version = await self._api.version()
        await self._api.register(self._public_key_pem)
        self.platform_version = version
        self.registered.set()
        log.info("Manager registered", platform=self._platform, version=version)


async def wait_or_stop(stopping: asyncio.Event, seconds: float) -> None:
    """Sleep for `seconds`, or less when `stopping` is set meanwhile."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stopping.wait(), timeout=seconds)
