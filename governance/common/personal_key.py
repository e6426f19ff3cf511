"""The person's own Ed25519 key: one per config folder (`SAEGOV_CONFIG_DIR`, default
`~/.config/saegov`), `keys/deploy_ed25519`, created 0600 on first use, never in the shared
workspace; a key file others can read, or a symbolic link, is refused. It signs the person's
deployments (governance.enforcement.signing) and their actions in the registry's audit log
(registry.signatures)."""
from __future__ import annotations

import os
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from governance.common.errors import GovernanceError
from governance.common.workspace import config_dir

KEY_NAME = "deploy_ed25519"


class SigningError(GovernanceError):
    """The person's signing key cannot be read or is not safe to use."""


def key_path() -> Path:
    return config_dir() / "keys" / KEY_NAME


def load_or_create_key(path: Path | None = None) -> Ed25519PrivateKey:
    path = path or key_path()
    if path.is_symlink():
        raise SigningError(f"{path} is a symbolic link; the signing key must be a plain file")
    if path.is_file():
        if os.name == "posix" and path.stat().st_mode & 0o077:
            raise SigningError(f"{path} can be read by others (mode {path.stat().st_mode & 0o777:o}); "
                               f"run `chmod 600 {path}`")
        try:
            key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        except (ValueError, TypeError):
            key = None
        if not isinstance(key, Ed25519PrivateKey):
            raise SigningError(f"{path} is not an Ed25519 private key")
        return key
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(str(path), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(pem)
    except OSError as exc:
        raise SigningError(f"cannot create the signing key {path}: {exc.strerror or exc}") from None
    return key


def public_hex(key: Ed25519PrivateKey) -> str:
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw).hex()


def verify_hex(public_key_hex: str, message: bytes, signature_hex: str) -> bool:
    """Whether `signature_hex` is the Ed25519 signature of `message` by `public_key_hex`
    (malformed hex or keys are simply not valid)."""
    try:
        Ed25519PublicKey.from_public_bytes(bytes.fromhex(public_key_hex)).verify(bytes.fromhex(signature_hex), message)
    except (InvalidSignature, ValueError, TypeError):
        return False
    return True


def load_key_if_present() -> Ed25519PrivateKey | None:
    """The key, when the person made one (`saegov key show`); never creates it."""
    path = key_path()
    return load_or_create_key(path) if path.is_file() or path.is_symlink() else None
