"""The engine-free parts of the Docker adapter: host options, state, pull, logs."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import docker.types
import pytest
from pydantic import SecretStr

from xtm_composer.orchestrators import (
    docker_logs,
    docker_options,
    docker_pull,
    docker_state,
)
from xtm_composer.orchestrators.base import (
    CONNECTOR_ID_LABEL,
    CONTRACT_HASH_KEY,
    ImagePullError,
    RegistryAuthError,
    WorkloadStatus,
)
from xtm_composer.orchestrators.docker import DockerOrchestrator
from xtm_composer.orchestrators.docker_engine import mask_values
from xtm_composer.registry import ResolvedImage
from xtm_composer.settings import ConfigurationError, DockerSettings, RegistrySettings

API_VERSION = "1.41"
NOW = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
PASSWORD = "s3cret-registry-password"


def full_settings() -> DockerSettings:
    return DockerSettings(
        network_mode="host",
        extra_hosts=["registry.test:127.0.0.1"],
        dns=["127.0.0.53"],
        dns_search=["example.test"],
        privileged=False,
        cap_add=["NET_ADMIN"],
        cap_drop=["MKNOD"],
        security_opt=["no-new-privileges"],
        userns_mode="host",
        pid_mode="host",
        ipc_mode="private",
        uts_mode="host",
        runtime="runc",
        shm_size=67108864,
        sysctls={"kernel.msgmax": "65536"},
        ulimits=[{"name": "nofile", "soft": 1024, "hard": 2048}],
        restart_policy="always",
    )


def test_host_options_default_settings() -> None:
    """Default settings pass only the restart policy."""
    options = docker_options.host_config_options(DockerSettings())

    assert options == {"restart_policy": {"Name": "unless-stopped"}}


def test_host_options_every_setting() -> None:
    """Every setting maps to the SDK argument of the same name."""
    options = docker_options.host_config_options(full_settings())

    assert options["network_mode"] == "host"
    assert options["extra_hosts"] == ["registry.test:127.0.0.1"]
    assert options["dns"] == ["127.0.0.53"]
    assert options["dns_search"] == ["example.test"]
    assert options["privileged"] is False
    assert options["cap_add"] == ["NET_ADMIN"]
    assert options["cap_drop"] == ["MKNOD"]
    assert options["security_opt"] == ["no-new-privileges"]
    assert options["userns_mode"] == "host"
    assert options["pid_mode"] == "host"
    assert options["ipc_mode"] == "private"
    assert options["uts_mode"] == "host"
    assert options["runtime"] == "runc"
    assert options["shm_size"] == 67108864
    assert options["sysctls"] == {"kernel.msgmax": "65536"}
    assert options["restart_policy"] == {"Name": "always"}
    assert len(options["ulimits"]) == 1
    assert options["ulimits"][0] == {"Name": "nofile", "Soft": 1024, "Hard": 2048}


def test_host_options_accepted_by_sdk() -> None:
    """The docker SDK builds a HostConfig from the options with Engine API names."""
    options = docker_options.host_config_options(full_settings())

    host_config = docker.types.HostConfig(API_VERSION, **options)

    assert host_config["NetworkMode"] == "host"
    assert host_config["UTSMode"] == "host"
    assert host_config["ShmSize"] == 67108864
    assert host_config["RestartPolicy"] == {"Name": "always"}


def test_host_options_on_failure_has_no_retry_limit() -> None:
    """`on-failure` restarts without limit, so the engine keeps counting."""
    settings = DockerSettings(restart_policy="on-failure")

    options = docker_options.host_config_options(settings)

    assert options["restart_policy"] == {"Name": "on-failure", "MaximumRetryCount": 0}


def test_host_options_ulimit_hard_defaults_to_soft() -> None:
    settings = DockerSettings(ulimits=[{"name": "nproc", "soft": 512}])

    options = docker_options.host_config_options(settings)

    assert options["ulimits"][0] == {"Name": "nproc", "Soft": 512, "Hard": 512}


@pytest.mark.parametrize(
    ("ulimit", "expected"),
    [
        ({"soft": 1, "hard": 2}, "missing name"),
        ({"name": "nofile", "soft": "many"}, "ulimits[0].soft 'many'"),
        ({"name": "nofile", "soft": True}, "expected an integer"),
        ({"name": "nofile", "soft": 10, "hard": 5}, "soft limit 10 is above"),
        ({"name": "nofile", "soft": 1, "max": 2}, "unknown keys ['max']"),
    ],
)
def test_host_options_invalid_ulimit(ulimit: dict[str, Any], expected: str) -> None:
    """An invalid ulimit names the setting and the problem."""
    settings = DockerSettings(ulimits=[ulimit])

    with pytest.raises(docker_options.HostOptionError) as raised:
        docker_options.host_config_options(settings)

    assert expected in str(raised.value)
    assert "daemon.docker.ulimits[0]" in str(raised.value)


@pytest.mark.parametrize("name", ["userns_mode", "uts_mode"])
def test_host_options_host_only_modes(name: str) -> None:
    """The SDK accepts only `host` for the user and UTS namespace modes."""
    settings = DockerSettings(**{name: "private"})

    with pytest.raises(docker_options.HostOptionError) as raised:
        docker_options.host_config_options(settings)

    assert f"daemon.docker.{name} 'private'" in str(raised.value)


def inspect_data(
    status: str = "running",
    restart_count: int = 0,
    started_at: datetime | None = NOW - timedelta(minutes=10),
    labels: dict[str, str] | None = None,
    **state: Any,
) -> dict[str, Any]:
    """Return inspect data shaped as Docker Engine 20.10 returns it."""
    started = started_at.isoformat() if started_at else "0001-01-01T00:00:00Z"
    return {
        "Id": "0123456789ab",
        "Name": "/test-connector-0123456789",
        "RestartCount": restart_count,
        "Config": {
            "Labels": {CONNECTOR_ID_LABEL: "connector-1", CONTRACT_HASH_KEY: "hash"}
            if labels is None
            else labels
        },
        "State": {"Status": status, "ExitCode": 0, "StartedAt": started, **state},
    }


@pytest.mark.parametrize(
    ("engine_status", "expected"),
    [
        ("running", WorkloadStatus.STARTED),
        ("restarting", WorkloadStatus.STARTED),
        ("created", WorkloadStatus.STOPPED),
        ("exited", WorkloadStatus.STOPPED),
        ("dead", WorkloadStatus.STOPPED),
        ("paused", WorkloadStatus.STOPPED),
    ],
)
def test_workload_status(engine_status: str, expected: WorkloadStatus) -> None:
    workload = docker_state.workload_from_inspect(inspect_data(engine_status), NOW)

    assert workload is not None
    assert expected == workload.status


def test_workload_fields() -> None:
    """Name, connector id, contract hash and start time come from inspect data."""
    workload = docker_state.workload_from_inspect(inspect_data(), NOW)

    assert workload is not None
    assert workload.name == "test-connector-0123456789"
    assert workload.connector_id == "connector-1"
    assert workload.contract_hash == "hash"
    assert NOW - timedelta(minutes=10) == workload.started_at
    assert workload.in_reboot_loop is False
    assert workload.problem is None


def test_workload_without_connector_id() -> None:
    assert docker_state.workload_from_inspect(inspect_data(labels={}), NOW) is None


def test_workload_stopped_has_no_start_time() -> None:
    workload = docker_state.workload_from_inspect(inspect_data("exited"), NOW)

    assert workload is not None
    assert workload.started_at is None


def test_restarting_is_reboot_loop() -> None:
    """A restarting container is started, in a reboot loop, with its exit code."""
    data = inspect_data("restarting", restart_count=3, ExitCode=1)

    workload = docker_state.workload_from_inspect(data, NOW)

    assert workload is not None
    assert workload.status == WorkloadStatus.STARTED
    assert workload.in_reboot_loop is True
    assert workload.restart_count == 3
    assert "keeps exiting (3 restarts, last exit code 1)" in str(workload.problem)


def test_recent_restart_is_reboot_loop() -> None:
    """A run that began inside the window after an engine restart is in a loop."""
    started = NOW - docker_state.REBOOT_LOOP_WINDOW + timedelta(seconds=1)
    data = inspect_data(restart_count=1, started_at=started)

    workload = docker_state.workload_from_inspect(data, NOW)

    assert workload is not None
    assert workload.in_reboot_loop is True


def test_old_restart_is_not_reboot_loop() -> None:
    """A run that outlived the window after a restart is healthy again."""
    started = NOW - docker_state.REBOOT_LOOP_WINDOW - timedelta(seconds=1)
    data = inspect_data(restart_count=5, started_at=started)

    workload = docker_state.workload_from_inspect(data, NOW)

    assert workload is not None
    assert workload.in_reboot_loop is False
    assert workload.restart_count == 5


def test_recent_start_without_restart_is_not_loop() -> None:
    data = inspect_data(restart_count=0, started_at=NOW - timedelta(seconds=1))

    workload = docker_state.workload_from_inspect(data, NOW)

    assert workload is not None
    assert workload.in_reboot_loop is False


def test_workload_problem_from_engine_error() -> None:
    """A container that failed to start carries the engine's error."""
    data = inspect_data("created", Error="OCI runtime create failed")

    workload = docker_state.workload_from_inspect(data, NOW)

    assert workload is not None
    assert workload.problem == "OCI runtime create failed"


