"""ORM rows of the registry (SQLAlchemy 2 typed declarative). Schema changes need a migration."""
from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    false,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator

from governance.common.timeutil import utcnow

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

ROLES = ("admin", "engineer", "reviewer", "auditor")
CONCEPT_KINDS = ("style", "object", "colour", "other")
MAPPING_STATES = ("draft", "proposed", "approved", "rejected", "revoked")
REVIEW_ACTIONS = ("propose", "approve", "reject", "revoke")
BLOCKLIST_VERSION_STATES = ("published", "revoked", "pending")
GENESIS_HASH = "0" * 64


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


class UTCDateTime(TypeDecorator[dt.datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite returns naive values)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Any) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.timezone.utc)
        value = value.astimezone(dt.timezone.utc)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: dt.datetime | None, dialect: Any) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=dt.timezone.utc)
        return value.astimezone(dt.timezone.utc)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Actor(Base):
    __tablename__ = "actors"
    __table_args__ = (CheckConstraint(_in("role", ROLES), name="role"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    role: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    created_by_id: Mapped[int | None] = mapped_column(ForeignKey("actors.id"))
    disabled_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)


class SigningKey(Base):
    """A public Ed25519 key an admin registered for an actor: deployments it signs are trusted
    (`purpose` 'deployment') until it is revoked. The private key stays with its owner."""

    __tablename__ = "signing_keys"
    __table_args__ = (CheckConstraint(_in("purpose", ("deployment",)), name="purpose"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    public_key: Mapped[str] = mapped_column(String(64), unique=True)
    purpose: Mapped[str] = mapped_column(String(16), default="deployment")
    actor_id: Mapped[int] = mapped_column(ForeignKey("actors.id"), index=True)
    registered_by_id: Mapped[int] = mapped_column(ForeignKey("actors.id"))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    revoked_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    revoked_by_id: Mapped[int | None] = mapped_column(ForeignKey("actors.id"))

    actor: Mapped[Actor] = relationship(foreign_keys=[actor_id])
    registered_by: Mapped[Actor] = relationship(foreign_keys=[registered_by_id])
    revoked_by: Mapped[Actor | None] = relationship(foreign_keys=[revoked_by_id])


class ApprovalPolicyRow(Base):
    """One version of the approval policy (registry.policy); the highest version is in force."""

    __tablename__ = "approval_policies"

    version: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    min_ua: Mapped[float | None] = mapped_column(Float)
    min_ira: Mapped[float | None] = mapped_column(Float)
    min_cra: Mapped[float | None] = mapped_column(Float)
    require_signatures: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    created_by_id: Mapped[int] = mapped_column(ForeignKey("actors.id"))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


class BaseModelRow(Base):
    __tablename__ = "base_models"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(256), unique=True)
    source: Mapped[str] = mapped_column(Text)
    content_hash: Mapped[str] = mapped_column(String(64))
    created_by_id: Mapped[int] = mapped_column(ForeignKey("actors.id"))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


class SAEVersion(Base):
    __tablename__ = "sae_versions"
    __table_args__ = (
        UniqueConstraint("name", "version"),
        CheckConstraint("n_latents > 0 AND d_in > 0 AND k > 0", name="sizes"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(256))
    version: Mapped[int] = mapped_column(Integer)
    hook_point: Mapped[str] = mapped_column(String(256))
    d_in: Mapped[int] = mapped_column(Integer)
    n_latents: Mapped[int] = mapped_column(Integer)
    k: Mapped[int] = mapped_column(Integer)
    architecture: Mapped[str] = mapped_column(String(64))
    config: Mapped[dict[str, Any]] = mapped_column(JSON)
    weights_uri: Mapped[str] = mapped_column(Text)
    weights_sha256: Mapped[str] = mapped_column(String(64))
    cfg_sha256: Mapped[str | None] = mapped_column(String(64))
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    base_model_id: Mapped[int | None] = mapped_column(ForeignKey("base_models.id"))
    activation_dataset_hash: Mapped[str | None] = mapped_column(String(64))
    mlflow_run_id: Mapped[str | None] = mapped_column(String(64))
    mlflow_model_version: Mapped[str | None] = mapped_column(String(64))
    created_by_id: Mapped[int] = mapped_column(ForeignKey("actors.id"))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)

    base_model: Mapped[BaseModelRow | None] = relationship()
    created_by: Mapped[Actor] = relationship()


class Concept(Base):
    __tablename__ = "concepts"
    __table_args__ = (CheckConstraint(_in("kind", CONCEPT_KINDS), name="kind"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(256), unique=True)
    kind: Mapped[str] = mapped_column(String(16))
    description: Mapped[str] = mapped_column(Text, default="")
    prompts: Mapped[list[str]] = mapped_column(JSON, default=list)
    created_by_id: Mapped[int] = mapped_column(ForeignKey("actors.id"))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)

    created_by: Mapped[Actor] = relationship()


class FeatureMapping(Base):
    __tablename__ = "feature_mappings"
    __table_args__ = (
        CheckConstraint(_in("state", MAPPING_STATES), name="state"),
        CheckConstraint(_in("selection_rule", ("tau", "top_n", "specific", "assigned")), name="selection_rule"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    concept_id: Mapped[int] = mapped_column(ForeignKey("concepts.id"), index=True)
    sae_id: Mapped[int] = mapped_column(ForeignKey("sae_versions.id"), index=True)
    state: Mapped[str] = mapped_column(String(16), default="draft")
    selection_rule: Mapped[str] = mapped_column(String(8))
    tau: Mapped[float | None] = mapped_column(Float)
    top_n: Mapped[int | None] = mapped_column(Integer)
    gamma: Mapped[float] = mapped_column(Float)
    scheduler: Mapped[str] = mapped_column(String(128))
    num_steps: Mapped[int] = mapped_column(Integer)
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    spec_sha256: Mapped[str] = mapped_column(String(64))
    evidence: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    created_by_id: Mapped[int] = mapped_column(ForeignKey("actors.id"))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)

    concept: Mapped[Concept] = relationship()
    sae: Mapped[SAEVersion] = relationship()
    created_by: Mapped[Actor] = relationship()
    features: Mapped[list[MappingFeature]] = relationship(
        order_by="(MappingFeature.timestep.desc(), MappingFeature.feature_id)"
    )
    reviews: Mapped[list[Review]] = relationship(order_by="Review.id")


class MappingFeature(Base):
    """One selected feature at one timestep value of a mapping."""

    __tablename__ = "mapping_features"
    __table_args__ = (UniqueConstraint("mapping_id", "timestep", "feature_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    mapping_id: Mapped[int] = mapped_column(ForeignKey("feature_mappings.id"), index=True)
    timestep: Mapped[int] = mapped_column(Integer)
    feature_id: Mapped[int] = mapped_column(Integer)
    score: Mapped[float] = mapped_column(Float)
    scale: Mapped[float] = mapped_column(Float)
    gate: Mapped[float] = mapped_column(Float)


class Review(Base):
    __tablename__ = "reviews"
    __table_args__ = (CheckConstraint(_in("action", REVIEW_ACTIONS), name="action"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    mapping_id: Mapped[int] = mapped_column(ForeignKey("feature_mappings.id"), index=True)
    actor_id: Mapped[int] = mapped_column(ForeignKey("actors.id"))
    action: Mapped[str] = mapped_column(String(16))
    from_state: Mapped[str] = mapped_column(String(16))
    to_state: Mapped[str] = mapped_column(String(16))
    justification: Mapped[str] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)

    actor: Mapped[Actor] = relationship()


class BlocklistRow(Base):
    """A named blocklist: a draft set of mappings, frozen into numbered versions by publishing."""

    __tablename__ = "blocklists"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(256), unique=True)
    created_by_id: Mapped[int] = mapped_column(ForeignKey("actors.id"))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)

    draft_entries: Mapped[list[BlocklistDraftEntry]] = relationship(
        order_by="BlocklistDraftEntry.mapping_id"
    )
    versions: Mapped[list[BlocklistVersion]] = relationship(order_by="BlocklistVersion.version")


class BlocklistDraftEntry(Base):
    __tablename__ = "blocklist_draft_entries"
    __table_args__ = (UniqueConstraint("blocklist_id", "mapping_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    blocklist_id: Mapped[int] = mapped_column(ForeignKey("blocklists.id"), index=True)
    mapping_id: Mapped[int] = mapped_column(ForeignKey("feature_mappings.id"))


class BlocklistVersion(Base):
    """A published, immutable version. `state` becomes `revoked` when a mapping in it is;
    `pending` while a loosening waits for review."""

    __tablename__ = "blocklist_versions"
    __table_args__ = (
        UniqueConstraint("blocklist_id", "version"),
        CheckConstraint(_in("state", BLOCKLIST_VERSION_STATES), name="state"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    blocklist_id: Mapped[int] = mapped_column(ForeignKey("blocklists.id"), index=True)
    version: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(16), default="published")
    content_sha256: Mapped[str] = mapped_column(String(64))
    published_by_id: Mapped[int] = mapped_column(ForeignKey("actors.id"))
    published_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    revoked_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    revoked_by_mapping_id: Mapped[int | None] = mapped_column(ForeignKey("feature_mappings.id"))
    # A version that loosens the one in force (a concept removed, or its mapping changed) is
    # `pending` until a reviewer other than the publisher approves it.
    approved_by_id: Mapped[int | None] = mapped_column(ForeignKey("actors.id"))
    approved_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)

    blocklist: Mapped[BlocklistRow] = relationship(back_populates="versions")
    published_by: Mapped[Actor] = relationship(foreign_keys=[published_by_id])
    approved_by: Mapped[Actor | None] = relationship(foreign_keys=[approved_by_id])
    entries: Mapped[list[BlocklistVersionEntry]] = relationship(
        order_by="BlocklistVersionEntry.mapping_id"
    )
    saes: Mapped[list[BlocklistVersionSae]] = relationship(order_by="BlocklistVersionSae.hook_point")


class BlocklistVersionSae(Base):
    """The SAE version a published blocklist version uses at one hook point (at most one each)."""

    __tablename__ = "blocklist_version_saes"
    __table_args__ = (UniqueConstraint("blocklist_version_id", "hook_point"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    blocklist_version_id: Mapped[int] = mapped_column(ForeignKey("blocklist_versions.id"), index=True)
    hook_point: Mapped[str] = mapped_column(String(256))
    sae_id: Mapped[int] = mapped_column(ForeignKey("sae_versions.id"))

    sae: Mapped[SAEVersion] = relationship()


class BlocklistVersionEntry(Base):
    __tablename__ = "blocklist_version_entries"
    __table_args__ = (UniqueConstraint("blocklist_version_id", "mapping_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    blocklist_version_id: Mapped[int] = mapped_column(
        ForeignKey("blocklist_versions.id"), index=True
    )
    mapping_id: Mapped[int] = mapped_column(ForeignKey("feature_mappings.id"))
    approval_review_id: Mapped[int] = mapped_column(ForeignKey("reviews.id"))

    mapping: Mapped[FeatureMapping] = relationship()
    approval: Mapped[Review] = relationship()


class Deployment(Base):
    __tablename__ = "deployments"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    blocklist_version_id: Mapped[int] = mapped_column(ForeignKey("blocklist_versions.id"))
    base_model_hash: Mapped[str] = mapped_column(String(64))
    path: Mapped[str] = mapped_column(Text)
    manifest_sha256: Mapped[str] = mapped_column(String(64))
    mlflow_model_version: Mapped[str | None] = mapped_column(String(64))
    details: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    built_by_id: Mapped[int] = mapped_column(ForeignKey("actors.id"))
    built_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)

    blocklist_version: Mapped[BlocklistVersion] = relationship()
    built_by: Mapped[Actor] = relationship()


class DeploymentEvaluation(Base):
    """An evaluation of a deployment (UA / IRA / CRA per concept), recorded so that a promotion
    can name the evidence it rests on."""

    __tablename__ = "deployment_evaluations"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    deployment_id: Mapped[int] = mapped_column(ForeignKey("deployments.id"), index=True)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON)
    metrics_sha256: Mapped[str] = mapped_column(String(64))
    report_sha256: Mapped[str | None] = mapped_column(String(64))
    mlflow_run_id: Mapped[str | None] = mapped_column(String(64))
    created_by_id: Mapped[int] = mapped_column(ForeignKey("actors.id"))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)

    created_by: Mapped[Actor] = relationship()


class DeploymentPromotion(Base):
    """A deployment given an alias (`production`) after a passing verification and a recorded
    evaluation; the MLflow alias follows the registry, never the other way round."""

    __tablename__ = "deployment_promotions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    deployment_id: Mapped[int] = mapped_column(ForeignKey("deployments.id"))
    evaluation_id: Mapped[int] = mapped_column(ForeignKey("deployment_evaluations.id"))
    alias: Mapped[str] = mapped_column(String(64))
    mlflow_model: Mapped[str | None] = mapped_column(String(255))
    mlflow_version: Mapped[str | None] = mapped_column(String(64))
    promoted_by_id: Mapped[int] = mapped_column(ForeignKey("actors.id"))
    promoted_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)

    promoted_by: Mapped[Actor] = relationship()


class Generation(Base):
    __tablename__ = "generations"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    deployment_id: Mapped[int] = mapped_column(ForeignKey("deployments.id"), index=True)
    prompt_sha256: Mapped[str] = mapped_column(String(64))
    seed: Mapped[int] = mapped_column(BigInteger)
    trace: Mapped[str] = mapped_column(Text)
    trace_sha256: Mapped[str] = mapped_column(String(64))
    created_by_id: Mapped[int] = mapped_column(ForeignKey("actors.id"))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)

    created_by: Mapped[Actor] = relationship()


class AuditEvent(Base):
    """One link of the hash chain. Append-only: UPDATE and DELETE are refused by triggers.

    `created_at` and `payload` are stored as the exact text that was hashed.
    """

    __tablename__ = "audit_events"

    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    created_at: Mapped[str] = mapped_column(String(32))
    actor: Mapped[str] = mapped_column(String(128), index=True)
    action: Mapped[str] = mapped_column(String(64), index=True)
    subject: Mapped[str] = mapped_column(String(256), index=True)
    payload: Mapped[str] = mapped_column(Text)
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))
    # The actor's signature over the hash (registry.signatures); outside the hash, which it signs.
    signer_key: Mapped[str | None] = mapped_column(String(64))
    signature: Mapped[str | None] = mapped_column(String(128))


class AuditHead(Base):
    """Single row (id = 1): the chain's current length and head hash; locked by every writer."""

    __tablename__ = "audit_head"
    __table_args__ = (CheckConstraint("id = 1", name="single_row"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    seq: Mapped[int] = mapped_column(BigInteger)
    hash: Mapped[str] = mapped_column(String(64))
