"""Connector Deployment manifests and the base Deployment merge rules."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from xtm_composer.orchestrators import kubernetes_manifest as manifests
from xtm_composer.orchestrators.base import (
    CA_BUNDLE_PATH,
    CONTRACT_HASH_KEY,
    WorkloadSpec,
)
from xtm_composer.registry import ResolvedImage
from xtm_composer.settings import ConfigurationError

LABELS = {
    "opencti-manager": "manager-1",
    "opencti-platform": "opencti",
    "opencti-connector-id": "connector-1",
}


def make_spec(running: bool = True, **environment: str) -> WorkloadSpec:
    return WorkloadSpec(
        connector_id="connector-1",
        name="ipinfo-0123456789",
        image=ResolvedImage(
            "registry.example.com/opencti/connector-ipinfo:6.0.0",
            "registry.example.com",
            send_credentials=True,
        ),
        environment=environment or {"OPENCTI_URL": "http://opencti:8080"},
        labels={**LABELS, CONTRACT_HASH_KEY: "hash-1"},
        contract_hash="hash-1",
        running=running,
    )


def build(base: dict[str, Any] | None = None, **options: Any) -> dict[str, Any]:
    spec = options.pop("spec", None) or make_spec()
    return manifests.build_deployment(
        spec, LABELS, manifests.ManifestOptions(base=base or {}, **options)
    )


def pod_spec(deployment: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = deployment["spec"]["template"]["spec"]
    return result


def test_generated_deployment_fields() -> None:
    """Name, labels, selector, annotation, container and replicas are generated."""
    deployment = build(image_pull_policy="Always")
    container = pod_spec(deployment)["containers"][0]

    assert deployment["metadata"]["name"] == "ipinfo-0123456789"
    assert deployment["metadata"]["labels"] == LABELS
    assert deployment["spec"]["selector"] == {"matchLabels": LABELS}
    assert deployment["spec"]["template"]["metadata"]["labels"] == LABELS
    assert deployment["metadata"]["annotations"] == {CONTRACT_HASH_KEY: "hash-1"}
    assert (deployment["spec"]["template"]["metadata"]["annotations"]) == {
        CONTRACT_HASH_KEY: "hash-1"
    }
    assert deployment["spec"]["replicas"] == 1
    assert container["name"] == "ipinfo-0123456789"
    assert container["image"] == "registry.example.com/opencti/connector-ipinfo:6.0.0"
    assert container["imagePullPolicy"] == "Always"
    assert container["env"] == [{"name": "OPENCTI_URL", "value": "http://opencti:8080"}]


def test_contract_hash_is_not_a_label() -> None:
    """The hash changes with each contract, so it never enters a selector."""
    deployment = build()

    assert CONTRACT_HASH_KEY not in deployment["metadata"]["labels"]
    assert CONTRACT_HASH_KEY not in deployment["spec"]["selector"]["matchLabels"]


def test_stopped_connector_has_no_replica() -> None:
    """A connector that should not run gets 0 replicas."""
    deployment = build(spec=make_spec(running=False))

    assert deployment["spec"]["replicas"] == 0


def test_defaults_of_generated_deployment() -> None:
    """Recreate strategy, short history and no service account token."""
    deployment = build()

    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    assert deployment["spec"]["revisionHistoryLimit"] == 1
    assert pod_spec(deployment)["automountServiceAccountToken"] is False
    assert "hostNetwork" not in pod_spec(deployment)
    assert "dnsPolicy" not in pod_spec(deployment)
    assert "imagePullSecrets" not in pod_spec(deployment)


def test_host_network_sets_dns_policy() -> None:
    """With the host network, pods still resolve cluster names first."""
    deployment = build(host_network=True)

    assert pod_spec(deployment)["hostNetwork"] is True
    assert pod_spec(deployment)["dnsPolicy"] == "ClusterFirstWithHostNet"


def test_base_overrides_defaults() -> None:
    """An operator's strategy and DNS policy win over the defaults."""
    base = {
        "spec": {
            "strategy": {"type": "RollingUpdate"},
            "template": {"spec": {"dnsPolicy": "Default"}},
        }
    }
    deployment = build(base, host_network=True)

    assert deployment["spec"]["strategy"]["type"] == "RollingUpdate"
    assert pod_spec(deployment)["dnsPolicy"] == "Default"


def test_pull_secrets_and_resources() -> None:
    """Configured pull secrets and resources reach the pod spec."""
    resources = {"requests": {"cpu": "100m"}, "limits": {"memory": "512Mi"}}
    deployment = build(
        pull_secret_names=("opencti-registry-auth", "team-secret"),
        resources=resources,
    )

    assert (pod_spec(deployment)["imagePullSecrets"]) == [
        {"name": "opencti-registry-auth"},
        {"name": "team-secret"},
    ]
    assert resources == pod_spec(deployment)["containers"][0]["resources"]


