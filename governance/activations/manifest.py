"""`manifest.json` of an activation dataset: what was collected, from what, and every shard's hash."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

MANIFEST_NAME = "manifest.json"
FORMAT = "saegov.activations/v1"


def prompts_sha256(prompts: list[str]) -> str:
    # JSON of the list, so that prompt boundaries (and empty prompts) are part of the hash.
    return hashlib.sha256(json.dumps(prompts, ensure_ascii=False).encode()).hexdigest()


def shard_name(index: int) -> str:
    return f"shard-{index:05d}.safetensors"


class ShardInfo(BaseModel):
    model_config = ConfigDict(extra="forbid")

    index: int = Field(ge=0)
    file: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    rows: int = Field(ge=0)
    prompt_start: int = Field(ge=0)
    prompt_end: int = Field(ge=0, description="exclusive")


class CollectionParams(BaseModel):
    """Everything that determines the activations; a resume must match it exactly."""

    model_config = ConfigDict(extra="forbid")

    base_model: str
    base_model_hash: str = Field(pattern=r"^[0-9a-f]{64}$")
    hook_point: str
    steps: int = Field(gt=0)
    guidance: float
    seed: int
    height: int = Field(gt=0)
    width: int = Field(gt=0)
    prompts_sha256: str
    n_prompts: int = Field(gt=0)
    prompts_per_shard: int = Field(gt=0)
    dtype: str = "float16"

    def comparable(self) -> dict[str, Any]:
        # The model's path may move; its content hash is what must match.
        return self.model_dump(exclude={"base_model"})


class ActivationManifest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    format: str = FORMAT
    params: CollectionParams
    d_in: int = Field(gt=0)
    spatial_shape: tuple[int, int]
    scheduler_class: str
    scheduler_config: dict[str, Any]
    unet_calls_per_prompt: int = Field(ge=0)
    timesteps: list[int]
    prompts: list[str]
    shards: list[ShardInfo]
    n_shards: int = Field(ge=0)
    total_rows: int = Field(ge=0)
    complete: bool

    @property
    def hook_point(self) -> str:
        return self.params.hook_point

    def shard_paths(self, folder: str | Path) -> list[Path]:
        return [Path(folder) / s.file for s in self.shards]


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    """Write to a temporary file in the same folder, fsync, then rename (atomic on POSIX)."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w") as f:
        f.write(json.dumps(data, indent=2, sort_keys=True) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_manifest(folder: Path, manifest: ActivationManifest) -> None:
    write_json_atomic(folder / MANIFEST_NAME, manifest.model_dump(mode="json"))


def read_manifest(folder: str | Path) -> ActivationManifest:
    path = Path(folder) / MANIFEST_NAME
    if not path.is_file():
        raise FileNotFoundError(f"no {MANIFEST_NAME} in {str(folder)!r}")
    return ActivationManifest.model_validate_json(path.read_text())
