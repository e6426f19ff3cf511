"""A trust store for verifying deployments offline (`saegov.trusted-keys/v1`): the public
Ed25519 keys whose signatures a verifier accepts. `saegov key export` writes it from the
registry's registered, unrevoked deployment keys; `--trusted-keys FILE` or
`SAEGOV_TRUSTED_KEYS` names it."""
from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from governance.common.jsonio import pretty_json
from governance.formats.validation import read_json_model

TRUSTED_KEYS_FORMAT = "saegov.trusted-keys/v1"


class TrustedKey(BaseModel):
    model_config = ConfigDict(extra="forbid")

    public_key: str = Field(pattern=r"^[0-9a-f]{64}$")
    owner: str | None = None
    purpose: Literal["deployment"] = "deployment"


class TrustedKeys(BaseModel):
    model_config = ConfigDict(extra="forbid")

    format: Literal["saegov.trusted-keys/v1"] = TRUSTED_KEYS_FORMAT
    keys: list[TrustedKey] = Field(default_factory=list)

    def public_keys(self) -> set[str]:
        return {k.public_key for k in self.keys}


def read_trusted_keys(path: Path) -> TrustedKeys:
    return read_json_model(TrustedKeys, Path(path))


def write_trusted_keys(path: Path, keys: TrustedKeys) -> None:
    Path(path).write_text(pretty_json(keys.model_dump(mode="json")))
