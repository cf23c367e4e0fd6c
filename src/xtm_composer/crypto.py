"""The manager key and the decryption of encrypted contract values.

The platform encrypts each sensitive configuration value for the manager's public
key. After base64 decoding, a value is laid out as:

    version (1 byte) | RSA block (512 bytes) | AES-256-GCM ciphertext | GCM tag (16)

Version 1 wraps the key with RSA PKCS#1 v1.5 padding, version 2 with RSA-OAEP
(SHA-256, MGF1-SHA-256, no label). The RSA block contains the 32-byte AES key
followed by the 12-byte GCM nonce. The block size fixes the key size at 4096 bits.
"""

from __future__ import annotations

import base64
import binascii
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

REQUIRED_KEY_BITS = 4096
RSA_BLOCK_BYTES = REQUIRED_KEY_BITS // 8
AES_KEY_BYTES = 32
GCM_NONCE_BYTES = 12
GCM_TAG_BYTES = 16
MIN_VALUE_BYTES = 1 + RSA_BLOCK_BYTES + GCM_TAG_BYTES
KEY_HELP = (
    "generate one with: openssl genpkey -algorithm RSA "
    "-pkeyopt rsa_keygen_bits:4096 -out manager-key.pem"
)


class ManagerKeyError(Exception):
    """The manager key is missing, unreadable or unfit for the platform."""


class DecryptionError(Exception):
    """An encrypted value cannot be decrypted. The message never contains the value."""


def load_manager_key(key_pem: str | None, key_path: Path | None) -> rsa.RSAPrivateKey:
    """Load the 4096-bit RSA key from a PEM file or inline PEM (the file wins)."""
    if key_path is not None:
        try:
            key_pem = key_path.read_text(encoding="utf-8")
        except OSError as error:
            raise ManagerKeyError(
                f"cannot read manager.credentials_key_filepath {key_path}: "
                f"{error.strerror}"
            ) from None
        source = f"manager.credentials_key_filepath ({key_path})"
    else:
        source = "manager.credentials_key"
    if not key_pem:
        raise ManagerKeyError(
            "manager.credentials_key or manager.credentials_key_filepath must be "
            f"set to a 4096-bit RSA private key in PEM form; {KEY_HELP}"
        )
    return parse_manager_key(key_pem, source)


def parse_manager_key(key_pem: str, source: str) -> rsa.RSAPrivateKey:
    """Parse a PKCS#8 or PKCS#1 PEM private key and check that it fits."""
    try:
        key = serialization.load_pem_private_key(key_pem.encode(), password=None)
    except (ValueError, TypeError) as error:
        reason = "it is encrypted" if isinstance(error, TypeError) else "not a PEM key"
        raise ManagerKeyError(
            f"{source} is not an unencrypted PKCS#8 or PKCS#1 PEM private key "
            f"({reason}); {KEY_HELP}"
        ) from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ManagerKeyError(f"{source} is not an RSA key; {KEY_HELP}")
    if key.key_size != REQUIRED_KEY_BITS:
        raise ManagerKeyError(
            f"{source} is a {key.key_size}-bit RSA key, but the platform encrypts "
            f"values for {REQUIRED_KEY_BITS}-bit keys; {KEY_HELP}"
        )
    return key


def public_key_pem(key: rsa.RSAPrivateKey) -> str:
    """Return the public key as PKCS#1 PEM, the form the platform registers."""
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.PKCS1)
        .decode()
    )


def decrypt_value(key: rsa.RSAPrivateKey, encoded: str) -> str:
    """Decrypt one base64 value of a connector contract."""
    try:
        data = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise DecryptionError("the value is not valid base64") from None
    if len(data) < MIN_VALUE_BYTES:
        raise DecryptionError(
            f"the value is {len(data)} bytes long after base64 decoding, "
            f"shorter than the {MIN_VALUE_BYTES} bytes of an encrypted value"
        )

    version, rsa_block, sealed = data[0], data[1 : 1 + RSA_BLOCK_BYTES], data[513:]
    key_and_nonce = unwrap_key(key, version, rsa_block)
    if len(key_and_nonce) != AES_KEY_BYTES + GCM_NONCE_BYTES:
        raise DecryptionError(
            f"the RSA block contains {len(key_and_nonce)} bytes instead of "
            f"{AES_KEY_BYTES + GCM_NONCE_BYTES} (AES key and nonce)"
        )

    aes_key, nonce = key_and_nonce[:AES_KEY_BYTES], key_and_nonce[AES_KEY_BYTES:]
    try:
        plaintext = AESGCM(aes_key).decrypt(nonce, sealed, None)
    except InvalidTag:
        raise DecryptionError(
            "the AES-GCM authentication tag does not match (value altered or cut)"
        ) from None
    try:
        return plaintext.decode("utf-8")
    except UnicodeDecodeError:
        raise DecryptionError("the decrypted value is not UTF-8 text") from None


def unwrap_key(key: rsa.RSAPrivateKey, version: int, rsa_block: bytes) -> bytes:
    """Decrypt the RSA block with the padding that `version` names."""
    if version == 1:
        scheme: padding.AsymmetricPadding = padding.PKCS1v15()
    elif version == 2:
        scheme = padding.OAEP(
            mgf=padding.MGF1(algorithm=hashes.SHA256()),
            algorithm=hashes.SHA256(),
            label=None,
        )
    else:
        raise DecryptionError(
            f"unknown encryption version {version} (known versions: 1 and 2)"
        )
    try:
        return key.decrypt(rsa_block, scheme)
    except ValueError:
        raise DecryptionError(
            "RSA decryption failed: the value was not encrypted for this manager's key"
        ) from None
