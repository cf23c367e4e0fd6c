"""Decryption and contract hashes against vectors made with the platform's algorithm.

The vectors were generated with Node.js crypto; they are read from the
reference folder and the tests skip without it.
"""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from xtm_composer import contract, crypto
from xtm_composer.sandbox import encryption


def read_vectors(reference_dir: Path, name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(
        (reference_dir / "vectors" / name).read_text(encoding="utf-8")
    )
    return data


@pytest.fixture(scope="module")
def encrypted_values(reference_dir: Path) -> dict[str, Any]:
    return read_vectors(reference_dir, "encrypted-values.json")


@pytest.fixture(scope="module")
def private_keys(encrypted_values: dict[str, Any]) -> dict[str, rsa.RSAPrivateKey]:
    keys: dict[str, rsa.RSAPrivateKey] = {}
    for name, pem in encrypted_values["keys"].items():
        if "PRIVATE" not in pem:
            continue
        key = serialization.load_pem_private_key(pem.encode(), password=None)
        assert isinstance(key, rsa.RSAPrivateKey)
        keys[name] = key
    return keys


@pytest.fixture(scope="module")
def hash_cases(reference_dir: Path) -> list[dict[str, Any]]:
    vectors = read_vectors(reference_dir, "contract-hash.json")
    cases: list[dict[str, Any]] = vectors["cases"]
    return cases


def cases_of(encrypted_values: dict[str, Any], errors: bool) -> list[dict[str, Any]]:
    return [
        case for case in encrypted_values["cases"] if case["expect_error"] is errors
    ]


def test_vectors_cover_both_versions(encrypted_values: dict[str, Any]) -> None:
    """The file contains valid values of both versions, and error cases."""
    valid = cases_of(encrypted_values, errors=False)

    assert {1, 2} == {case["version"] for case in valid}
    assert len(valid) == 12
    assert len(cases_of(encrypted_values, errors=True)) == 6


def test_valid_vectors_decrypt_exactly(
    encrypted_values: dict[str, Any], private_keys: dict[str, rsa.RSAPrivateKey]
) -> None:
    """Every valid value decrypts to its expected text, byte for byte."""
    for case in cases_of(encrypted_values, errors=False):
        key = private_keys[case["key"]]

        expected = case["expected"].encode("utf-8")

        plaintext = crypto.decrypt_value(key, case["ciphertext_b64"])

        assert expected == plaintext.encode("utf-8"), case["name"]


def test_valid_vectors_decrypt_with_pkcs1_key(
    encrypted_values: dict[str, Any], private_keys: dict[str, rsa.RSAPrivateKey]
) -> None:
    """The PKCS#1 copy of the main key decrypts the same values."""
    key = private_keys["main_pkcs1"]
    for case in cases_of(encrypted_values, errors=False):
        assert case["expected"] == crypto.decrypt_value(key, case["ciphertext_b64"])


def test_error_vectors_raise(
    encrypted_values: dict[str, Any], private_keys: dict[str, rsa.RSAPrivateKey]
) -> None:
    """Every error case raises DecryptionError, never returns a value."""
    for case in cases_of(encrypted_values, errors=True):
        key = private_keys[case["key"]]

        with pytest.raises(crypto.DecryptionError):
            crypto.decrypt_value(key, case["ciphertext_b64"])


def test_wrong_key_vectors_decrypt_with_right_key(
    encrypted_values: dict[str, Any], private_keys: dict[str, rsa.RSAPrivateKey]
) -> None:
    """Wrong-key cases are valid values for the key they were made for."""
    wrong_key_cases = [
        case for case in encrypted_values["cases"] if "decrypts_with" in case
    ]
    assert len(wrong_key_cases) == 2
    for case in wrong_key_cases:
        key = private_keys[case["decrypts_with"]]

        plaintext = crypto.decrypt_value(key, case["ciphertext_b64"])

        assert case["plaintext_with_right_key"] == plaintext


def test_small_key_vector_has_256_byte_block(
    encrypted_values: dict[str, Any], private_keys: dict[str, rsa.RSAPrivateKey]
) -> None:
    """The 2048-bit case fails only because its RSA block is 256 bytes long."""
    case = next(c for c in encrypted_values["cases"] if "plaintext_if_block_256" in c)
    data = base64.b64decode(case["ciphertext_b64"])
    oaep = padding.OAEP(
        mgf=padding.MGF1(algorithm=hashes.SHA256()),
        algorithm=hashes.SHA256(),
        label=None,
    )

    key_and_nonce = private_keys[case["key"]].decrypt(data[1:257], oaep)
    plaintext = AESGCM(key_and_nonce[:32]).decrypt(key_and_nonce[32:], data[257:], None)

    assert case["plaintext_if_block_256"] == plaintext.decode("utf-8")


def test_public_key_matches_private_key(
    encrypted_values: dict[str, Any], private_keys: dict[str, rsa.RSAPrivateKey]
) -> None:
    """The PKCS#1 public key is the one xtm-composer would register."""
    registered = crypto.public_key_pem(private_keys["main_pkcs8"])

    assert encrypted_values["keys"]["main_public_pkcs1"].strip() == registered.strip()


@pytest.mark.parametrize("version", encryption.VERSIONS)
def test_sandbox_encryption_for_vector_key(
    encrypted_values: dict[str, Any],
    private_keys: dict[str, rsa.RSAPrivateKey],
    version: int,
) -> None:
    """Values the sandbox encrypts for the vectors' public key decrypt with its key."""
    public_key = encryption.load_public_key(
        encrypted_values["keys"]["main_public_pkcs1"]
    )
    for case in cases_of(encrypted_values, errors=False):
        ciphertext = encryption.encrypt_value(public_key, case["expected"], version)

        assert case["expected"] == crypto.decrypt_value(
            private_keys["main_pkcs8"], ciphertext
        )


def test_contract_hash_vectors(hash_cases: list[dict[str, Any]]) -> None:
    """contract_hash gives the expected 8 characters for every case."""
    assert len(hash_cases) == 4
    for case in hash_cases:
        given = case["input"]
        image = f"{given['container_image']}:{given['container_version']}"
        pairs = [(item["key"], item["value"]) for item in given["config"]]

        digest = contract.contract_hash(
            image, pairs, given.get("connector_state_timestamp")
        )

        assert case["image"] == image, case["name"]
        assert case["expected_hash"] == digest, case["name"]


def test_contract_hash_json_text(hash_cases: list[dict[str, Any]]) -> None:
    """The JSON text hashed is the one JSON.stringify gives, and its SHA-256 matches."""
    for case in hash_cases:
        given = case["input"]
        document: dict[str, Any] = {"image": case["image"], "subHash": case["sub_hash"]}
        if "connector_state_timestamp" in given:
            document["state"] = given["connector_state_timestamp"]

        text = json.dumps(document, separators=(",", ":"), ensure_ascii=False)

        assert case["json"] == text, case["name"]
        assert case["sha256"] == hashlib.sha256(text.encode("utf-8")).hexdigest()


def test_contract_hash_depends_on_state(hash_cases: list[dict[str, Any]]) -> None:
    """Dropping the state changes the hash, as with_state and without_state show."""
    hashes_by_name = {case["name"]: case["expected_hash"] for case in hash_cases}

    assert hashes_by_name["with_state"] != hashes_by_name["without_state"]
