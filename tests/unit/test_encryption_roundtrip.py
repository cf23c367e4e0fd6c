"""Values encrypted by the sandbox decrypt with the agent's `crypto.decrypt_value`."""

from __future__ import annotations

import base64
import random
import string

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from xtm_composer import crypto
from xtm_composer.sandbox import encryption

LONG_VALUE = "".join(
    random.Random(7).choices(string.ascii_letters + string.digits + "-_", k=5000)
)
VALUES = {
    "empty": "",
    "token": "simple-token",
    "unicode": "Schlüssel — 鍵 🔑 ñ",
    "long": LONG_VALUE,
    "newlines": "line one\nline two=\r\n\t==",
}


@pytest.fixture(scope="module")
def manager_key() -> rsa.RSAPrivateKey:
    """A 4096-bit key, generated once for the module (about a second)."""
    return rsa.generate_private_key(public_exponent=65537, key_size=4096)


@pytest.fixture(scope="module")
def other_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=4096)


def registered_key(key: rsa.RSAPrivateKey) -> rsa.RSAPublicKey:
    """Load the public key from the PEM that xtm-composer registers."""
    return encryption.load_public_key(crypto.public_key_pem(key))


@pytest.mark.parametrize("version", encryption.VERSIONS)
@pytest.mark.parametrize("name", sorted(VALUES))
def test_roundtrip(manager_key: rsa.RSAPrivateKey, version: int, name: str) -> None:
    """Encrypt, then decrypt with the agent's code: the value comes back."""
    value = VALUES[name]

    ciphertext = encryption.encrypt_value(registered_key(manager_key), value, version)

    assert value == crypto.decrypt_value(manager_key, ciphertext)


@pytest.mark.parametrize("version", encryption.VERSIONS)
def test_layout(manager_key: rsa.RSAPrivateKey, version: int) -> None:
    """Version byte, 512-byte RSA block, ciphertext as long as the UTF-8 value, tag."""
    value = VALUES["unicode"]

    data = base64.b64decode(
        encryption.encrypt_value(registered_key(manager_key), value, version)
    )

    assert version == data[0]
    assert 1 + 512 + len(value.encode("utf-8")) + 16 == len(data)


def test_default_version_is_oaep(manager_key: rsa.RSAPrivateKey) -> None:
    """Without a version, values use RSA-OAEP (version 2)."""
    ciphertext = encryption.encrypt_value(registered_key(manager_key), "value")

    assert base64.b64decode(ciphertext)[0] == 2


def test_fresh_key_per_value(manager_key: rsa.RSAPrivateKey) -> None:
    """The same value encrypts differently each time (random AES key and nonce)."""
    public_key = registered_key(manager_key)

    first = encryption.encrypt_value(public_key, "same value")
    second = encryption.encrypt_value(public_key, "same value")

    assert first != second


@pytest.mark.parametrize("version", encryption.VERSIONS)
def test_other_key_fails(
    manager_key: rsa.RSAPrivateKey, other_key: rsa.RSAPrivateKey, version: int
) -> None:
    """A value encrypted for another manager does not decrypt."""
    ciphertext = encryption.encrypt_value(registered_key(other_key), "secret", version)

    with pytest.raises(crypto.DecryptionError):
        crypto.decrypt_value(manager_key, ciphertext)


def test_altered_tag_fails(manager_key: rsa.RSAPrivateKey) -> None:
    """Flipping a bit of the GCM tag makes decryption fail."""
    data = bytearray(
        base64.b64decode(encryption.encrypt_value(registered_key(manager_key), "x"))
    )
    data[-1] ^= 0x01

    with pytest.raises(crypto.DecryptionError):
        crypto.decrypt_value(manager_key, base64.b64encode(data).decode())


def test_spki_public_key_accepted(manager_key: rsa.RSAPrivateKey) -> None:
    """A SubjectPublicKeyInfo PEM works as well as the PKCS#1 form."""
    pem = (
        manager_key.public_key()
        .public_bytes(
            serialization.Encoding.PEM,
            serialization.PublicFormat.SubjectPublicKeyInfo,
        )
        .decode()
    )

    ciphertext = encryption.encrypt_value(encryption.load_public_key(pem), "value")

    assert crypto.decrypt_value(manager_key, ciphertext) == "value"


@pytest.mark.parametrize(
    "pem",
    [
        "",
        "not a key",
        "-----BEGIN RSA PUBLIC KEY-----\nAAAA\n-----END RSA PUBLIC KEY-----",
    ],
)
def test_invalid_public_key_rejected(pem: str) -> None:
    """Text that is no PEM public key raises PublicKeyError."""
    with pytest.raises(encryption.PublicKeyError):
        encryption.load_public_key(pem)


def test_non_rsa_public_key_rejected() -> None:
    """An EC public key raises PublicKeyError naming RSA."""
    pem = (
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(
            serialization.Encoding.PEM,
            serialization.PublicFormat.SubjectPublicKeyInfo,
        )
        .decode()
    )

    with pytest.raises(encryption.PublicKeyError, match="RSA"):
        encryption.load_public_key(pem)


def test_unknown_version_rejected(manager_key: rsa.RSAPrivateKey) -> None:
    """Only versions 1 and 2 exist."""
    with pytest.raises(ValueError, match="version 3"):
        encryption.encrypt_value(registered_key(manager_key), "value", 3)
