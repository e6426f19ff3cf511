"""An audit checkpoint file (`saegov audit checkpoint --out`): size, head hash, RFC 6962 root,
time, the digest of the signature rules' state, and (with `--sign`) an Ed25519 signature of those
by an admin's or auditor's registered key: a signed tree head, which whoever holds the log cannot
forge when they cut or rewrite it."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from governance.common.jsonio import canonical_json
from governance.formats.validation import read_json_model


class CheckpointSignature(BaseModel):
    model_config = ConfigDict(extra="forbid")

    algorithm: str = "ed25519"
    public_key: str = Field(pattern=r"^[0-9a-f]{64}$")
    value: str = Field(pattern=r"^[0-9a-f]{128}$")


class Checkpoint(BaseModel):
    model_config = ConfigDict(extra="forbid")

    size: int = Field(ge=0)
    head_hash: str = Field(pattern=r"^[0-9a-f]{64}$")
    merkle_root: str = Field(pattern=r"^[0-9a-f]{64}$")
    time: str
    # sha256 of the signature rules' state after event `size` (registry.signatures.state_digest):
    # what `audit verify --since` starts from. Absent in checkpoints made before it existed.
    state_sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")
    signature: CheckpointSignature | None = None

    def signed_message(self) -> bytes:
        """What a signature covers: the tree head without the signature (absent fields left out,
        so checkpoints signed before `state_sha256` existed still verify)."""
        return canonical_json(self.model_dump(exclude={"signature"}, exclude_none=True)).encode()


def read_checkpoint(path: Path) -> Checkpoint:
    return read_json_model(Checkpoint, path)


def write_checkpoint(path: Path, cp: Checkpoint) -> None:
    # An unsigned checkpoint is written exactly as before signatures existed.
    Path(path).write_text(json.dumps(cp.model_dump(exclude_none=True), indent=2) + "\n")


class ConsistencyProof(BaseModel):
    """RFC 6962 consistency proof (`saegov audit consistency --out`): the tree of the old
    checkpoint's `old_size` events is a prefix of the new one's. Checked with nothing but the two
    checkpoints and these hashes (registry.audit.consistency_holds)."""

    model_config = ConfigDict(extra="forbid")

    format: Literal["saegov.consistency-proof/v1"] = "saegov.consistency-proof/v1"
    old_size: int = Field(ge=1)
    new_size: int = Field(ge=1)
    old_root: str = Field(pattern=r"^[0-9a-f]{64}$")
    new_root: str = Field(pattern=r"^[0-9a-f]{64}$")
    hashes: list[Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]] = Field(max_length=128)


def read_consistency_proof(path: Path) -> ConsistencyProof:
    return read_json_model(ConsistencyProof, path)
