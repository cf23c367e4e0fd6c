"""Deployment manifests of connectors, and how a base Deployment is merged in.

A manifest is built in three layers, each written over the one below:

1. defaults, which the base Deployment may override:
   - `strategy: Recreate`, so that two pods of one connector never run at once;
   - `revisionHistoryLimit: 1`, because each old ReplicaSet keeps a copy of the
     connector's environment;
   - `automountServiceAccountToken: false`, because connectors do not call the
     Kubernetes API;
   - `dnsPolicy: ClusterFirstWithHostNet` when the pods use the host network;
2. the operator's base Deployment (`base_deployment` or `base_deployment_json`);
3. the generated Deployment: name, labels, contract hash annotation, replicas,
   selector, the connector container (name, image, pull policy, env, resources),
   `imagePullSecrets` and `hostNetwork`.

Merge rules, from a layer `below` and a layer `above`:
- maps merge key by key, recursively; a scalar or list from `above` wins;
- `containers`: the container of `above` is merged onto the `below` container
  of the same name, or onto the first `below` container when none has that
  name; the other `below` containers are kept after it (sidecars);
- `env`: entries of `below` are kept unless `above` sets the same name;
- `imagePullSecrets`: entries of `below` are kept and those of `above` are
  appended, without duplicate names;
- any other list from `above` replaces the one below.

The base Deployment's `status`, `spec.selector` and server-set metadata (name,
namespace, uid, resourceVersion...) are dropped before the merge, and so are
null values: the selector is always the generated one, so that it matches the
labels the orchestrator lists by.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import pydantic
from kubernetes import client

from xtm_composer.orchestrators import kubernetes_ca_bundle as ca_bundles
from xtm_composer.orchestrators.base import CONTRACT_HASH_KEY, WorkloadSpec
from xtm_composer.registry import ResolvedImage
from xtm_composer.settings import ConfigurationError

DROPPED_BASE_METADATA = frozenset(
    {
        "name",
        "generateName",
        "namespace",
        "uid",
        "resourceVersion",
        "generation",
        "creationTimestamp",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "managedFields",
        "selfLink",
        "ownerReferences",
    }
)


@dataclass(frozen=True)
class ManifestOptions:
    """Settings-derived parts of every connector Deployment."""

    image_pull_policy: str = "IfNotPresent"
    pull_secret_names: tuple[str, ...] = ()
    resources: dict[str, dict[str, str]] = field(default_factory=dict)
    host_network: bool = False
    base: Mapping[str, Any] = field(default_factory=dict)


def build_deployment(
    spec: WorkloadSpec, labels: dict[str, str], options: ManifestOptions
) -> dict[str, Any]:
    """Return the Deployment of a connector, with the base Deployment merged in."""
    below = merge(default_layer(options), clean_base(options.base))
    return merge(below, generated_layer(spec, labels, options))


def default_layer(options: ManifestOptions) -> dict[str, Any]:
    pod_spec: dict[str, Any] = {"automountServiceAccountToken": False}
    if options.host_network:
        pod_spec["dnsPolicy"] = "ClusterFirstWithHostNet"
    return {
        "spec": {
            "strategy": {"type": "Recreate"},
            "revisionHistoryLimit": 1,
            "template": {"spec": pod_spec},
        }
    }


def generated_layer(
    spec: WorkloadSpec, labels: dict[str, str], options: ManifestOptions
) -> dict[str, Any]:
    annotations = {CONTRACT_HASH_KEY: spec.contract_hash}
    # NOTE: env values, decrypted sensitive ones included, are stored in the pod
    # template, so anyone allowed to read Deployments in the namespace can read them.
    # A per-connector Secret with `envFrom` would avoid it, at the cost of more
    # Secret rights for the agent.
    container: dict[str, Any] = {
        "name": spec.name,
        "image": spec.image.reference,
        "imagePullPolicy": options.image_pull_policy,
        "env": [
            {"name": key, "value": value} for key, value in spec.environment.items()
        ],
    }
    if options.resources:
        container["resources"] = copy.deepcopy(options.resources)

    pod_spec: dict[str, Any] = {"containers": [container]}
    if spec.ca_bundle:
        volume, mount = ca_bundles.pod_additions(spec.name)
        container["volumeMounts"] = [mount]
        pod_spec["volumes"] = [volume]
    if options.pull_secret_names:
        pod_spec["imagePullSecrets"] = [
            {"name": name} for name in options.pull_secret_names
        ]
    # Only `true` is written, so a base Deployment may still set it.
    if options.host_network:
        pod_spec["hostNetwork"] = True

    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": spec.name,
            "labels": dict(labels),
            "annotations": dict(annotations),
        },
        "spec": {
            "replicas": 1 if spec.running else 0,
            "selector": {"matchLabels": dict(labels)},
            "template": {
                "metadata": {"labels": dict(labels), "annotations": dict(annotations)},
                "spec": pod_spec,
            },
        },
    }


def clean_base(base: Mapping[str, Any]) -> dict[str, Any]:
    """Copy the base Deployment without nulls and without fields the merge owns."""
    cleaned = drop_nulls(base)
    if not isinstance(cleaned, dict):
        return {}
    cleaned.pop("status", None)
    metadata = cleaned.get("metadata")
    if isinstance(metadata, dict):
        for key in DROPPED_BASE_METADATA:
            metadata.pop(key, None)
    spec = cleaned.get("spec")
    if isinstance(spec, dict):
        spec.pop("selector", None)
    return cleaned


def drop_nulls(value: Any) -> Any:
    """Deep-copy `value` without null map values (YAML `key:` with nothing after)."""
    if isinstance(value, Mapping):
        return {
            key: drop_nulls(item) for key, item in value.items() if item is not None
        }
    if isinstance(value, list):
        return [drop_nulls(item) for item in value]
    return value


def merge(below: Mapping[str, Any], above: Mapping[str, Any]) -> dict[str, Any]:
    """Merge two manifest maps by the rules of the module docstring."""
    result = copy.deepcopy(dict(below))
    for key, value in above.items():
        current = result.get(key)
        if isinstance(current, Mapping) and isinstance(value, Mapping):
            result[key] = merge(current, value)
        elif isinstance(current, list) and isinstance(value, list):
            merge_lists = LIST_MERGES.get(key, replace_list)
            result[key] = merge_lists(current, value)
        else:
            result[key] = copy.deepcopy(value)
    return result


def replace_list(below: list[Any], above: list[Any]) -> list[Any]:
    return copy.deepcopy(above)


def merge_containers(below: list[Any], above: list[Any]) -> list[Any]:
    """Merge each container of `above` onto its `below` partner, keep the rest."""
    remaining = [item for item in below if isinstance(item, Mapping)]
    merged: list[Any] = []
    for container in above:
        partner = find_named(remaining, container.get("name"))
        if partner is None and remaining and not merged:
            partner = remaining[0]
        if partner is None:
            merged.append(copy.deepcopy(container))
            continue
        remaining.remove(partner)
        merged.append(merge(partner, container))
    return merged + copy.deepcopy(remaining)


def merge_env(below: list[Any], above: list[Any]) -> list[Any]:
    """Keep the `below` entries whose name `above` does not set, then `above`."""
    names = {entry.get("name") for entry in above}
    kept = [
        entry
        for entry in below
        if not (isinstance(entry, Mapping) and entry.get("name") in names)
    ]
    return copy.deepcopy(kept) + copy.deepcopy(above)


def append_new_names(below: list[Any], above: list[Any]) -> list[Any]:
    """Keep `below` and append the entries of `above` whose name is new."""
    names = {entry.get("name") for entry in below if isinstance(entry, Mapping)}
    added = [entry for entry in above if entry.get("name") not in names]
    return copy.deepcopy(below) + copy.deepcopy(added)


def find_named(items: list[Any], name: Any) -> Any:
    return next((item for item in items if item.get("name") == name), None)


LIST_MERGES: dict[str, Callable[[list[Any], list[Any]], list[Any]]] = {
    "containers": merge_containers,
    "env": merge_env,
    "imagePullSecrets": append_new_names,
}
"""List fields merged by name instead of replaced. A field name identifies the
list, because in a Deployment `containers` and `imagePullSecrets` appear in the
pod spec only and `env` in containers only."""


def patch_body(manifest: Mapping[str, Any], live: Mapping[str, Any]) -> dict[str, Any]:
    """Return a JSON merge patch that turns `live` into `manifest`.

    The selector is left out because it is immutable. Lists are replaced
    wholesale by a JSON merge patch, so the container, its env and the pull
    secrets end up exactly as generated. Maps merge, so the label keys that
    `live` has and `manifest` lacks are set to null. The pod template then
    carries exactly the generated labels. A selector that needs other labels
    thus makes the apiserver reject the patch, instead of keeping stale labels.
    """
    body = copy.deepcopy(dict(manifest))
    spec = body.get("spec", {})
    spec.pop("selector", None)

    live_metadata = live.get("metadata") or {}
    null_stale_labels(body["metadata"], live_metadata.get("labels") or {})
    live_template = (live.get("spec") or {}).get("template") or {}
    null_stale_labels(
        spec["template"]["metadata"],
        (live_template.get("metadata") or {}).get("labels") or {},
    )
    return body


def null_stale_labels(metadata: dict[str, Any], live_labels: Mapping[str, str]) -> None:
    labels = metadata.setdefault("labels", {})
    for key in live_labels:
        if key not in labels:
            labels[key] = None


def check_base_deployment(options: ManifestOptions, key: str) -> None:
    """Raise `ConfigurationError` when the base Deployment breaks the API schema.

    A sample connector Deployment is built with the base merged in and checked
    against the Deployment model of the Kubernetes client, so the agent stops
    at start-up rather than failing every deploy.
    """
    if not options.base:
        return
    sample = WorkloadSpec(
        connector_id="sample",
        name="sample",
        image=ResolvedImage("sample:1", "docker.io", send_credentials=False),
        environment={"SAMPLE": "1"},
        labels={},
        contract_hash="sample",
        running=True,
    )
    manifest = build_deployment(sample, {"app": "sample"}, options)
    try:
        model = client.V1Deployment.model_validate(manifest)
    except pydantic.ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in detail['loc'])}: {detail['msg']}"
            for detail in error.errors(include_url=False, include_input=False)[:5]
        )
    else:
        # The client's models also accept Python names (`node_selector`), which
        # the merge would not match with API names (`nodeSelector`), and which
        # a patch would send as they are. Serializing gives API names only.
        with client.ApiClient() as api_client:
            serialized = api_client.sanitize_for_serialization(model)
        renamed = keys_missing_from(manifest, serialized)
        if not renamed:
            return
        problems = "; ".join(f"{path}: not an API field name" for path in renamed[:5])
    raise ConfigurationError(
        f"{key} is not a valid Deployment: {problems}. Write it with the "
        "field names of the Kubernetes API (camelCase)"
    )


def keys_missing_from(original: Any, serialized: Any, path: str = "") -> list[str]:
    """List the paths of map keys in `original` that `serialized` lacks."""
    missing: list[str] = []
    if isinstance(original, Mapping) and isinstance(serialized, Mapping):
        for key, value in original.items():
            child = f"{path}.{key}" if path else str(key)
            if key not in serialized:
                missing.append(child)
            else:
                missing.extend(keys_missing_from(value, serialized[key], child))
    elif isinstance(original, list) and isinstance(serialized, list):
        for index, (item, other) in enumerate(zip(original, serialized, strict=False)):
            missing.extend(keys_missing_from(item, other, f"{path}.{index}"))
    return missing
