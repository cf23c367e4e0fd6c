"""Service specs built from Swarm settings, log ordering and API helpers."""

from __future__ import annotations

import base64
import json
from typing import Any

import docker.errors
import pytest
import requests

from xtm_composer.orchestrators import swarm_api, swarm_logs, swarm_spec
from xtm_composer.orchestrators.base import CA_BUNDLE_PATH, WorkloadSpec
from xtm_composer.orchestrators.swarm import ca_config_name
from xtm_composer.registry import ResolvedImage
from xtm_composer.settings.swarm import SwarmSettings

IMAGE = "registry.example.com/opencti/connector-test:1.0.0@sha256:" + "a" * 64
LABELS = {"opencti-manager": "m"}


def workload_spec(running: bool = True) -> WorkloadSpec:
    return WorkloadSpec(
        connector_id="c1",
        name="connector-c1",
        image=ResolvedImage(IMAGE, "registry.example.com", send_credentials=True),
        environment={"CONNECTOR_NAME": "Test", "OPENCTI_TOKEN": "secret"},
        labels=LABELS,
        contract_hash="h1",
        running=running,
    )


def full_settings() -> SwarmSettings:
    return SwarmSettings.model_validate(
        {
            "network": "host",
            "extra_hosts": ["registry.test:127.0.0.1"],
            "dns": ["127.0.0.53"],
            "dns_search": ["example.test"],
            "cap_add": ["NET_ADMIN"],
            "cap_drop": ["MKNOD"],
            "sysctls": {"kernel.msgmax": "65536"},
            "ulimits": [{"name": "nofile", "soft": 1024}],
            "hostname": "connector",
            "user": "nobody",
            "read_only": True,
            "init": True,
            "stop_grace_period": "30s",
            "resources": {
                "cpu_limit": 0.5,
                "memory_limit": "256m",
                "cpu_reservation": 0.1,
                "memory_reservation": "64m",
            },
            "placement_constraints": ["node.role==worker"],
            "placement_preferences": ["spread=node.labels.zone"],
            "restart_condition": "on-failure",
            "restart_delay": "500ms",
            "restart_max_attempts": 3,
        }
    )


def test_minimal_spec_sends_only_required_fields() -> None:
    """Without options, the spec leaves Swarm's defaults alone."""
    body = swarm_spec.service_spec(
        SwarmSettings(), workload_spec(), IMAGE, LABELS, None
    )

    assert {"Name", "Labels", "TaskTemplate", "Mode"} == set(body)
    assert {"ContainerSpec"} == set(body["TaskTemplate"])
    container = body["TaskTemplate"]["ContainerSpec"]
    assert {"Image", "Env", "Labels"} == set(container)
    assert IMAGE == container["Image"]
    assert ["CONNECTOR_NAME=Test", "OPENCTI_TOKEN=secret"] == container["Env"]
    assert LABELS == container["Labels"]
    assert LABELS == body["Labels"]
    assert {"Replicated": {"Replicas": 1}} == body["Mode"]


def test_stopped_spec_has_zero_replicas() -> None:
    body = swarm_spec.service_spec(
        SwarmSettings(), workload_spec(running=False), IMAGE, LABELS, None
    )

    assert {"Replicated": {"Replicas": 0}} == body["Mode"]


def test_every_option_reaches_spec() -> None:
    """Each setting maps to its Engine API field, in Engine API units."""
    body = swarm_spec.service_spec(
        full_settings(), workload_spec(), IMAGE, LABELS, ("config-id", "config-name")
    )
    template = body["TaskTemplate"]
    container = template["ContainerSpec"]

    assert [{"Target": "host"}] == template["Networks"]
    assert ["127.0.0.1 registry.test"] == container["Hosts"]
    assert {"Nameservers": ["127.0.0.53"], "Search": ["example.test"]} == container[
        "DNSConfig"
    ]
    assert ["NET_ADMIN"] == container["CapabilityAdd"]
    assert ["MKNOD"] == container["CapabilityDrop"]
    assert {"kernel.msgmax": "65536"} == container["Sysctls"]
    assert [{"Name": "nofile", "Soft": 1024, "Hard": 1024}] == container["Ulimits"]
    assert "connector" == container["Hostname"]
    assert "nobody" == container["User"]
    assert container["ReadOnly"] is True
    assert container["Init"] is True
    assert 30_000_000_000 == container["StopGracePeriod"]
    assert {
        "Limits": {"NanoCPUs": 500_000_000, "MemoryBytes": 256 * 1024**2},
        "Reservations": {"NanoCPUs": 100_000_000, "MemoryBytes": 64 * 1024**2},
    } == template["Resources"]
    assert {
        "Constraints": ["node.role==worker"],
        "Preferences": [{"Spread": {"SpreadDescriptor": "node.labels.zone"}}],
    } == template["Placement"]
    assert {
        "Condition": "on-failure",
        "Delay": 500_000_000,
        "MaxAttempts": 3,
    } == template["RestartPolicy"]
    assert [
        {
            "File": {"Name": CA_BUNDLE_PATH, "UID": "0", "GID": "0", "Mode": 0o444},
            "ConfigID": "config-id",
            "ConfigName": "config-name",
        }
    ] == container["Configs"]