def test_base_maps_merge_and_generated_wins() -> None:
    """Base labels and annotations stay, and generated keys overwrite base ones."""
    base = {
        "metadata": {
            "labels": {"team": "intel", "opencti-manager": "impostor"},
            "annotations": {"owner": "ops"},
        },
        "spec": {
            "replicas": 5,
            "template": {
                "metadata": {"labels": {"team": "intel"}},
                "spec": {"nodeSelector": {"pool": "connectors"}},
            },
        },
    }
    deployment = build(base)

    assert deployment["metadata"]["labels"]["team"] == "intel"
    assert deployment["metadata"]["labels"]["opencti-manager"] == "manager-1"
    assert deployment["metadata"]["annotations"]["owner"] == "ops"
    assert deployment["metadata"]["annotations"][CONTRACT_HASH_KEY] == "hash-1"
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["template"]["metadata"]["labels"]["team"] == "intel"
    assert pod_spec(deployment)["nodeSelector"] == {"pool": "connectors"}


def test_base_container_merged_into_connector_container() -> None:
    """An unnamed base container is merged into the connector's container."""
    base = {
        "spec": {
            "template": {
                "spec": {
                    "containers": [
                        {
                            "name": "template",
                            "image": "ignored:1",
                            "resources": {"limits": {"memory": "1Gi"}},
                            "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
                            "securityContext": {"runAsNonRoot": True},
                        }
                    ],
                    "volumes": [{"name": "tmp", "emptyDir": {}}],
                }
            }
        }
    }
    deployment = build(base)
    containers = pod_spec(deployment)["containers"]

    assert len(containers) == 1
    assert containers[0]["name"] == "ipinfo-0123456789"
    assert (
        (containers[0]["image"])
        == "registry.example.com/opencti/connector-ipinfo:6.0.0"
    )
    assert containers[0]["resources"] == {"limits": {"memory": "1Gi"}}
    assert containers[0]["volumeMounts"] == [{"name": "tmp", "mountPath": "/tmp"}]
    assert containers[0]["securityContext"] == {"runAsNonRoot": True}
    assert pod_spec(deployment)["volumes"] == [{"name": "tmp", "emptyDir": {}}]


def test_configured_resources_win_over_base_container() -> None:
    """`image_resources` replaces what the base container sets for the same keys."""
    base = {
        "spec": {
            "template": {
                "spec": {
                    "containers": [
                        {"resources": {"limits": {"memory": "1Gi", "cpu": "1"}}}
                    ]
                }
            }
        }
    }
    deployment = build(base, resources={"limits": {"memory": "256Mi"}})

    assert (pod_spec(deployment)["containers"][0]["resources"]) == {
        "limits": {"memory": "256Mi", "cpu": "1"}
    }


def test_base_sidecar_kept_after_connector() -> None:
    """A base container named like the connector merges, and the others follow it."""
    base = {
        "spec": {
            "template": {
                "spec": {
                    "containers": [
                        {"name": "proxy", "image": "envoy:1"},
                        {"name": "ipinfo-0123456789", "workingDir": "/work"},
                    ]
                }
            }
        }
    }
    containers = pod_spec(build(base))["containers"]

    assert [c["name"] for c in containers] == ["ipinfo-0123456789", "proxy"]
    assert containers[0]["workingDir"] == "/work"
    assert containers[1]["image"] == "envoy:1"


