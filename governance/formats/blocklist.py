"""`saegov/blocklist.json` of a deployment (`saegov.blocklist/v1`): what is suppressed, with
which features per scored timestep, on whose approval. Also what a sweep point applies."""
from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from governance.common.jsonio import canonical_json
from governance.formats.mapping import FeaturesByTimestep
from governance.formats.validation import read_json_model

BLOCKLIST_FORMAT = "saegov.blocklist/v1"
BLOCKLIST_NAME = "blocklist.json"


class Approval(BaseModel):
    model_config = ConfigDict(extra="forbid")

    review_id: int | None = None
    by: str | None = None
    at: str | None = None
    justification: str | None = None


class BlockedConcept(BaseModel):
    """One approved mapping: a concept and its features per scored timestep value."""

    model_config = ConfigDict(extra="forbid")

    concept: str
    kind: str = "other"  # the registry's concept kind: colour, object, style or other
    mapping_id: int | None = None
    gamma: float
    scheduler: str
    num_steps: int = Field(gt=0)
    approval: Approval = Field(default_factory=Approval)
    timesteps: FeaturesByTimestep


class SaeRef(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: int | None = None
    ref: str | None = None
    hook_point: str
    weights_sha256: str | None = None


class BlocklistSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    format: Literal["saegov.blocklist/v1"] = BLOCKLIST_FORMAT
    name: str
    version: int | None = None
    content_sha256: str | None = None
    sae: SaeRef
    entries: list[BlockedConcept] = Field(default_factory=list)


def read_blocklist(path: Path) -> BlocklistSpec:
    """`path`: the blocklist.json file, or the `saegov/` folder holding it."""
    path = Path(path)
    return read_json_model(BlocklistSpec, path / BLOCKLIST_NAME if path.is_dir() else path)


def blocklist_bytes(spec: BlocklistSpec) -> bytes:
    return (canonical_json(spec.model_dump(mode="json")) + "\n").encode()


def write_blocklist(path: Path, spec: BlocklistSpec) -> None:
    """`path`: the file, or the `saegov/` folder to write blocklist.json into."""
    path = Path(path)
    (path / BLOCKLIST_NAME if path.is_dir() else path).write_bytes(blocklist_bytes(spec))
