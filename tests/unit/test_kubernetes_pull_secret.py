"""The pull Secret's failure paths, with a stand-in for the Kubernetes API.

The engine tests cover the paths that the testbed cluster can produce; these
cover the apiserver responses it cannot be made to give on demand.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from xtm_composer import logs
from xtm_composer.orchestrators.kubernetes_pull_secret import PullSecretManager
from xtm_composer.settings import RegistrySettings

PASSWORD = "pull-password-7d1e"
OWNER_LABELS = {"opencti-manager": "manager-1", "opencti-platform": "opencti"}
REGISTRY = RegistrySettings(
    server="registry.example.com", username="puller", password=PASSWORD
)


class FakeCoreApi:
    """Secret calls of CoreV1Api: records them and raises the queued errors."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.errors: dict[str, ApiException] = {}
        self.secret: Any = None

    def _call(self, verb: str) -> None:
        self.calls.append(verb)
        if verb in self.errors:
            raise self.errors[verb]

    def delete_namespaced_secret(self, *args: Any, **kwargs: Any) -> None:
        self._call("delete")

    def create_namespaced_secret(self, *args: Any, **kwargs: Any) -> None:
        self._call("create")

    def read_namespaced_secret(self, *args: Any, **kwargs: Any) -> Any:
        self._call("get")
        return self.secret


class FakeAuthorizationApi:
    """SelfSubjectAccessReview results: allowed unless the verb is denied."""

    def __init__(self, denied: set[str], fails: bool = False) -> None:
        self.denied = denied
        self.fails = fails

    def create_self_subject_access_review(self, body: Any, **kwargs: Any) -> Any:
        if self.fails:
            raise ApiException(status=500, reason="Internal Server Error")
        verb = body["spec"]["resourceAttributes"]["verb"]
        return SimpleNamespace(status=SimpleNamespace(allowed=verb not in self.denied))


@pytest.fixture
def log_stream() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    logs.configure_logging("debug", "json", stream=stream)
    yield stream
    logs.configure_logging()


def make_manager(
    core: FakeCoreApi, authorization: FakeAuthorizationApi
) -> PullSecretManager:
    # The client is never used to send: the APIs are replaced below.
    configuration = client.Configuration()
    configuration.host = "https://127.0.0.1:6443"
    manager = PullSecretManager(
        client.ApiClient(configuration), "connectors", OWNER_LABELS, (1.0, 1.0)
    )
    manager.core = core  # type: ignore[assignment]
    manager.authorization = authorization  # type: ignore[assignment]
    return manager


def api_error(status: int, message: str = "") -> ApiException:
    return ApiException(
        status=status, reason="reason", body=json.dumps({"message": message})
    )


def events(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_forbidden_create_names_missing_verb(log_stream: io.StringIO) -> None:
    """A 403 on create logs the verbs the review finds missing, and no raise."""
    core = FakeCoreApi()
    core.errors["create"] = api_error(403, "secrets is forbidden")
    manager = make_manager(core, FakeAuthorizationApi(denied={"create"}))

    created = manager.replace(REGISTRY)

    assert created is False
    errors = [event for event in events(log_stream) if event["level"] == "error"]
    assert len(errors) == 1
    assert errors[0]["missing_permissions"] == "create on secrets"
    assert errors[0]["namespace"] == "connectors"
    assert "get, create, delete" in errors[0]["fix"]


def test_forbidden_delete_stops_before_create(log_stream: io.StringIO) -> None:
    """Without delete, create is not tried: the old Secret would conflict."""
    core = FakeCoreApi()
    core.errors["delete"] = api_error(403)
    manager = make_manager(core, FakeAuthorizationApi(denied={"delete", "get"}))

    assert manager.replace(REGISTRY) is False
    assert core.calls == ["delete"]
    errors = [event for event in events(log_stream) if event["level"] == "error"]
    assert errors[0]["missing_permissions"] == "get, delete on secrets"


def test_review_failure_names_failed_verb(log_stream: io.StringIO) -> None:
    """When the review itself fails, the verb that failed is named."""
    core = FakeCoreApi()
    core.errors["create"] = api_error(403)
    manager = make_manager(core, FakeAuthorizationApi(denied=set(), fails=True))

    manager.replace(REGISTRY)

    errors = [event for event in events(log_stream) if event["level"] == "error"]
    assert errors[0]["missing_permissions"] == "create on secrets"


def test_rejected_secret_message_masked(log_stream: io.StringIO) -> None:
    """An apiserver message that echoes the credentials is masked in the log."""
    core = FakeCoreApi()
    core.errors["create"] = api_error(
        422, f'Secret "opencti-registry-auth" is invalid: password {PASSWORD}'
    )
    manager = make_manager(core, FakeAuthorizationApi(denied=set()))

    assert manager.replace(REGISTRY) is False
    output = log_stream.getvalue()
    assert PASSWORD not in output
    assert "is invalid" in output


def test_server_error_raised() -> None:
    """A 5xx is raised, so that start-up is retried."""
    core = FakeCoreApi()
    core.errors["create"] = api_error(503, "etcd timed out")
    manager = make_manager(core, FakeAuthorizationApi(denied=set()))

    with pytest.raises(ApiException):
        manager.replace(REGISTRY)


def test_conflict_on_create_retried() -> None:
    """A Secret created meanwhile is replaced once, then the conflict is logged."""
    core = FakeCoreApi()
    core.errors["create"] = api_error(409)
    manager = make_manager(core, FakeAuthorizationApi(denied=set()))

    created = manager.replace(REGISTRY)

    assert created is False
    assert core.calls == ["delete", "create", "delete", "create"]


def labelled_secret(labels: dict[str, str] | None) -> Any:
    return SimpleNamespace(metadata=SimpleNamespace(labels=labels))


def test_stale_secret_of_manager_deleted() -> None:
    """A Secret with this manager's labels is deleted without credentials."""
    core = FakeCoreApi()
    core.secret = labelled_secret(dict(OWNER_LABELS))

    make_manager(core, FakeAuthorizationApi(denied=set())).remove_stale()

    assert core.calls == ["get", "delete"]


@pytest.mark.parametrize(
    "labels", [None, {"opencti-manager": "other", "opencti-platform": "opencti"}]
)
def test_foreign_secret_kept(labels: dict[str, str] | None) -> None:
    """An operator's or another manager's Secret of that name is kept."""
    core = FakeCoreApi()
    core.secret = labelled_secret(labels)

    make_manager(core, FakeAuthorizationApi(denied=set())).remove_stale()

    assert core.calls == ["get"]


def test_absent_stale_secret_fine() -> None:
    """Nothing to clean up is not an error."""
    core = FakeCoreApi()
    core.errors["get"] = api_error(404)

    make_manager(core, FakeAuthorizationApi(denied=set())).remove_stale()

    assert core.calls == ["get"]
