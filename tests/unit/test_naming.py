"""Workload names."""

from __future__ import annotations

import re

import pytest

from xtm_composer.orchestrators import naming

RFC1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
DOCKER_NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]+$")


@pytest.mark.parametrize(
    "name",
    [
        "IPInfo",
        "My connector (prod) #2",
        "Connecteur données — 東京 🚀",
        "東京",
        "---",
        "",
        "x" * 300,
        "a" * 52 + "-" + "b" * 20,
        "UPPER_case.name",
    ],
)
def test_names_valid_everywhere(name: str) -> None:
    """Every connector name gives a valid Docker name and RFC 1123 label."""
    result = naming.workload_name(name, "4f1c2b9e-8a7d-4c3e-9b2a-1d0e5f6a7b8c")

    assert len(result) <= 63
    assert RFC1123_LABEL.match(result)
    assert DOCKER_NAME.match(result)


def test_same_name_different_ids() -> None:
    """Two connectors with the same name get different workload names."""
    first = naming.workload_name("IPInfo", "id-1")
    second = naming.workload_name("IPInfo", "id-2")

    assert first != second


def test_name_is_stable() -> None:
    """The same connector always gets the same name."""
    assert naming.workload_name("IPInfo", "id-1") == naming.workload_name(
        "IPInfo", "id-1"
    )


def test_name_readable() -> None:
    """The connector's name stays readable in the workload name."""
    assert naming.workload_name("Élan Vital", "id-1").startswith("elan-vital-")
