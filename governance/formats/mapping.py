"""The concept-to-feature mapping JSON (docs/mapping-format.md): `saegov.mapping/v1`.

A mapping lists, per scored timestep value, the selected SAE features with their score, the
scale applied above the gate and the gate; the same rows live in the registry.
"""
from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from governance.common.jsonio import canonical_json, pretty_json
from governance.formats.validation import read_json_model

MAPPING_FORMAT = "saegov.mapping/v1"
# Evidence that the mapping's operating point was measured with another mapping of the same
# concept in force at another hook point (`concept sweep --with-mapping`): ref `mapping:<id>`,
# sha256 that mapping's spec_sha256. The registry publishes the mapping only beside it.
CHOSEN_WITH = "chosen_with"
# A row id the databases can hold (1 .. 2^63 - 1), in ASCII digits, without leading zeros.
_CHOSEN_WITH_REF = re.compile(r"mapping:([1-9][0-9]{0,17})", re.ASCII)


class FeatureEntry(BaseModel):
    """One selected feature at one timestep: its score, the scale applied above the gate."""

    model_config = ConfigDict(extra="forbid")

    feature: int = Field(ge=0)
    score: float
    scale: float
    gate: float


class Selection(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # "specific": the top_n most specific features per timestep, gates calibrated on the other
    # concepts' images (governance.scoring.specificity). "assigned": the top_n latents a
    # concept-supervised SAE dedicated to the concept (governance.sae.supervision), every timestep.
    rule: Literal["tau", "top_n", "specific", "assigned"]
    tau: float | None = Field(default=None, gt=0, lt=100)
    top_n: int | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _one_parameter(self) -> Selection:
        if self.rule == "tau" and (self.tau is None or self.top_n is not None):
            raise ValueError("rule 'tau' needs tau (and no top_n)")
        if self.rule in ("top_n", "specific", "assigned") and (self.top_n is None or self.tau is not None):
            raise ValueError(f"rule {self.rule!r} needs top_n (and no tau)")
        return self


class EvidenceRef(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: str = Field(min_length=1, description="e.g. mlflow_run, score_heatmap, sweep, scoring_params")
    ref: str = Field(min_length=1)
    sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")


FeaturesByTimestep = dict[int, list[FeatureEntry]]


class MappingSpec(BaseModel):
    """The concept-to-feature mapping JSON format (docs/mapping-format.md)."""

    model_config = ConfigDict(extra="forbid")

    format: Literal["saegov.mapping/v1"] = MAPPING_FORMAT
    concept: str = Field(min_length=1)
    selection: Selection
    gamma: float
    scheduler: str = Field(min_length=1)
    num_steps: int = Field(gt=0)
    timesteps: FeaturesByTimestep = Field(min_length=1)
    evidence: list[EvidenceRef] = Field(default_factory=list)

    @field_validator("timesteps")
    @classmethod
    def _check_timesteps(cls, value: FeaturesByTimestep) -> FeaturesByTimestep:
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

    def sha256(self) -> str:
        """The mapping's content hash (the registry's `spec_sha256`)."""
        return hashlib.sha256(canonical_json(self.to_json_dict()).encode()).hexdigest()

    def evidence_of(self, kind: str) -> list[EvidenceRef]:
        return [e for e in self.evidence if e.kind == kind]

    def chosen_with(self) -> dict[int, str]:
        """mapping id -> spec_sha256 of the mappings this one was measured with (CHOSEN_WITH);
        a ValueError on a malformed or repeated reference, since it decides what may be
        published alone."""
        out: dict[int, str] = {}
        for e in self.evidence_of(CHOSEN_WITH):
            m = _CHOSEN_WITH_REF.fullmatch(e.ref)
            if m is None or e.sha256 is None:
                raise ValueError(f"{CHOSEN_WITH} evidence {e.ref[:40]!r} is not 'mapping:<id>' with the mapping's sha256")
            mid = int(m.group(1))
            if mid in out:
                raise ValueError(f"{CHOSEN_WITH} evidence names mapping {mid} twice")
            out[mid] = e.sha256
        return out


def read_mapping(path: Path) -> MappingSpec:
    return read_json_model(MappingSpec, path)


def write_mapping(path: Path, spec: MappingSpec) -> None:
    Path(path).write_text(pretty_json(spec.to_json_dict()))
