"""Read-only pydantic records the store returns (detached from any session; JSON-ready)."""
from __future__ import annotations

import datetime as dt
from typing import Any

from pydantic import BaseModel, ConfigDict

from governance.formats.mapping import FeatureEntry


class Record(BaseModel):
    model_config = ConfigDict(frozen=True)

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


class ActorRecord(Record):
    id: int
    name: str
    role: str
    created_at: dt.datetime
    disabled_at: dt.datetime | None = None


class SigningKeyRecord(Record):
    id: int
    public_key: str
    purpose: str
    actor: str
    registered_by: str
    created_at: dt.datetime
    revoked_at: dt.datetime | None = None
    revoked_by: str | None = None

    @property
    def active(self) -> bool:
        return self.revoked_at is None


class BaseModelRecord(Record):
    id: int
    name: str
    source: str
    content_hash: str
    created_by: str
    created_at: dt.datetime


class SAERecord(Record):
    id: int
    ref: str
    name: str
    version: int
    hook_point: str
    d_in: int
    n_latents: int
    k: int
    architecture: str
    config: dict[str, Any]
    weights_uri: str
    weights_sha256: str
    cfg_sha256: str | None
    metrics: dict[str, Any]
    base_model: str | None
    base_model_hash: str | None
    activation_dataset_hash: str | None
    mlflow_run_id: str | None
    mlflow_model_version: str | None
    created_by: str
    created_at: dt.datetime


class ConceptRecord(Record):
    id: int
    name: str
    kind: str
    description: str
    prompts: list[str]
    created_by: str
    created_at: dt.datetime


class ReviewRecord(Record):
    id: int
    action: str
    actor: str
    from_state: str
    to_state: str
    justification: str
    created_at: dt.datetime


class MappingRecord(Record):
    id: int
    concept: str
    concept_kind: str
    sae_id: int
    sae_ref: str
    state: str
    selection_rule: str
    tau: float | None
    top_n: int | None
    gamma: float
    scheduler: str
    num_steps: int
    spec_sha256: str
    evidence: list[dict[str, Any]]
    n_features: int
    created_by: str
    created_at: dt.datetime
    reviews: list[ReviewRecord]
    timesteps: dict[int, list[FeatureEntry]] | None = None

    @property
    def proposer(self) -> str | None:
        props = [r.actor for r in self.reviews if r.action == "propose"]
        return props[-1] if props else None

    @property
    def approval(self) -> ReviewRecord | None:
        apps = [r for r in self.reviews if r.action == "approve"]
        return apps[-1] if apps else None


class BlocklistEntryRecord(Record):
    mapping_id: int
    concept: str
    concept_kind: str
    mapping_state: str
    approval_review_id: int | None
    approved_by: str | None
    approved_at: dt.datetime | None
    sae_id: int
    hook_point: str
    gamma: float
    scheduler: str
    num_steps: int
    timesteps: dict[int, list[FeatureEntry]]


class BlocklistSaeRecord(Record):
    hook_point: str
    sae_id: int
    sae_ref: str
    weights_sha256: str


class BlocklistVersionRecord(Record):
    id: int
    name: str
    version: int
    ref: str
    state: str
    saes: list[BlocklistSaeRecord]  # one per hook point, sorted by hook point
    content_sha256: str
    published_by: str
    published_at: dt.datetime
    revoked_at: dt.datetime | None
    revoked_by_mapping_id: int | None
    entries: list[BlocklistEntryRecord]
    approved_by: str | None = None  # the reviewer of a loosening version
    approved_at: dt.datetime | None = None

    @property
    def hook_points(self) -> list[str]:
        return [s.hook_point for s in self.saes]


class BlocklistVersionSummary(Record):
    version: int
    state: str
    content_sha256: str
    n_entries: int
    published_by: str
    published_at: dt.datetime
    revoked_by_mapping_id: int | None


class BlocklistRecord(Record):
    id: int
    name: str
    created_by: str
    created_at: dt.datetime
    draft_mapping_ids: list[int]
    versions: list[BlocklistVersionSummary]


class DeploymentRecord(Record):
    id: int
    blocklist: str
    blocklist_version: int
    blocklist_state: str
    sae_ids: list[int]  # the blocklist version's SAEs, one per hook point
    base_model_hash: str
    path: str
    manifest_sha256: str
    mlflow_model_version: str | None
    details: dict[str, Any]
    built_by: str
    built_at: dt.datetime


class EvaluationRecord(Record):
    id: int
    deployment_id: int
    metrics: dict[str, Any]
    metrics_sha256: str
    report_sha256: str | None
    mlflow_run_id: str | None
    created_by: str
    created_at: dt.datetime


class PromotionRecord(Record):
    id: int
    deployment_id: int
    evaluation_id: int
    alias: str
    mlflow_model: str | None
    mlflow_version: str | None
    promoted_by: str
    promoted_at: dt.datetime


class GenerationRecord(Record):
    id: int
    deployment_id: int
    prompt_sha256: str
    seed: int
    trace: dict[str, Any]
    trace_sha256: str
    created_by: str
    created_at: dt.datetime


class AuditEventRecord(Record):
    seq: int
    created_at: str
    actor: str
    action: str
    subject: str
    payload: dict[str, Any]
    prev_hash: str
    hash: str
