"""Encryption of sensitive contract values, the inverse of `xtm_composer.crypto`.

The platform encrypts each `format: password` value for the public key that the
connector manager registered. A random AES-256 key and 12-byte GCM nonce seal the
UTF-8 value with AES-256-GCM (no associated data), and RSA wraps key and nonce.
The base64 text encodes:

    version (1 byte) | RSA block | AES-256-GCM ciphertext | GCM tag (16)

Version 1 wraps with RSA PKCS#1 v1.5 padding, version 2 with RSA-OAEP (SHA-256,
MGF1-SHA-256, no label). The RSA block is as long as the key modulus: 512 bytes
for the 4096-bit keys that xtm-composer requires.
"""

from __future__ import annotations

import base64
import os

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from xtm_composer import crypto

VERSION_PKCS1V15 = 1
VERSION_OAEP_SHA256 = 2
VERSIONS = (VERSION_PKCS1V15, VERSION_OAEP_SHA256)
DEFAULT_VERSION = VERSION_OAEP_SHA256


class PublicKeyError(ValueError):
    """A registered public key is not an RSA public key in PEM form."""


def load_public_key(public_key_pem: str) -> rsa.RSAPublicKey:
    """Parse a PKCS#1 (`RSA PUBLIC KEY`) or SubjectPublicKeyInfo PEM key."""
    try:
        key = serialization.load_pem_public_key(public_key_pem.encode("utf-8"))
    except (ValueError, TypeError, UnicodeEncodeError):
        raise PublicKeyError(
            "public_key is not a PEM public key (expected "
            "-----BEGIN RSA PUBLIC KEY----- or -----BEGIN PUBLIC KEY-----)"
        ) from None
    if not isinstance(key, rsa.RSAPublicKey):
        raise PublicKeyError("public_key is not an RSA key")
    return key


def encrypt_value(
    public_key: rsa.RSAPublicKey, value: str, version: int = DEFAULT_VERSION
) -> str:
    """Encrypt one contract value the way the platform does, as base64 text."""
    aes_key = os.urandom(crypto.AES_KEY_BYTES)
    nonce = os.urandom(crypto.GCM_NONCE_BYTES)
    rsa_block = public_key.encrypt(aes_key + nonce, _padding(version))
    sealed = AESGCM(aes_key).encrypt(nonce, value.encode("utf-8"), None)
    return base64.b64encode(bytes([version]) + rsa_block + sealed).decode("ascii")


def _padding(version: int) -> padding.AsymmetricPadding:
    if version == VERSION_PKCS1V15:
        return padding.PKCS1v15()
    if version == VERSION_OAEP_SHA256:
        return padding.OAEP(
            mgf=padding.MGF1(algorithm=hashes.SHA256()),
            algorithm=hashes.SHA256(),
            label=None,
        )
    raise ValueError(f"unknown encryption version {version} (known: 1 and 2)")
