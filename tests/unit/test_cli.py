"""The `xtm-composer` command as an operator runs it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa


def run(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    environment = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("MANAGER__", "OPENCTI__", "OPENAEV__", "COMPOSER_"))
    }
    environment.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "xtm_composer", *args],
        capture_output=True,
        text=True,
        env=environment,
        cwd=cwd,
        timeout=60,
    )


@pytest.fixture
def config_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "config"
    folder.mkdir()
    (folder / "default.yaml").write_text(
        "manager:\n  id: cli-test\n"
        "opencti:\n  daemon:\n    registry:\n"
        "      server: https://registry.example.com/\n"
        "      username: puller\n      password: cli-secret-pw\n"
    )
    return folder


def test_version_prints_version() -> None:
    """`version` prints the package version."""
    result = run("version")

    assert 0 == result.returncode
    assert result.stdout.startswith("xtm-composer ")


@pytest.mark.parametrize("command", [[], ["run"], ["resolve-image"], ["sandbox"]])
def test_help_for_each_command(command: list[str]) -> None:
    """Every command has a --help."""
    result = run(*command, "--help")

    assert 0 == result.returncode
    assert "usage:" in result.stdout


def test_resolve_image_prefixed_with_credentials(config_dir: Path) -> None:
    """An image naming no registry is prefixed and gets the credentials."""
    result = run("--config-dir", str(config_dir), "resolve-image", "opencti/c:1.0")

    assert 0 == result.returncode
    assert "image: registry.example.com/opencti/c:1.0" in result.stdout
    assert "credentials: sent" in result.stdout
    assert "cli-secret-pw" not in result.stdout + result.stderr


def test_resolve_image_other_registry(config_dir: Path) -> None:
    """An image on another registry is unchanged and gets no credentials."""
    result = run("--config-dir", str(config_dir), "resolve-image", "ghcr.io/acme/c:2")

    assert 0 == result.returncode
    assert "image: ghcr.io/acme/c:2" in result.stdout
    assert "credentials: not sent (the image is on ghcr.io" in result.stdout


def test_resolve_image_invalid_reference(config_dir: Path) -> None:
    """An invalid reference is one error line and exit code 2."""
    result = run("--config-dir", str(config_dir), "resolve-image", "bad image")

    assert 2 == result.returncode
    assert "invalid image reference" in result.stderr
    assert "Traceback" not in result.stderr


def test_invalid_configuration_exits_without_traceback(config_dir: Path) -> None:
    """A bad value stops the start with exit code 2 and a one-screen message."""
    result = run(
        "--config-dir",
        str(config_dir),
        "run",
        env={"OPENCTI__DAEMON__SELECTOR": "dockr"},
    )

    assert 2 == result.returncode
    assert "opencti.daemon.selector" in result.stderr
    assert "Traceback" not in result.stderr


def test_small_key_rejected_at_start(config_dir: Path, tmp_path: Path) -> None:
    """A 2048-bit manager key stops the start with the command to make a right one."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    key_path = tmp_path / "small.pem"
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    env = {
        "MANAGER__CREDENTIALS_KEY_FILEPATH": str(key_path),
        "OPENCTI__TOKEN": "cli-token-value",
        "OPENCTI__DAEMON__SELECTOR": "docker",
        "DOCKER_HOST": "unix:///nonexistent/docker.sock",
    }

    result = run("--config-dir", str(config_dir), "run", env=env)

    assert 2 == result.returncode
    assert "2048-bit" in result.stderr
    assert "rsa_keygen_bits:4096" in result.stderr
    assert "Traceback" not in result.stderr
    assert "cli-token-value" not in result.stderr


def test_openaev_enabled_is_rejected(config_dir: Path) -> None:
    """Enabling OpenAEV, which this version does not manage, is a clear error."""
    result = run(
        "--config-dir", str(config_dir), "run", env={"OPENAEV__ENABLE": "true"}
    )

    assert 2 == result.returncode
    assert "openaev.enable" in result.stderr


def test_sigterm_stops_agent_after_output_closed(
    config_dir: Path, tmp_path: Path
) -> None:
    """SIGTERM stops the agent with exit code 0 even when its output pipe closed."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=4096)
    key_path = tmp_path / "manager.pem"
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    environment = {
        key_name: value
        for key_name, value in os.environ.items()
        if not key_name.startswith(("MANAGER__", "OPENCTI__", "OPENAEV__", "COMPOSER_"))
    }
    environment.update(
        {
            "MANAGER__CREDENTIALS_KEY_FILEPATH": str(key_path),
            "OPENCTI__TOKEN": "cli-token-value",
            "OPENCTI__URL": "http://127.0.0.1:9",
            "OPENCTI__DAEMON__SELECTOR": "docker",
            "DOCKER_HOST": f"unix://{tmp_path}/absent.sock",
        }
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "xtm_composer", "--config-dir", str(config_dir), "run"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=environment,
    )
    assert process.stdout is not None
    process.stdout.readline()
    process.stdout.close()
    time.sleep(2)

    process.send_signal(signal.SIGTERM)

    try:
        assert 0 == process.wait(timeout=20)
    finally:
        if process.poll() is None:
            process.kill()
