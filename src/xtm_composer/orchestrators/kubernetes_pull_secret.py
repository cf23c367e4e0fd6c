"""The `opencti-registry-auth` pull Secret, written at orchestrator start-up.

With registry credentials, any Secret of that name is deleted (an absent one is
fine) and created again from the configured credentials, so a changed password
takes effect at the next start. The Secret carries the manager and platform
labels. A permission error is logged with the RBAC verbs the agent lacks and
start-up goes on: connectors whose images need no credentials still deploy.

Without credentials nothing is created or attached. A leftover Secret of that
name is deleted only when its labels show that this manager created it, because
it contains credentials that the configuration no longer gives. A Secret of that
name that an operator created (no such labels) is left alone, and may be named
in `image_pull_secrets`.
"""

from __future__ import annotations

import base64
import json
from typing import Any, cast

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from xtm_composer import registry
from xtm_composer.logs import get_logger
from xtm_composer.orchestrators.kubernetes_api import api_error_message, mask_values
from xtm_composer.settings import RegistrySettings

logger = get_logger(__name__)

SECRET_NAME = "opencti-registry-auth"
SECRET_TYPE = "kubernetes.io/dockerconfigjson"
SECRET_VERBS = ("get", "create", "delete")
"""The verbs on `secrets` that this module uses. `list` is not among them, so the
shipped Role does not grant it: listing would expose every Secret of the
namespace."""

FORBIDDEN = 403
NOT_FOUND = 404
CONFLICT = 409

LOG_FIELDS = {"orchestrator": "kubernetes", "secret": SECRET_NAME}


class PullSecretManager:
    """Deletes and creates the pull Secret in one namespace."""

    def __init__(
        self,
        api_client: client.ApiClient,
        namespace: str,
        owner_labels: dict[str, str],
        request_timeout: tuple[float, float],
    ) -> None:
        self.core = client.CoreV1Api(api_client)
        self.authorization = client.AuthorizationV1Api(api_client)
        self.namespace = namespace
        self.owner_labels = owner_labels
        self.request_timeout = request_timeout
        # Values that an apiserver message must not carry into a log line.
        self._secret_values: tuple[str, ...] = ()

    def replace(self, settings: RegistrySettings) -> bool:
        """Delete and create the Secret; return whether it now exists.

        Raises `ApiException` for errors that a later attempt may not meet
        (server errors); permission and validation errors are logged instead.
        """
        logger.info("Deleting existing imagePullSecret if present", **LOG_FIELDS)
        try:
            self._delete()
        except ApiException as error:
            if not self._log_failure("delete", error):
                raise
            return False

        logger.info(
            "Creating imagePullSecret for private registry",
            **LOG_FIELDS,
            server=registry.auth_key(settings.server),
        )
        try:
            self._create(settings)
        except ApiException as error:
            if not self._log_failure("create", error):
                raise
            return False
        logger.info("Successfully created imagePullSecret", **LOG_FIELDS)
        return True

    def remove_stale(self) -> None:
        """Delete the Secret if this manager created it; see the module docstring."""
        try:
            secret = self.core.read_namespaced_secret(
                SECRET_NAME, self.namespace, _request_timeout=self.request_timeout
            )
        except ApiException as error:
            if error.status == NOT_FOUND:
                return
            if error.status == FORBIDDEN:
                logger.warning(
                    "Cannot check for a stale imagePullSecret: permission denied",
                    **LOG_FIELDS,
                    namespace=self.namespace,
                )
                return
            raise
        labels = (secret.metadata and secret.metadata.labels) or {}
        if any(labels.get(key) != value for key, value in self.owner_labels.items()):
            logger.info(
                "Keeping an imagePullSecret that this manager did not create",
                **LOG_FIELDS,
            )
            return
        logger.info(
            "Deleting the imagePullSecret of earlier registry credentials",
            **LOG_FIELDS,
        )
        try:
            self._delete()
        except ApiException as error:
            if not self._log_failure("delete", error):
                raise

    def _delete(self) -> None:
        try:
            self.core.delete_namespaced_secret(
                SECRET_NAME, self.namespace, _request_timeout=self.request_timeout
            )
        except ApiException as error:
            if error.status != NOT_FOUND:
                raise

    def _create(self, settings: RegistrySettings) -> None:
        document = registry.docker_config_json(settings).encode()
        encoded = base64.b64encode(document).decode()
        self._secret_values = (
            settings.password.get_secret_value() if settings.password else "",
            json.loads(document)["auths"][registry.auth_key(settings.server)]["auth"],
            encoded,
        )
        body = {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": SECRET_NAME, "labels": dict(self.owner_labels)},
            "type": SECRET_TYPE,
            "data": {".dockerconfigjson": encoded},
        }
        try:
            self._post(body)
        except ApiException as error:
            # Another agent of this manager created it between our delete and
            # create, so replace it once more with our credentials.
            if error.status != CONFLICT:
                raise
            self._delete()
            self._post(body)

    def _post(self, body: dict[str, Any]) -> None:
        self.core.create_namespaced_secret(
            self.namespace, cast(Any, body), _request_timeout=self.request_timeout
        )

    def _log_failure(self, verb: str, error: ApiException) -> bool:
        """Log a permission or validation error; return False for other errors."""
        if error.status is not None and error.status >= 500:
            return False
        if error.status == FORBIDDEN:
            missing = self.missing_verbs() or [verb]
            logger.error(
                "Cannot manage the imagePullSecret: permission denied. Connectors "
                "whose images need the registry credentials will fail to pull",
                **LOG_FIELDS,
                namespace=self.namespace,
                missing_permissions=f"{', '.join(missing)} on secrets",
                fix=(
                    f"grant the verbs {', '.join(SECRET_VERBS)} on secrets in "
                    f"namespace {self.namespace} to the agent's identity"
                ),
            )
            return True
        logger.error(
            f"Cannot {verb} the imagePullSecret",
            **LOG_FIELDS,
            namespace=self.namespace,
            status=error.status,
            error=mask_values(api_error_message(error), self._secret_values),
        )
        return True

    def missing_verbs(self) -> list[str] | None:
        """Ask the apiserver which `SECRET_VERBS` the agent lacks; None if unknown."""
        missing = []
        for verb in SECRET_VERBS:
            review = {
                "apiVersion": "authorization.k8s.io/v1",
                "kind": "SelfSubjectAccessReview",
                "spec": {
                    "resourceAttributes": {
                        "namespace": self.namespace,
                        "verb": verb,
                        "resource": "secrets",
                    }
                },
            }
            try:
                answer = self.authorization.create_self_subject_access_review(
                    cast(Any, review), _request_timeout=self.request_timeout
                )
            except ApiException:
                return None
            if not (answer.status and answer.status.allowed):
                missing.append(verb)
        return missing
