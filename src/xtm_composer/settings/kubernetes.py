"""Settings of the Kubernetes orchestrator, under `<platform>.daemon.kubernetes`.

The key names are those of the reference XTM Composer (`image_pull_policy`,
`base_deployment`, `base_deployment_json`) plus the keys this implementation adds.
Values are checked here when they can be checked without a cluster. The base
Deployment is also checked against the Kubernetes API schema when the orchestrator
is built, because that check needs the Kubernetes client.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

from xtm_composer.settings.models import Section, StrList

DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
DNS_SUBDOMAIN = re.compile(
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
)
MAX_LABEL_LENGTH = 63
MAX_SUBDOMAIN_LENGTH = 253

# A Kubernetes resource quantity: a decimal number with an optional exponent, SI
# suffix (m, k, M, G...) or binary suffix (Ki, Mi, Gi...).
QUANTITY = re.compile(
    r"^[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+|[numkMGTPE]|[KMGTPE]i)?$"
)


def _quantity_to_string(value: Any) -> Any:
    """Accept YAML numbers (`cpu: 1`) as the strings the Kubernetes API expects."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    return value


def _check_quantity(value: str) -> str:
    if not QUANTITY.match(value):
        raise ValueError(
            f"{value!r} is not a Kubernetes quantity. Write for example "
            "'500m' or '1' for CPU and '256Mi' or '1Gi' for memory"
        )
    return value


Quantity = Annotated[str, BeforeValidator(_quantity_to_string)]


class ContainerResources(BaseModel):
    """Requests and limits of the connector container, as in a Pod spec."""

    model_config = ConfigDict(extra="forbid")

    requests: dict[str, Quantity] = Field(default_factory=dict)
    limits: dict[str, Quantity] = Field(default_factory=dict)

    @field_validator("requests", "limits")
    @classmethod
    def _check_quantities(cls, value: dict[str, str]) -> dict[str, str]:
        for quantity in value.values():
            _check_quantity(quantity)
        return value

    def to_manifest(self) -> dict[str, dict[str, str]]:
        """Return the `resources` field of a container, without empty parts."""
        manifest = {"requests": self.requests, "limits": self.limits}
        return {key: dict(value) for key, value in manifest.items() if value}


def _parse_json_object(value: Any) -> Any:
    """Parse `base_deployment_json`, which the loader may already have parsed."""
    if value is None or isinstance(value, dict):
        return value
    if not isinstance(value, str):
        raise ValueError("write the base Deployment as a JSON object in a string")
    if not value.strip():
        return None
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError as error:
        raise ValueError(
            f"not valid JSON ({error.msg} at character {error.pos}). "
            "Write a Deployment as a JSON object"
        ) from None
    if not isinstance(parsed, dict):
        raise ValueError(
            f"the JSON value is a {type(parsed).__name__}, not an object. Write a "
            "Deployment as a JSON object"
        )
    return parsed


class KubernetesSettings(Section):
    """Settings of the connector Deployments: cluster, namespace and pod options."""

    kubeconfig: Path | None = None
    """Kubeconfig file. Without it the agent uses the in-cluster configuration
    when it runs in a pod, else `KUBECONFIG` or `~/.kube/config`."""
    namespace: str | None = None
    """Namespace of the connector Deployments. Without it: the agent's own
    namespace in a pod, else the kubeconfig context's namespace, else `default`."""
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = "IfNotPresent"
    """Pull policy of connector containers, `IfNotPresent` as in the reference."""
    image_pull_secrets: StrList = Field(default_factory=list)
    """Existing Secrets attached to every connector pod as `imagePullSecrets`."""
    image_pull_secret_name: str | None = None
    """One more existing pull Secret, under the key that reference files use."""
    image_resources: ContainerResources | None = None
    """Resource requests and limits of every connector container."""
    base_deployment: dict[str, Any] | None = None
    """A Deployment (API field names) that generated Deployments are merged onto."""
    base_deployment_json: Annotated[
        dict[str, Any] | None, BeforeValidator(_parse_json_object)
    ] = None
    """The same as `base_deployment`, written as a JSON string."""
    host_network: bool = False
    """Run connector pods in the node's network namespace. Off by default because
    on a real cluster pods get their network from the CNI plugin, and the host
    network exposes the node's interfaces to every connector."""

    @field_validator("namespace")
    @classmethod
    def _check_namespace(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if len(value) > MAX_LABEL_LENGTH or not DNS_LABEL.match(value):
            raise ValueError(
                "a namespace name has at most 63 lower-case letters, digits or "
                "'-', and starts and ends with a letter or digit"
            )
        return value

    @field_validator("image_pull_secrets")
    @classmethod
    def _check_secret_names(cls, value: list[str]) -> list[str]:
        for name in value:
            check_secret_name(name)
        return value

    @field_validator("image_pull_secret_name")
    @classmethod
    def _check_extra_secret_name(cls, value: str | None) -> str | None:
        return None if value is None else check_secret_name(value)

    @model_validator(mode="after")
    def _one_base_deployment(self) -> KubernetesSettings:
        if self.base_deployment is not None and self.base_deployment_json is not None:
            raise ValueError(
                "base_deployment and base_deployment_json are both set, so "
                "keep only one of them"
            )
        return self

    @property
    def base(self) -> dict[str, Any]:
        """The base Deployment from either key, or an empty mapping."""
        return self.base_deployment or self.base_deployment_json or {}

    @property
    def pull_secret_names(self) -> list[str]:
        """The configured pull Secrets, in order and without duplicates."""
        names = [*self.image_pull_secrets]
        if self.image_pull_secret_name:
            names.append(self.image_pull_secret_name)
        return list(dict.fromkeys(names))


def check_secret_name(name: str) -> str:
    if len(name) > MAX_SUBDOMAIN_LENGTH or not DNS_SUBDOMAIN.match(name):
        raise ValueError(
            f"{name!r} is not a valid Secret name. Use lower-case letters, "
            "digits, '-' and '.'"
        )
    return name
