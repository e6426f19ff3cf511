"""An activation dataset's `manifest.json` (`saegov.activations/v1`): what was collected, from
what, and every shard's hash. Written by governance.activations, read by the SAE trainer.

    shard-00000.safetensors   activations [N, d_in] fp16, timesteps [N] int32, prompt_index [N] int32
    shard-00000.json          ShardRecord: the shard's record, written after it (resume)
    manifest.json             ActivationManifest; `complete` once every shard is there
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from governance.common.errors import FormatError
from governance.common.jsonio import write_json_atomic
from governance.formats.validation import parse_json_model

MANIFEST_NAME = "manifest.json"
FORMAT = "saegov.activations/v1"


def prompts_sha256(prompts: list[str]) -> str:
    # JSON of the list, so that prompt boundaries (and empty prompts) are part of the hash.
    return hashlib.sha256(json.dumps(prompts, ensure_ascii=False).encode()).hexdigest()


def shard_name(index: int) -> str:
    return f"shard-{index:05d}.safetensors"


def shard_record_name(index: int) -> str:
    return f"shard-{index:05d}.json"


class ShardInfo(BaseModel):
    model_config = ConfigDict(extra="forbid")

    index: int = Field(ge=0)
    file: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    rows: int = Field(ge=0)
    prompt_start: int = Field(ge=0)
    prompt_end: int = Field(ge=0, description="exclusive")


class ShardRecord(BaseModel):
    """Sidecar of a finished shard: its ShardInfo plus the facts the manifest needs."""

    model_config = ConfigDict(extra="forbid")

    info: ShardInfo
    d_in: int
    spatial_shape: tuple[int, int]
    timesteps: list[int]
    unet_calls_per_prompt: int


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

    format: Literal["saegov.activations/v1"] = FORMAT
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


def write_activation_manifest(folder: Path, manifest: ActivationManifest) -> None:
    write_json_atomic(Path(folder) / MANIFEST_NAME, manifest.model_dump(mode="json"))


def read_activation_manifest(folder: str | Path) -> tuple[ActivationManifest, bytes]:
    """(manifest, its raw bytes: their sha256 is the dataset's lineage hash)."""
    path = Path(folder) / MANIFEST_NAME
    if not path.is_file():
        raise FormatError(f"{folder}: no {MANIFEST_NAME} (not an activation dataset)")
    raw = path.read_bytes()
    return parse_json_model(ActivationManifest, raw, str(path)), raw
