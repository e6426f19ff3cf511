"""Which concepts supervised an SAE, and which latents they were given (issue 14).

Kept in the SAE's `cfg.json` under the key `supervision`, beside the reference keys: reference
loaders drop unknown keys, so a supervised SAE still loads as a plain TopK SAE, while saegov
reads the assignment from the same hashed file the registry, the deployments and the signatures
already pin (`cfg_sha256`): once an SAE is registered, its concepts cannot be pointed at other
latents without changing that hash, and the registry refuses an "assigned" mapping whose
features are not the recorded latents. The record of an imported SAE (`sae import`) is its
importer's claim, like the rest of its cfg.json; the audit log names who made it.

    "supervision": {
      "format": "saegov.supervision/v1",
      "concepts": [{"name": "red", "kind": "colour", "latents": [0], "prompts_sha256": "...",
                    "positive_prompts": 32}, ...],
      "latents_per_concept": 1, "assign_weight": 1.0, "decorrelation_weight": 10.0,
      "labels": "registry prompts"
    }
"""
from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from governance.common.errors import FormatError
from governance.formats.validation import NAME_PATTERN, validation_message

CFG_KEY = "supervision"
FORMAT = "saegov.supervision/v1"


class SupervisedConcept(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=f"^{NAME_PATTERN.pattern}$")
    kind: str = Field(min_length=1, max_length=64)
    latents: list[int] = Field(min_length=1)
    # sha256 of the JSON list of the concept's registered prompts that labelled the training rows.
    prompts_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    positive_prompts: int = Field(gt=0, description="dataset prompts labelled with the concept")


class SupervisionSpec(BaseModel):
    """The supervision of one SAE: its concepts with their dedicated latents, and the weights of
    the two losses it was trained with (governance.sae.supervision)."""

    model_config = ConfigDict(extra="forbid")

    format: Literal["saegov.supervision/v1"] = FORMAT
    concepts: list[SupervisedConcept] = Field(min_length=1)
    latents_per_concept: int = Field(gt=0)
    assign_weight: float = Field(ge=0, le=1e6, allow_inf_nan=False)
    decorrelation_weight: float = Field(ge=0, le=1e6, allow_inf_nan=False)
    labels: Literal["registry prompts"] = "registry prompts"

    @model_validator(mode="after")
    def _check(self) -> SupervisionSpec:
        names = [c.name for c in self.concepts]
        if len(set(names)) != len(names):
            raise ValueError("a concept is listed twice")
        latents = [i for c in self.concepts for i in c.latents]
        if len(set(latents)) != len(latents):
            raise ValueError("two concepts share a latent")
        if any(i < 0 for i in latents):
            raise ValueError("latent ids are non-negative")
        if any(len(c.latents) != self.latents_per_concept for c in self.concepts):
            raise ValueError("every concept has latents_per_concept latents")
        return self

    def latents_of(self, concept: str) -> list[int] | None:
        for c in self.concepts:
            if c.name == concept:
                return list(c.latents)
        return None

    def all_latents(self) -> list[int]:
        return [i for c in self.concepts for i in c.latents]


def supervision_of(cfg: dict[str, Any] | Any, n_latents: int | None = None) -> SupervisionSpec | None:
    """The supervision recorded in an SAE config (a `SaeConfig` or its dict), None for an
    unsupervised SAE; raises FormatError on a malformed record or latents out of range."""
    extra = cfg if isinstance(cfg, dict) else (getattr(cfg, "model_extra", None) or {})
    raw = extra.get(CFG_KEY)
    if raw is None:
        return None
    try:
        spec = SupervisionSpec.model_validate(raw)
    except ValidationError as exc:
        raise FormatError(f"SAE config: invalid {CFG_KEY!r}: {validation_message(exc)}") from None
    if n_latents is not None and any(i >= n_latents for i in spec.all_latents()):
        raise FormatError(f"SAE config: {CFG_KEY!r} names a latent beyond the SAE's {n_latents}")
    return spec
