"""Ed25519 signing of deployment manifests with a workspace key.

The key lives in $SAEGOV_HOME/keys/deploy_ed25519 (created 0600 on first use). A signature
alone proves the folder was not changed since it was signed by the holder of that key; who
that is comes from the registry (the manifest's sha256 is recorded with the deployment) or
from a trusted public key the verifier names.
"""
from __future__ import annotations

import os
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from governance.common.errors import GovernanceError
from governance.common.workspace import workspace_home

KEY_NAME = "deploy_ed25519"


class SigningError(GovernanceError):
    """The workspace's signing key cannot be read."""


def key_path() -> Path:
    return workspace_home() / "keys" / KEY_NAME


def load_or_create_key(path: Path | None = None) -> Ed25519PrivateKey:
    path = path or key_path()
    if path.is_file():
        try:
            key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        except (ValueError, TypeError):
            key = None
        if not isinstance(key, Ed25519PrivateKey):
            raise SigningError(f"{path} is not an Ed25519 private key")
        return key
    key = Ed25519PrivateKey.generate()
    path.parent.mkdir(parents=True, exist_ok=True)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    fd = os.open(str(path), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
    return key


def public_hex(key: Ed25519PrivateKey) -> str:
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw).hex()


def sign(key: Ed25519PrivateKey, message: bytes) -> str:
    return key.sign(message).hex()


def verify(public_key_hex: str, message: bytes, signature_hex: str) -> bool:
    try:
        Ed25519PublicKey.from_public_bytes(bytes.fromhex(public_key_hex)).verify(bytes.fromhex(signature_hex), message)
    except (InvalidSignature, ValueError):
        return False
    return True
