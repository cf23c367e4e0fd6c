"""Loading the manager key."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from xtm_composer import crypto


@pytest.fixture(scope="module")
def key_4096() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=4096)


def pem(key: rsa.RSAPrivateKey, fmt: serialization.PrivateFormat) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM, fmt, serialization.NoEncryption()
    ).decode()


@pytest.mark.parametrize(
    "fmt",
    [serialization.PrivateFormat.PKCS8, serialization.PrivateFormat.TraditionalOpenSSL],
)
def test_pkcs8_and_pkcs1_load(
    key_4096: rsa.RSAPrivateKey, fmt: serialization.PrivateFormat
) -> None:
    """Both PEM encodings load to the same key."""
    loaded = crypto.load_manager_key(pem(key_4096, fmt), None)

    assert key_4096.private_numbers() == loaded.private_numbers()


def test_file_wins_over_inline(tmp_path: Path, key_4096: rsa.RSAPrivateKey) -> None:
    """The key file is used when both the file and the inline key are set."""
    path = tmp_path / "key.pem"
    path.write_text(pem(key_4096, serialization.PrivateFormat.PKCS8))

    loaded = crypto.load_manager_key("not a key", path)

    assert key_4096.private_numbers() == loaded.private_numbers()


def test_small_key_rejected_with_howto() -> None:
    """A 2048-bit key is rejected with a command that generates a right one."""
    small = rsa.generate_private_key(public_exponent=65537, key_size=2048)

    with pytest.raises(crypto.ManagerKeyError) as caught:
        crypto.load_manager_key(pem(small, serialization.PrivateFormat.PKCS8), None)

    assert "2048-bit" in str(caught.value)
    assert "rsa_keygen_bits:4096" in str(caught.value)


def test_missing_key_rejected() -> None:
    """No key at all names both settings."""
    with pytest.raises(crypto.ManagerKeyError, match="credentials_key_filepath"):
        crypto.load_manager_key(None, None)


def test_unreadable_file_rejected(tmp_path: Path) -> None:
    """A key file that cannot be read is named in the error."""
    with pytest.raises(crypto.ManagerKeyError, match=r"absent\.pem"):
        crypto.load_manager_key(None, tmp_path / "absent.pem")


def test_garbage_rejected() -> None:
    """Text that is not a PEM key is rejected without a traceback-style message."""
    with pytest.raises(crypto.ManagerKeyError, match="not an unencrypted"):
        crypto.load_manager_key("-----BEGIN PRIVATE KEY-----\nxx\n", None)


def test_public_key_is_pkcs1(key_4096: rsa.RSAPrivateKey) -> None:
    """The registered public key is PKCS#1 PEM."""
    text = crypto.public_key_pem(key_4096)

    assert text.startswith("-----BEGIN RSA PUBLIC KEY-----")


def test_short_value_rejected(key_4096: rsa.RSAPrivateKey) -> None:
    """A value shorter than the fixed layout is rejected before RSA."""
    with pytest.raises(crypto.DecryptionError, match="shorter"):
        crypto.decrypt_value(key_4096, "AQID")


def test_invalid_base64_rejected(key_4096: rsa.RSAPrivateKey) -> None:
    """A value that is not base64 is rejected."""
    with pytest.raises(crypto.DecryptionError, match="base64"):
        crypto.decrypt_value(key_4096, "not base64 !!")