def test_workload_problem_out_of_memory() -> None:
    data = inspect_data("exited", OOMKilled=True)

    workload = docker_state.workload_from_inspect(data, NOW)

    assert workload is not None
    assert "ran out of memory" in str(workload.problem)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2026-01-01T12:00:00.123456789Z", datetime(2026, 1, 1, 12, 0, 0, 123456, UTC)),
        ("0001-01-01T00:00:00Z", None),
        ("", None),
        (None, None),
        ("yesterday", None),
    ],
)
def test_parse_engine_time(value: str | None, expected: datetime | None) -> None:
    assert expected == docker_state.parse_engine_time(value)


def authenticated_image() -> ResolvedImage:
    return ResolvedImage(
        "127.0.0.1:5000/opencti/connector-test:1.0.0",
        "127.0.0.1:5000",
        send_credentials=True,
    )


def registry_settings() -> RegistrySettings:
    return RegistrySettings(
        server="127.0.0.1:5000", username="user", password=SecretStr(PASSWORD)
    )


@pytest.mark.parametrize(
    "detail",
    [
        'Head "http://127.0.0.1:5000/v2/x/manifests/1": no basic auth credentials',
        "unauthorized: authentication required",
        "denied: requested access to the resource is denied",
        "Get https://registry/v2/: unauthorized: incorrect username or password",
    ],
)
def test_pull_error_denied(detail: str) -> None:
    """Engine messages about credentials become RegistryAuthError."""
    error = docker_pull.pull_error(detail, authenticated_image(), registry_settings())

    assert isinstance(error, RegistryAuthError)
    assert "the registry 127.0.0.1:5000 denied the credentials" in str(error)
    assert "127.0.0.1:5000/opencti/connector-test:1.0.0" in str(error)


