"""Registry prefix resolution and credential scoping."""

from __future__ import annotations

import base64
import json

import pytest
from pydantic import SecretStr

from xtm_composer import registry
from xtm_composer.settings import RegistrySettings


def configured(server: str, with_credentials: bool = True) -> RegistrySettings:
    if not with_credentials:
        return RegistrySettings(server=server)
    return RegistrySettings(
        server=server, username="puller", password=SecretStr("s3cret-pw")
    )


PRIVATE = "registry.example.com"

# (configured server, image, expected reference, expected host, credentials sent)
CASES = [
    # Images that name no registry get the prefix.
    (
        PRIVATE,
        "opencti/connector-example:1.0.0",
        "registry.example.com/opencti/connector-example:1.0.0",
        PRIVATE,
        True,
    ),
    (
        PRIVATE,
        "opencti/connector-example",
        "registry.example.com/opencti/connector-example",
        PRIVATE,
        True,
    ),
    (PRIVATE, "ubuntu", "registry.example.com/ubuntu", PRIVATE, True),
    (PRIVATE, "ubuntu:22.04", "registry.example.com/ubuntu:22.04", PRIVATE, True),
    (
        PRIVATE,
        "library/ubuntu:22.04",
        "registry.example.com/library/ubuntu:22.04",
        PRIVATE,
        True,
    ),
    (PRIVATE, "a/b/c/d:1", "registry.example.com/a/b/c/d:1", PRIVATE, True),
    (
        PRIVATE,
        "opencti/c@sha256:" + "a" * 64,
        "registry.example.com/opencti/c@sha256:" + "a" * 64,
        PRIVATE,
        True,
    ),
    (
        PRIVATE,
        "opencti/c:1.0@sha256:" + "b" * 64,
        "registry.example.com/opencti/c:1.0@sha256:" + "b" * 64,
        PRIVATE,
        True,
    ),
    (
        PRIVATE,
        "my-org_x/conn.ector:v1",
        "registry.example.com/my-org_x/conn.ector:v1",
        PRIVATE,
        True,
    ),
    # Images that name a registry are left alone.
    (PRIVATE, "ghcr.io/acme/c:2", "ghcr.io/acme/c:2", "ghcr.io", False),
    (PRIVATE, "localhost:5000/c", "localhost:5000/c", "localhost:5000", False),
    (PRIVATE, "localhost/c:1", "localhost/c:1", "localhost", False),
    (
        PRIVATE,
        "127.0.0.1:5000/opencti/c:1",
        "127.0.0.1:5000/opencti/c:1",
        "127.0.0.1:5000",
        False,
    ),
    (PRIVATE, "Registry/c:1", "Registry/c:1", "registry", False),
    (
        PRIVATE,
        "docker.io/library/ubuntu",
        "docker.io/library/ubuntu",
        "docker.io",
        False,
    ),
    (
        PRIVATE,
        "index.docker.io/library/ubuntu",
        "index.docker.io/library/ubuntu",
        "docker.io",
        False,
    ),
    (
        PRIVATE,
        "quay.io/org/img@sha256:" + "c" * 64,
        "quay.io/org/img@sha256:" + "c" * 64,
        "quay.io",
        False,
    ),
    # Never a double prefix.
    (
        PRIVATE,
        "registry.example.com/opencti/c:1",
        "registry.example.com/opencti/c:1",
        PRIVATE,
        True,
    ),
    (
        PRIVATE,
        "REGISTRY.EXAMPLE.COM/opencti/c:1",
        "REGISTRY.EXAMPLE.COM/opencti/c:1",
        PRIVATE,
        True,
    ),
    # A server with a port.
    (
        "127.0.0.1:5000",
        "opencti/c:1",
        "127.0.0.1:5000/opencti/c:1",
        "127.0.0.1:5000",
        True,
    ),
    (
        "127.0.0.1:5000",
        "127.0.0.1:5000/opencti/c:1",
        "127.0.0.1:5000/opencti/c:1",
        "127.0.0.1:5000",
        True,
    ),
    (
        "127.0.0.1:5000",
        "127.0.0.1:5001/opencti/c:1",
        "127.0.0.1:5001/opencti/c:1",
        "127.0.0.1:5001",
        False,
    ),
    # A server given as a URL, with a trailing slash or a path.
    (
        "https://registry.example.com/",
        "opencti/c:1",
        "registry.example.com/opencti/c:1",
        PRIVATE,
        True,
    ),
    (
        "http://localhost:5000",
        "opencti/c:1",
        "localhost:5000/opencti/c:1",
        "localhost:5000",
        True,
    ),
    (
        "registry.example.com/",
        "opencti/c:1",
        "registry.example.com/opencti/c:1",
        PRIVATE,
        True,
    ),
    (
        "registry.example.com/mirror",
        "opencti/c:1",
        "registry.example.com/mirror/opencti/c:1",
        PRIVATE,
        True,
    ),
    (
        "https://registry.example.com/mirror/team/",
        "c",
        "registry.example.com/mirror/team/c",
        PRIVATE,
        True,
    ),
    (
        "Registry.Example.com",
        "opencti/c:1",
        "registry.example.com/opencti/c:1",
        PRIVATE,
        True,
    ),
    # Docker Hub and its aliases are one registry.
    ("docker.io", "opencti/c:1", "docker.io/opencti/c:1", "docker.io", True),
    (
        "index.docker.io",
        "opencti/c:1",
        "index.docker.io/opencti/c:1",
        "docker.io",
        True,
    ),
    ("docker.io", "docker.io/opencti/c:1", "docker.io/opencti/c:1", "docker.io", True),
    (
        "https://index.docker.io/v1/",
        "docker.io/opencti/c:1",
        "docker.io/opencti/c:1",
        "docker.io",
        True,
    ),
    ("docker.io", "ghcr.io/opencti/c:1", "ghcr.io/opencti/c:1", "ghcr.io", False),
    # Docker Hub's key in client configs is a server, not a path to prepend.
    (
        "https://index.docker.io/v1/",
        "opencti/c:1",
        "index.docker.io/opencti/c:1",
        "docker.io",
        True,
    ),
]


