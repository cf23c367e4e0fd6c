"""The `xtm-composer sandbox` command: serve and the client commands."""

from __future__ import annotations

import argparse
import io
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog
from cryptography.hazmat.primitives.asymmetric import rsa

from xtm_composer import crypto, logs
from xtm_composer.sandbox.admin import SandboxAdmin
from xtm_composer.sandbox.cli import (
    add_sandbox_parser,
    parse_listen,
    run_sandbox_command,
)
from xtm_composer.sandbox.server import SandboxServer
from xtm_composer.sandbox.state import SandboxState

TOKEN = "cli-test-token"
API_KEY = "cli-secret-value"


def run(*arguments: str) -> int:
    """Parse `xtm-composer sandbox ARGUMENTS` as the main command will, and run it."""
    parser = argparse.ArgumentParser(prog="xtm-composer")
    add_sandbox_parser(parser.add_subparsers())
    return run_sandbox_command(parser.parse_args(["sandbox", *arguments]))


def only_error_line(stderr: str) -> str:
    """Check that stderr is one error line, no traceback, and return it."""
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("xtm-composer sandbox: error: ")
    return lines[0]


@pytest.fixture(autouse=True)
def _quiet_logging() -> Iterator[None]:
    """Keep the in-process sandbox's logs out of the command output under test.

    `serve` configures structlog for the whole process, so each test resets it.
    """
    logs.configure_logging("debug", "json", stream=io.StringIO())
    yield
    structlog.reset_defaults()


@pytest.fixture(scope="module")
def manager_key() -> rsa.RSAPrivateKey:
    """A 4096-bit key, generated once for the module (about a second)."""
    return rsa.generate_private_key(public_exponent=65537, key_size=4096)


@pytest.fixture
def server(
    manager_key: rsa.RSAPrivateKey, monkeypatch: pytest.MonkeyPatch
) -> Iterator[SandboxServer]:
    """A running sandbox with a registered manager; the client env points at it."""
    state = SandboxState()
    state.register_manager("manager-1", "composer", crypto.public_key_pem(manager_key))
    with SandboxServer(state, token=TOKEN) as running:
        monkeypatch.setenv("XTM_SANDBOX_TOKEN", TOKEN)
        monkeypatch.setenv("XTM_SANDBOX_URL", running.url)
        yield running


def output_json(capsys: pytest.CaptureFixture[str]) -> Any:
    return json.loads(capsys.readouterr().out)


# Parsing


def test_no_command_prints_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert run() == 2
    assert "serve" in capsys.readouterr().err


def test_connector_without_action_prints_help(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert run("connector") == 2
    assert "add" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("listen", "expected"),
    [
        ("127.0.0.1:4000", ("127.0.0.1", 4000)),
        ("localhost:0", ("127.0.0.1", 0)),
        ("[::1]:4001", ("::1", 4001)),
    ],
)
def test_listen_parsed(listen: str, expected: tuple[str, int]) -> None:
    assert expected == parse_listen(listen)


# serve: errors before listening


