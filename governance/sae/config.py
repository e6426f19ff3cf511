"""`cfg.json` of an SAE folder: the reference keys (SAEURON.md section 2) plus `d_in`."""
from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator


class SaeConfig(BaseModel):
    # Reference checkpoints may carry keys we do not interpret; ignore them rather than refuse,
    # so that `bcywinski/SAeUron` folders load unchanged.
    model_config = ConfigDict(extra="ignore")

    expansion_factor: int = Field(default=16, gt=0)
    normalize_decoder: bool = True
    num_latents: int = Field(default=0, ge=0, description="0 means d_in * expansion_factor")
    k: int = Field(default=32, gt=0)
    batch_topk: bool = True
    sample_topk: bool = False
    input_unit_norm: bool = False
    multi_topk: bool = False
    d_in: int = Field(gt=0)
    # Not a reference key; written so that `saegov sae import` of our own folders finds it.
    # Reference loaders drop unknown keys.
    hookpoint: str | None = None

    @property
    def n_latents(self) -> int:
        return self.num_latents or self.d_in * self.expansion_factor

    @model_validator(mode="after")
    def _check(self) -> SaeConfig:
        if self.k > self.n_latents:
            raise ValueError(f"k={self.k} exceeds the number of latents {self.n_latents}")
        return self

    def to_json_dict(self) -> dict:
        return self.model_dump(exclude_none=True)