@pytest.mark.parametrize(("server", "image", "reference", "host", "sent"), CASES)
def test_resolve_image_table(
    server: str, image: str, reference: str, host: str, sent: bool
) -> None:
    """Each reference resolves to the expected image, host and credential choice."""
    resolved = registry.resolve_image(image, configured(server))

    assert reference == resolved.reference
    assert host == resolved.registry_host
    assert sent is resolved.send_credentials


def test_table_is_large_enough() -> None:
    """The table covers at least thirty references."""
    assert len(CASES) >= 30


def test_no_registry_section_keeps_image() -> None:
    """Without a registry section, images are pulled as written, without credentials."""
    resolved = registry.resolve_image("opencti/connector-example:1.0.0", None)

    assert "opencti/connector-example:1.0.0" == resolved.reference
    assert "docker.io" == resolved.registry_host
    assert resolved.send_credentials is False


def test_server_without_credentials_prefixes_only() -> None:
    """A registry section without credentials still prefixes, but sends nothing."""
    resolved = registry.resolve_image(
        "opencti/c:1", configured(PRIVATE, with_credentials=False)
    )

    assert "registry.example.com/opencti/c:1" == resolved.reference
    assert resolved.send_credentials is False


@pytest.mark.parametrize(
    "image",
    [
        "",
        "   ",
        "opencti/c :1",
        "a\tb",
        ":",
        "opencti/c:",
        "/c",
        "opencti//c",
        "c@sha256:abc",
        "UPPER",
        "http://x/y",
        "localhost:99999/c",
        "opencti/c:" + "t" * 129,
    ],
)
def test_invalid_image_rejected(image: str) -> None:
    """References that break the Docker reference grammar are rejected."""
    with pytest.raises(registry.ImageReferenceError):
        registry.resolve_image(image, configured(PRIVATE))


def test_docker_config_json_layout() -> None:
    """The pull secret document has auths, username, password and base64 auth."""
    settings = RegistrySettings(
        server="https://registry.example.com/",
        username="puller",
        password=SecretStr("s3cret-pw"),
        email="ops@example.com",
    )
    document = json.loads(registry.docker_config_json(settings))

    entry = document["auths"]["registry.example.com"]
    assert "puller" == entry["username"]
    assert "s3cret-pw" == entry["password"]
    assert "ops@example.com" == entry["email"]
    assert "puller:s3cret-pw" == base64.b64decode(entry["auth"]).decode()


def test_docker_hub_auth_key() -> None:
    """Docker Hub credentials are stored under its conventional key."""
    settings = configured("docker.io")
    document = json.loads(registry.docker_config_json(settings))

    assert ["https://index.docker.io/v1/"] == list(document["auths"])


def test_docker_config_json_omits_missing_email() -> None:
    """No email key appears when none is configured."""
    document = json.loads(registry.docker_config_json(configured(PRIVATE)))

    assert "email" not in document["auths"][PRIVATE]


def test_registry_auth_header_decodes() -> None:
    """The X-Registry-Auth header is URL-safe base64 of the auth config."""
    header = registry.registry_auth_header(configured("127.0.0.1:5000"))
    decoded = json.loads(base64.urlsafe_b64decode(header))

    assert "127.0.0.1:5000" == decoded["serveraddress"]
    assert "puller" == decoded["username"]


def test_password_hidden_in_settings_repr() -> None:
    """The registry password never shows in the settings' repr or str."""
    settings = configured(PRIVATE)

    assert "s3cret-pw" not in repr(settings)
    assert "s3cret-pw" not in str(settings)


@pytest.mark.parametrize(
    "server",
    ["ftp://x", "host?x=1", "host:99999", "user:pw@registry.example.com", "a b", "/"],
)
def test_invalid_server_rejected(server: str) -> None:
    """Servers with other schemes, queries, bad ports or credentials are rejected."""
    with pytest.raises(registry.ImageReferenceError):
        registry.normalize_server(server)


@pytest.mark.parametrize(
    "server",
    [
        "https://user:s3cret-pw@registry.example.com",
        "ftp://user:s3cret-pw@registry.example.com",
        "https://user:s3cret-pw@registry.example.com/?x=1",
        "user:s3cret-pw@registry.example.com:99999",
    ],
)
def test_server_credentials_not_echoed(server: str) -> None:
    """A server written with credentials is rejected without repeating them."""
    with pytest.raises(registry.ImageReferenceError) as caught:
        registry.normalize_server(server)

    assert "s3cret-pw" not in str(caught.value)
