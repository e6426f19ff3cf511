"""Ed25519 signing of deployment manifests with the builder's own key.

The private key is the person's own (governance.common.personal_key). A signature alone proves only that the
holder of some key signed the folder: a deployment is trusted when its key is in a trust store
(`--trusted-keys FILE`, `SAEGOV_TRUSTED_KEYS`) or registered, unrevoked, in the registry
(`saegov key register`), see governance.enforcement.deployment.
"""
from __future__ import annotations

from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from governance.common.personal_key import (  # noqa: F401  (the signing API, in one place)
    KEY_NAME,
    SigningError,
    key_path,
    load_or_create_key,
    public_hex,
)
from governance.common.personal_key import verify_hex as verify  # noqa: F401


def sign(key: Ed25519PrivateKey, message: bytes) -> str:
    return key.sign(message).hex()


def is_public_key(value: str) -> bool:
    return len(value) == 64 and all(c in "0123456789abcdef" for c in value)


def registered_own_key(store: Any, owner: str | None = None) -> Ed25519PrivateKey:
    """The caller's own key, which the registry must trust (registered to `owner` when given):
    anything signed by a key the registry does not vouch for would verify nowhere."""
    key = load_or_create_key()
    public = public_hex(key)
    record = store.trusted_signing_keys().get(public)
    if record is None or (owner is not None and record.actor != owner):
        raise SigningError(f"your signing key {public[:16]}... is not registered{f' to {owner}' if owner else ''}: "
                           f"an admin runs `saegov key register {owner or 'NAME'} --public-key {public}` "
                           "(`saegov key show` prints it)")
    return key
