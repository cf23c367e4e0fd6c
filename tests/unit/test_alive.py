"""The alive loop's register, ping and retry decisions."""

from __future__ import annotations

import asyncio
import io
import random

from xtm_composer import logs
from xtm_composer.alive import AliveLoop
from xtm_composer.backoff import Backoff
from xtm_composer.platform.errors import PlatformAuthError, PlatformUnavailableError


class ScriptedApi:
    """Returns platform versions from a script; None means unreachable."""

    def __init__(self, versions: list[str | None]) -> None:
        self.versions = versions
        self.calls: list[str] = []

    def _next(self, call: str) -> str:
        self.calls.append(call)
        version = self.versions.pop(0) if self.versions else "6.0.0"
        if version is None:
            raise PlatformUnavailableError("connection refused")
        return version

    async def version(self) -> str:
        return self._next("version")

    async def register(self, public_key_pem: str) -> str:
        self.calls.append("register")
        return "ignored"

    async def ping(self) -> str:
        return self._next("ping")


def run_until(loop: AliveLoop, api: ScriptedApi, calls: int) -> None:
    async def scenario() -> None:
        stopping = asyncio.Event()
        task = asyncio.create_task(loop.run(stopping))
        while len(api.calls) < calls:
            await asyncio.sleep(0.001)
        stopping.set()
        await task

    asyncio.run(scenario())


def fast_backoff() -> Backoff:
    return Backoff(initial_delay=0.002, max_delay=0.01, rng=random.Random(1))


def test_registers_then_pings() -> None:
    """The first beat registers, later beats ping."""
    api = ScriptedApi(["6.0.0", "6.0.0", "6.0.0"])
    loop = AliveLoop(api, "PEM", 0.001, "opencti", fast_backoff())

    run_until(loop, api, 4)

    assert ["version", "register", "ping", "ping"] == api.calls[:4]
    assert loop.registered.is_set()


def test_version_change_registers_again() -> None:
    """A new platform version after an upgrade triggers a new registration."""
    api = ScriptedApi(["6.0.0", "6.1.0", "6.1.0"])
    loop = AliveLoop(api, "PEM", 0.001, "opencti", fast_backoff())

    run_until(loop, api, 5)

    assert ["version", "register", "ping", "version", "register"] == api.calls[:5]
    assert "6.1.0" == loop.platform_version


def test_unreachable_platform_retried_with_backoff() -> None:
    """Failures are retried, with a growing attempt count, until registration works."""
    backoff = fast_backoff()
    api = ScriptedApi([None, None, None, "6.0.0"])
    loop = AliveLoop(api, "PEM", 0.001, "opencti", backoff)

    run_until(loop, api, 5)

    assert api.calls[:5] == ["version", "version", "version", "version", "register"]
    assert loop.registered.is_set()


class RejectingApi(ScriptedApi):
    async def version(self) -> str:
        self.calls.append("version")
        raise PlatformAuthError("http://127.0.0.1:4000/graphql rejected the token")


def test_rejected_token_reported_as_such() -> None:
    """A rejected token is logged as a rejected token, not as an outage."""
    stream = io.StringIO()
    logs.configure_logging("info", "pretty", stream)
    api = RejectingApi([])
    loop = AliveLoop(api, "PEM", 0.001, "opencti", fast_backoff())

    run_until(loop, api, 2)

    assert "Platform rejected the token, will retry" in stream.getvalue()
    assert "Platform unreachable" not in stream.getvalue()