@pytest.mark.parametrize(
    ("listen", "message"),
    [
        ("0.0.0.0:4000", "0.0.0.0 is not a loopback address"),
        ("192.0.2.1:4000", "192.0.2.1 is not a loopback address"),
        ("4000", "must be HOST:PORT"),
        ("127.0.0.1:http", "the port must be a number from 0 to 65535"),
        ("127.0.0.1:70000", "the port must be a number from 0 to 65535"),
    ],
)
def test_serve_rejects_listen(
    listen: str,
    message: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Only a loopback HOST:PORT is accepted, with a one-line error otherwise."""
    monkeypatch.setenv("XTM_SANDBOX_TOKEN", TOKEN)

    assert run("serve", "--listen", listen) == 1
    assert message in only_error_line(capsys.readouterr().err)


def test_serve_needs_token(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("XTM_SANDBOX_TOKEN", raising=False)

    assert run("serve") == 1
    assert "set XTM_SANDBOX_TOKEN or pass --token-file" in only_error_line(
        capsys.readouterr().err
    )


@pytest.mark.parametrize(
    ("content", "message"), [(None, "cannot read --token-file"), ("\n", "is empty")]
)
def test_serve_token_file_checked(
    tmp_path: Path,
    content: str | None,
    message: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    token_file = tmp_path / "token"
    if content is not None:
        token_file.write_text(content)

    assert run("serve", "--token-file", str(token_file)) == 1
    assert message in only_error_line(capsys.readouterr().err)


def test_serve_rejects_bad_catalog(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("XTM_SANDBOX_TOKEN", TOKEN)

    assert run("serve", "--catalog", str(tmp_path / "absent")) == 1
    assert "does not exist" in only_error_line(capsys.readouterr().err)


def test_serve_rejects_state_file_directory(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("XTM_SANDBOX_TOKEN", TOKEN)
    state_file = tmp_path / "absent" / "state.json"

    assert run("serve", "--state-file", str(state_file)) == 1
    assert "does not exist" in only_error_line(capsys.readouterr().err)


# serve: a real process


def wait_for_url(process: subprocess.Popen[str], timeout_seconds: float) -> str:
    """Read the JSON log lines until the one that gives the listening URL."""
    assert process.stderr is not None
    deadline = time.monotonic() + timeout_seconds
    while time.monotonic() < deadline:
        line = process.stderr.readline()
        if not line:
            break
        event = json.loads(line)
        if event.get("message") == "sandbox listening":
            return str(event["url"])
    raise AssertionError("the sandbox did not log its URL")


def test_serve_process(tmp_path: Path, manager_key: rsa.RSAPrivateKey) -> None:
    """`serve` listens on loopback, serves clients and exits 0 on SIGTERM."""
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    state_file = tmp_path / "state.json"
    environment = {k: v for k, v in os.environ.items() if k != "XTM_SANDBOX_TOKEN"}
    command = [
        sys.executable,
        "-m",
        "xtm_composer.sandbox",
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--token-file",
        str(token_file),
        "--state-file",
        str(state_file),
        "--platform-version",
        "6.11.0",
    ]
    process = subprocess.Popen(
        command, stderr=subprocess.PIPE, text=True, env=environment
    )
    try:
        url = wait_for_url(process, timeout_seconds=30)
        with SandboxAdmin(url, TOKEN) as client:
            version = client.version()
    finally:
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=30)

    assert url.startswith("http://127.0.0.1:")
    assert version == "6.11.0"
    assert process.returncode == 0
    assert TOKEN not in stderr


# Client commands


def test_connector_lifecycle(
    server: SandboxServer,
    tmp_path: Path,
    manager_key: rsa.RSAPrivateKey,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """add, show, start, stop, edit, list and delete, as a user would."""
    secret_file = tmp_path / "api-key"
    secret_file.write_text(API_KEY + "\n")

    assert (
        run(
            "connector",
            "add",
            "--catalog-id",
            "connector-test",
            "--name",
            "Feed",
            "--set",
            "TEST_MAX_TLP=TLP:RED",
            "--set-file",
            f"TEST_API_KEY={secret_file}",
        )
        == 0
    )
    created = output_json(capsys)
    connector_id = created["id"]
    values = {item["key"]: item["value"] for item in created["configuration"]}
    assert values["TEST_MAX_TLP"] == "TLP:RED"
    assert crypto.decrypt_value(manager_key, values["TEST_API_KEY"]) == API_KEY

    assert run("connector", "start", connector_id) == 0
    assert f"connector {connector_id}: requested status starting\n" == (
        capsys.readouterr().out
    )
    assert run("connector", "show", connector_id) == 0
    assert output_json(capsys)["requested_status"] == "starting"
    assert run("connector", "stop", connector_id) == 0
    assert "requested status stopping" in capsys.readouterr().out

    # edit changes only the keys given: TEST_MAX_TLP and the secret stay.
    assert run("connector", "edit", connector_id, "--set", "TEST_BATCH_SIZE=5") == 0
    edited = output_json(capsys)
    edited_values = {item["key"]: item["value"] for item in edited["configuration"]}
    assert edited["name"] == "Feed"
    assert edited_values["TEST_BATCH_SIZE"] == "5"
    assert edited_values["TEST_MAX_TLP"] == "TLP:RED"
    assert values["TEST_API_KEY"] == edited_values["TEST_API_KEY"]

    assert run("connector", "edit", connector_id, "--name", "Renamed") == 0
    assert output_json(capsys)["name"] == "Renamed"
    assert run("connector", "list") == 0
    assert [connector_id] == [item["id"] for item in output_json(capsys)]
    assert run("connector", "delete", connector_id) == 0
    assert f"connector {connector_id}: deleted\n" == capsys.readouterr().out

    assert run("connector", "show", connector_id) == 1
    assert "not found" in only_error_line(capsys.readouterr().err)


def test_version_command(
    server: SandboxServer, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run("version") == 0
    assert capsys.readouterr().out == "6.9.0\n"
    assert run("version", "7.2.0") == 0
    assert capsys.readouterr().out == "7.2.0\n"
    assert server.state.platform_version == "7.2.0"


def test_url_option_wins(
    server: SandboxServer,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("XTM_SANDBOX_URL", "http://127.0.0.1:9")

    assert run("version", "--url", server.url) == 0
    assert capsys.readouterr().out == "6.9.0\n"


def test_client_needs_token(
    server: SandboxServer,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.delenv("XTM_SANDBOX_TOKEN")

    assert run("connector", "list") == 1
    assert "set XTM_SANDBOX_TOKEN" in only_error_line(capsys.readouterr().err)


def test_invalid_configuration_one_line(
    server: SandboxServer, capsys: pytest.CaptureFixture[str]
) -> None:
    arguments = ["connector", "add", "--catalog-id", "connector-test", "--name", "F"]

    assert run(*arguments, "--set", "TEST_BATCH_SIZE=0") == 1
    line = only_error_line(capsys.readouterr().err)
    assert "missing required key TEST_API_KEY" in line
    assert "TEST_BATCH_SIZE: 0 is less than the minimum of 1" in line


def test_set_without_key_not_echoed(
    server: SandboxServer, capsys: pytest.CaptureFixture[str]
) -> None:
    """A malformed --set may be a secret typed alone, so it is not printed."""
    arguments = ["connector", "add", "--catalog-id", "connector-test", "--name", "F"]

    assert run(*arguments, "--set", API_KEY) == 1
    line = only_error_line(capsys.readouterr().err)
    assert "expects KEY=VALUE" in line
    assert API_KEY not in line


def test_unreachable_sandbox_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("XTM_SANDBOX_TOKEN", TOKEN)

    assert run("connector", "list", "--url", "http://127.0.0.1:9") == 1
    assert "cannot reach the sandbox" in only_error_line(capsys.readouterr().err)


def test_non_loopback_url_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("XTM_SANDBOX_TOKEN", TOKEN)

    assert run("connector", "list", "--url", "http://192.0.2.1:4000") == 1
    assert "not a loopback address" in only_error_line(capsys.readouterr().err)
