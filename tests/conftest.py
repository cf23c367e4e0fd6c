"""Shared fixtures: the testbed engines and the reference data.

Engine tests need the engines that `scripts/testbed/up.sh` starts. Without them a
developer's run skips those tests with the reason; a CI run (CI=true) fails them,
so a broken testbed can never pass for a green build.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from xtm_composer import logs

REPO_ROOT = Path(__file__).resolve().parent.parent
REFERENCE_DIR = Path(
    os.environ.get("XTM_REFERENCE_DIR", REPO_ROOT.parent / "shared" / "reference")
)
TESTBED_DIR = Path(os.environ.get("XTM_TESTBED_DIR", "/tmp/xtm-testbed"))


def missing_engine(reason: str) -> None:
    """Skip a test that needs an engine, or fail it in CI."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI must start it with scripts/testbed/up.sh)")
    pytest.skip(f"{reason}; start it with scripts/testbed/up.sh")


def read_env_file(path: Path) -> dict[str, str]:
    """Parse `export NAME=value` lines written by the testbed scripts."""
    values: dict[str, str] = {}
    if not path.is_file():
        return values
    for line in path.read_text().splitlines():
        line = line.strip()
        if line.startswith("export "):
            line = line[len("export ") :]
        name, sep, raw = line.partition("=")
        if sep and name and not name.startswith("#"):
            parts = shlex.split(raw)
            values[name] = parts[0] if parts else ""
    return values


@dataclass(frozen=True)
class Testbed:
    docker_host: str
    registry: str
    registry_username: str
    registry_password: str
    open_registry: str
    directory: Path


@pytest.fixture(scope="session")
def testbed() -> Testbed:
    """The testbed Docker Engine and registries."""
    values = read_env_file(TESTBED_DIR / "testbed.env")
    values.update({k: v for k, v in os.environ.items() if k.startswith("XTM_TEST_")})
    required = (
        "XTM_TEST_DOCKER_HOST",
        "XTM_TEST_REGISTRY",
        "XTM_TEST_REGISTRY_USERNAME",
        "XTM_TEST_REGISTRY_PASSWORD",
        "XTM_TEST_OPEN_REGISTRY",
    )
    absent = [name for name in required if not values.get(name)]
    if absent:
        missing_engine(f"the testbed Docker Engine is not set up ({', '.join(absent)})")
    return Testbed(
        docker_host=values["XTM_TEST_DOCKER_HOST"],
        registry=values["XTM_TEST_REGISTRY"],
        registry_username=values["XTM_TEST_REGISTRY_USERNAME"],
        registry_password=values["XTM_TEST_REGISTRY_PASSWORD"],
        open_registry=values["XTM_TEST_OPEN_REGISTRY"],
        directory=TESTBED_DIR,
    )


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    """The third-party reference data (schema, catalog, vectors), when present."""
    if not (REFERENCE_DIR / "opencti-schema.graphql").is_file():
        pytest.skip(
            f"reference data not found at {REFERENCE_DIR}; set XTM_REFERENCE_DIR "
            "to a folder with opencti-schema.graphql, catalog/ and vectors/"
        )
    return REFERENCE_DIR


@pytest.fixture(autouse=True)
def _reset_log_secrets() -> Iterator[None]:
    """Registered secrets are global: each test starts with none."""
    logs.forget_secrets()
    yield
    logs.forget_secrets()