@pytest.mark.parametrize(
    "detail",
    [
        "manifest for 127.0.0.1:5000/x:1 not found: manifest unknown: manifest unknown",
        "repository name not known to registry: name unknown",
        "pull access denied for x, repository does not exist or may require "
        "'docker login': denied: requested access to the resource is denied",
    ],
)
def test_pull_error_not_found(detail: str) -> None:
    """Engine messages about a missing image become a plain ImagePullError."""
    error = docker_pull.pull_error(detail, authenticated_image(), registry_settings())

    assert not isinstance(error, RegistryAuthError)
    assert "was not found on the registry 127.0.0.1:5000" in str(error)


def test_pull_error_other() -> None:
    error = docker_pull.pull_error(
        "connection refused", authenticated_image(), registry_settings()
    )

    assert type(error) is ImagePullError
    assert "failed to pull the image" in str(error)


def test_pull_error_hides_password() -> None:
    """A password echoed by the engine is masked in the error message."""
    detail = f"unauthorized: user:{PASSWORD} rejected"

    error = docker_pull.pull_error(detail, authenticated_image(), registry_settings())

    assert PASSWORD not in str(error)
    assert "user:*** rejected" in str(error)


def test_pull_error_without_credentials_names_cause() -> None:
    """A denied anonymous pull names the registry of the configured credentials."""
    image = ResolvedImage("ghcr.io/acme/connector:1", "ghcr.io", send_credentials=False)

    error = docker_pull.pull_error("denied", image, registry_settings())

    assert isinstance(error, RegistryAuthError)
    assert "denied the pull of the image ghcr.io/acme/connector:1" in str(error)
    assert "credentials are for 127.0.0.1:5000" in str(error)


def test_log_lines_split_at_newlines_only() -> None:
    """Output is decoded with replacement and split at newlines only."""
    raw = b"first\r\nsecond \xff\nthird\x0bsame line\n"
    framed = docker_logs.FRAME_HEADER.pack(1, len(raw)) + raw
    expected = ["first", "second \ufffd", "third\x0bsame line"]

    assert expected == docker_logs.split_lines(raw)
    assert expected == docker_logs.demultiplex_lines(framed)


def test_log_lines_empty() -> None:
    assert [] == docker_logs.split_lines(b"")
    assert [] == docker_logs.demultiplex_lines(b"")


def test_mask_values() -> None:
    """Environment values are masked in engine messages, except short ones."""
    text = "invalid value token-1234 for key abc"

    assert mask_values(text, ("token-1234", "abc")) == "invalid value *** for key abc"


def test_malformed_docker_host_is_configuration_error() -> None:
    """A Docker Engine address that cannot parse stops the start instead of retrying."""
    orchestrator = DockerOrchestrator(
        DockerSettings(), None, "manager-1", "opencti", "garbage"
    )

    with pytest.raises(ConfigurationError, match="DOCKER_HOST"):
        orchestrator.prepare()
