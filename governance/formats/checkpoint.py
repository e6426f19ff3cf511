"""An audit checkpoint file (`saegov audit checkpoint --out`): size, head hash, RFC 6962 root, time."""
from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from governance.formats.validation import read_json_model


class Checkpoint(BaseModel):
    model_config = ConfigDict(extra="forbid")

    size: int = Field(ge=0)
    head_hash: str = Field(pattern=r"^[0-9a-f]{64}$")
    merkle_root: str = Field(pattern=r"^[0-9a-f]{64}$")
    time: str


def read_checkpoint(path: Path) -> Checkpoint:
    return read_json_model(Checkpoint, path)


def write_checkpoint(path: Path, cp: Checkpoint) -> None:
    Path(path).write_text(json.dumps(cp.model_dump(), indent=2) + "\n")
