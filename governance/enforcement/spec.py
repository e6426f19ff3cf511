"""File formats of a deployment's `saegov/` folder: blocklist.json and manifest.json."""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from registry.schemas import FeatureEntry

BLOCKLIST_FORMAT = "saegov.blocklist/v1"
MANIFEST_FORMAT = "saegov.deployment/v1"


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
    kind: str = "other"
    mapping_id: int | None = None
    gamma: float
    scheduler: str
    num_steps: int = Field(gt=0)
    approval: Approval = Field(default_factory=Approval)
    timesteps: dict[int, list[FeatureEntry]]


class SaeRef(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: int | None = None
    ref: str | None = None
    hook_point: str
    weights_sha256: str | None = None


class BlocklistSpec(BaseModel):
    """`saegov/blocklist.json`: what a deployment suppresses, and on whose approval."""

    model_config = ConfigDict(extra="forbid")

    format: Literal["saegov.blocklist/v1"] = BLOCKLIST_FORMAT
    name: str
    version: int | None = None
    content_sha256: str | None = None
    sae: SaeRef
    entries: list[BlockedConcept] = Field(default_factory=list)


class GenerationDefaults(BaseModel):
    model_config = ConfigDict(extra="forbid")

    scheduler: str
    num_inference_steps: int = Field(gt=0)
    guidance_scale: float


class ManifestPayload(BaseModel):
    model_config = ConfigDict(extra="forbid")

    format: Literal["saegov.deployment/v1"] = MANIFEST_FORMAT
    files: dict[str, str]  # relative path -> sha256, every file of the folder but the manifest
    base_model_hash: str
    sae: SaeRef
    blocklist: str  # name@version
    blocklist_sha256: str
    mapping_ids: list[int]
    approval_review_ids: list[int]
    defaults: GenerationDefaults
    error_mode: Literal["faithful", "reference"] = "faithful"
    built_by: str
    built_at: str


class Signature(BaseModel):
    model_config = ConfigDict(extra="forbid")

    algorithm: Literal["ed25519"] = "ed25519"
    public_key: str  # hex, raw 32 bytes
    value: str  # hex signature over the canonical JSON of the payload


class Manifest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    payload: ManifestPayload
    signature: Signature