def test_unsupported_options_named_by_version() -> None:
    """Options newer than the engine's API version are listed with both versions."""
    problems = swarm_spec.unsupported_options(full_settings(), "1.39")

    assert 4 == len(problems)
    assert any(
        "daemon.swarm.cap_add needs Docker Engine API 1.41, but the engine serves 1.39"
        == problem
        for problem in problems
    )
    assert any("daemon.swarm.sysctls needs" in problem for problem in problems)
    assert not any("daemon.swarm.init" in problem for problem in problems)
    assert [] == swarm_spec.unsupported_options(full_settings(), "1.41")
    assert [] == swarm_spec.unsupported_options(SwarmSettings(), "1.30")


def test_ca_config_name_fits_swarm_limit() -> None:
    """Config names depend on connector and content and stay within 64 characters."""
    name = ca_config_name("c1", "bundle-a")

    assert len(name) <= 64
    assert name.startswith("xtm-ca-")
    assert name == ca_config_name("c1", "bundle-a")
    assert name != ca_config_name("c1", "bundle-b")
    assert name != ca_config_name("c2", "bundle-a")


def test_log_lines_sorted_across_tasks() -> None:
    """Lines of several tasks come back in time order, cut to the last ones."""
    raw = (
        b"2026-01-01T00:00:03.000000000Z third\n"
        b"2026-01-01T00:00:04.000000000Z fourth\n"
        b"2026-01-01T00:00:01.000000000Z first\n"
        b"2026-01-01T00:00:02.000000000Z second\n"
    )

    assert ["second", "third", "fourth"] == swarm_logs.sorted_log_lines(
        raw, 3, timestamps=False
    )
    assert ["2026-01-01T00:00:04.000000000Z fourth"] == swarm_logs.sorted_log_lines(
        raw, 1, timestamps=True
    )


def test_long_log_line_rejoined() -> None:
    """Timestamps the engine writes between 16 KiB chunks of a line are removed."""
    stamp = b"2026-01-01T00:00:01.000000000Z "
    chunk = swarm_logs.PARTIAL_CHUNK_BYTES
    line = b"x" * (2 * chunk + 100)
    raw = (
        stamp
        + line[:chunk]
        + stamp
        + line[chunk : 2 * chunk]
        + stamp
        + line[2 * chunk :]
        + b"\n"
    )

    lines = swarm_logs.sorted_log_lines(raw, 10, timestamps=False)

    assert [line.decode()] == lines


def error_response(status: int, body: dict[str, Any]) -> requests.Response:
    response = requests.Response()
    response.status_code = status
    response._content = json.dumps(body).encode()
    response.url = "http://docker/v1.41/services/x/update"
    return response


def test_out_of_sequence_recognised() -> None:
    response = error_response(
        500, {"message": "rpc error: code = Unknown desc = update out of sequence"}
    )
    try:
        response.raise_for_status()
    except requests.HTTPError as error:
        with pytest.raises(docker.errors.APIError) as raised:
            docker.errors.create_api_error_from_http_exception(error)

    assert swarm_api.is_out_of_sequence(raised.value)


def test_empty_registry_auth_has_no_credentials() -> None:
    """The header that clears stored credentials decodes to an empty object."""
    decoded = json.loads(base64.urlsafe_b64decode(swarm_api.EMPTY_REGISTRY_AUTH))

    assert {} == decoded


def test_pinned_image_keeps_digest() -> None:
    """A reference that already names a digest needs no registry lookup."""
    image = ResolvedImage(IMAGE, "registry.example.com", send_credentials=False)

    assert IMAGE == swarm_api.pinned_image(None, image, None)  # type: ignore[arg-type]


def test_empty_options_pass_any_version() -> None:
    """An empty list or a false flag changes nothing, so old engines take it."""
    settings = SwarmSettings(cap_add=[], sysctls={}, init=False)

    assert [] == swarm_spec.unsupported_options(settings, "1.30")
