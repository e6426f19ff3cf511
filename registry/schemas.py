"""Pydantic models at the registry's boundaries: SAE config, mapping JSON, checkpoints."""
from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from registry.errors import ValidationFailed

MAPPING_FORMAT = "saegov.mapping/v1"


class SAEConfig(BaseModel):
    """`cfg.json` of a reference-format SAE checkpoint (SAEURON.md section 2).

    Unknown extra keys are kept (stored with the version) but not interpreted.
    """

    model_config = ConfigDict(extra="allow")

    d_in: int = Field(gt=0)
    expansion_factor: int = Field(gt=0)
    num_latents: int = Field(ge=0, description="0 means d_in * expansion_factor")
    k: int = Field(gt=0)
    normalize_decoder: bool = True
    batch_topk: bool = False
    sample_topk: bool = False
    input_unit_norm: bool = False
    multi_topk: bool = False

    @property
    def n_latents(self) -> int:
        return self.num_latents or self.d_in * self.expansion_factor

    @model_validator(mode="after")
    def _k_fits(self) -> SAEConfig:
        if self.k > self.n_latents:
            raise ValueError(f"k={self.k} exceeds the number of latents {self.n_latents}")
        return self


class FeatureEntry(BaseModel):
    """One selected feature at one timestep: its score, the scale applied above the gate."""

    model_config = ConfigDict(extra="forbid")

    feature: int = Field(ge=0)
    score: float
    scale: float
    gate: float


class Selection(BaseModel):
    model_config = ConfigDict(extra="forbid")

    rule: Literal["tau", "top_n"]
    tau: float | None = Field(default=None, gt=0, lt=100)
    top_n: int | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _one_parameter(self) -> Selection:
        if self.rule == "tau" and (self.tau is None or self.top_n is not None):
            raise ValueError("rule 'tau' needs tau (and no top_n)")
        if self.rule == "top_n" and (self.top_n is None or self.tau is not None):
            raise ValueError("rule 'top_n' needs top_n (and no tau)")
        return self


class EvidenceRef(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: str = Field(min_length=1, description="e.g. mlflow_run, report, image_grid")
    ref: str = Field(min_length=1)
    sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")


class MappingSpec(BaseModel):
    """The concept-to-feature mapping JSON format (docs/mapping-format.md)."""

    model_config = ConfigDict(extra="forbid")

    format: Literal["saegov.mapping/v1"] = MAPPING_FORMAT
    concept: str = Field(min_length=1)
    selection: Selection
    gamma: float
    scheduler: str = Field(min_length=1)
    num_steps: int = Field(gt=0)
    timesteps: dict[int, list[FeatureEntry]] = Field(min_length=1)
    evidence: list[EvidenceRef] = Field(default_factory=list)

    @field_validator("timesteps")
    @classmethod
    def _check_timesteps(cls, value: dict[int, list[FeatureEntry]]) -> dict[int, list[FeatureEntry]]:
        for t, entries in value.items():
            if t < 0:
                raise ValueError(f"timestep {t} is negative")
            ids = [e.feature for e in entries]
            if len(set(ids)) != len(ids):
                raise ValueError(f"timestep {t} lists a feature twice")
        return dict(sorted(value.items(), key=lambda kv: -kv[0]))

    def max_feature_id(self) -> int:
        return max((e.feature for es in self.timesteps.values() for e in es), default=-1)

    def to_json_dict(self) -> dict[str, Any]:
        d = self.model_dump(mode="json")
        d["timesteps"] = {str(t): v for t, v in d["timesteps"].items()}
        return d


class Checkpoint(BaseModel):
    """An audit checkpoint: chain size, head hash, RFC 6962 Merkle root, time (UTC)."""

    model_config = ConfigDict(extra="forbid")

    size: int = Field(ge=0)
    head_hash: str = Field(pattern=r"^[0-9a-f]{64}$")
    merkle_root: str = Field(pattern=r"^[0-9a-f]{64}$")
    time: str


def parse_json_model(model: type[BaseModel], raw: str | bytes, what: str) -> Any:
    """Parse and validate JSON; any problem becomes a one-line `ValidationFailed`."""
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValidationFailed(f"{what}: malformed JSON ({exc})") from None
    return validate_model(model, data, what)


def validate_model(model: type[BaseModel], data: Any, what: str) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"]) or "(root)"
        more = f" (+{exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        raise ValidationFailed(f"{what}: {loc}: {err['msg']}{more}") from None