def test_base_env_kept_unless_connector_sets_it() -> None:
    """Base env entries stay, except those the connector sets itself."""
    base = {
        "spec": {
            "template": {
                "spec": {
                    "containers": [
                        {
                            "env": [
                                {"name": "HTTPS_PROXY", "value": "http://proxy:3128"},
                                {"name": "OPENCTI_URL", "value": "http://wrong"},
                                {
                                    "name": "NODE",
                                    "valueFrom": {
                                        "fieldRef": {"fieldPath": "spec.nodeName"}
                                    },
                                },
                            ]
                        }
                    ]
                }
            }
        }
    }
    env = pod_spec(build(base))["containers"][0]["env"]

    assert env == [
        {"name": "HTTPS_PROXY", "value": "http://proxy:3128"},
        {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
        {"name": "OPENCTI_URL", "value": "http://opencti:8080"},
    ]


def test_base_pull_secrets_kept_without_duplicates() -> None:
    """Base pull secrets come first, then each configured one once."""
    base = {
        "spec": {
            "template": {
                "spec": {
                    "imagePullSecrets": [
                        {"name": "mirror"},
                        {"name": "opencti-registry-auth"},
                    ]
                }
            }
        }
    }
    deployment = build(base, pull_secret_names=("opencti-registry-auth", "team-secret"))

    assert pod_spec(deployment)["imagePullSecrets"] == [
        {"name": "mirror"},
        {"name": "opencti-registry-auth"},
        {"name": "team-secret"},
    ]


def test_base_selector_status_and_server_fields_dropped() -> None:
    """A Deployment exported from a cluster can serve as base as it is."""
    base = {
        "metadata": {
            "name": "exported",
            "namespace": "elsewhere",
            "uid": "0000",
            "resourceVersion": "42",
            "labels": {"team": "intel"},
        },
        "spec": {
            "selector": {"matchLabels": {"app": "exported"}},
            "template": {"metadata": {"labels": {"app": "exported"}}},
        },
        "status": {"replicas": 1},
    }
    deployment = build(base)

    assert deployment["metadata"]["name"] == "ipinfo-0123456789"
    assert "namespace" not in deployment["metadata"]
    assert "uid" not in deployment["metadata"]
    assert "resourceVersion" not in deployment["metadata"]
    assert "status" not in deployment
    assert deployment["spec"]["selector"] == {"matchLabels": LABELS}
    assert deployment["spec"]["template"]["metadata"]["labels"]["app"] == "exported"


def test_base_nulls_ignored() -> None:
    """Empty YAML keys (`key:` with no value) count as absent."""
    base = {"metadata": None, "spec": {"template": {"spec": {"nodeSelector": None}}}}
    deployment = build(base)

    assert "nodeSelector" not in pod_spec(deployment)
    assert deployment["metadata"]["labels"] == LABELS


def test_build_leaves_base_unchanged() -> None:
    """Building a manifest never changes the configured base Deployment."""
    base = {"spec": {"template": {"spec": {"containers": [{"env": []}]}}}}
    build(base)

    assert base == {"spec": {"template": {"spec": {"containers": [{"env": []}]}}}}


def test_patch_body_has_no_selector() -> None:
    """The patch leaves the immutable selector out."""
    manifest = build()
    body = manifests.patch_body(manifest, {"metadata": {"labels": LABELS}})

    assert "selector" not in body["spec"]
    assert manifest["spec"]["selector"] == {"matchLabels": LABELS}


def test_patch_body_nulls_stale_labels() -> None:
    """Labels of the live object that the manifest lacks are removed."""
    live = {
        "metadata": {"labels": {**LABELS, "legacy": "yes"}},
        "spec": {"template": {"metadata": {"labels": {**LABELS, "app": "old"}}}},
    }
    body = manifests.patch_body(build(), live)

    assert body["metadata"]["labels"]["legacy"] is None
    assert body["spec"]["template"]["metadata"]["labels"]["app"] is None
    assert (
        (body["spec"]["template"]["metadata"]["labels"]["opencti-connector-id"])
        == "connector-1"
    )


def test_valid_base_deployment_accepted() -> None:
    """A base Deployment in API field names passes the schema check."""
    options = manifests.ManifestOptions(
        base={
            "spec": {
                "template": {
                    "spec": {
                        "containers": [{"resources": {"limits": {"memory": "1Gi"}}}],
                        "tolerations": [{"key": "dedicated", "operator": "Exists"}],
                    }
                }
            }
        }
    )

    manifests.check_base_deployment(
        options, "opencti.daemon.kubernetes.base_deployment"
    )


@pytest.mark.parametrize(
    ("base", "expected"),
    [
        (
            {"spec": {"template": {"spec": {"node_selector": {"a": "b"}}}}},
            "spec.template.spec.node_selector",
        ),
        (
            {
                "spec": {
                    "template": {
                        "spec": {"containers": [{"ports": [{"containerPort": "x"}]}]}
                    }
                }
            },
            "spec.template.spec.containers.0.ports.0.containerPort",
        ),
        ({"spec": {"paused": "maybe"}}, "spec.paused"),
    ],
)
def test_invalid_base_deployment_rejected(base: dict[str, Any], expected: str) -> None:
    """A base Deployment that breaks the schema stops start-up with the field."""
    options = manifests.ManifestOptions(base=base)

    with pytest.raises(ConfigurationError) as caught:
        manifests.check_base_deployment(
            options, "opencti.daemon.kubernetes.base_deployment"
        )

    assert "opencti.daemon.kubernetes.base_deployment" in str(caught.value)
    assert expected in str(caught.value)


def test_ca_bundle_mounted_read_only() -> None:
    """A proxy CA bundle adds a read-only Secret volume at the bundle path."""
    spec = dataclasses.replace(make_spec(), ca_bundle="-----BEGIN CERTIFICATE-----")

    pod = pod_spec(build(spec=spec))

    (volume,) = pod["volumes"]
    assert "ipinfo-0123456789-proxy-ca" == volume["secret"]["secretName"]
    assert 0o444 == volume["secret"]["defaultMode"]
    (mount,) = pod["containers"][0]["volumeMounts"]
    assert CA_BUNDLE_PATH == mount["mountPath"]
    assert "ca.crt" == mount["subPath"]
    assert mount["readOnly"] is True


def test_no_ca_bundle_no_volume() -> None:
    """Without a proxy CA bundle the pod has no extra volume."""
    pod = pod_spec(build())

    assert "volumes" not in pod
    assert "volumeMounts" not in pod["containers"][0]
