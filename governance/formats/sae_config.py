"""An SAE folder's `cfg.json`: the reference keys (SAEURON.md section 2) plus `hookpoint`.

One model for every reader: the registry (`sae import`), the SAE loader and the trainer.
Defaults are the reference's. Keys it does not interpret are kept (the registry stores them,
a re-saved folder writes them back), so reference checkpoints load and round-trip unchanged.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from governance.common.errors import FormatError
from governance.formats.validation import parse_json_model

CFG_NAME = "cfg.json"
WEIGHTS_NAME = "sae.safetensors"
# The reference's safetensors layout: name -> shape in terms of (n latents, d_in).
WEIGHT_SHAPES: dict[str, tuple[str, ...]] = {
    "encoder.weight": ("n", "d"), "encoder.bias": ("n",), "W_dec": ("n", "d"), "b_dec": ("d",),
}


# sparsify options that change the SAE's forward pass -> their plain-TopK value. `multi_topk`
# changes only training and is accepted.
FORWARD_OPTIONS: dict[str, Any] = {"activation": "topk", "transcode": False, "skip_connection": False}


class SaeConfig(BaseModel):
    model_config = ConfigDict(extra="allow")

    d_in: int = Field(gt=0)
    expansion_factor: int = Field(default=16, gt=0)
    normalize_decoder: bool = True
    num_latents: int = Field(default=0, ge=0, description="0 means d_in * expansion_factor")
    k: int = Field(default=32, gt=0)
    batch_topk: bool = False
    sample_topk: bool = False
    input_unit_norm: bool = False
    multi_topk: bool = False
    # Not a reference key: written so that `saegov sae import` of our own folders finds it.
    # Reference loaders drop unknown keys.
    hookpoint: str | None = None

    @property
    def n_latents(self) -> int:
        return self.num_latents or self.d_in * self.expansion_factor

    @model_validator(mode="after")
    def _check(self) -> SaeConfig:
        if self.k > self.n_latents:
            raise ValueError(f"k={self.k} exceeds the number of latents {self.n_latents}")
        extra = self.model_extra or {}
        changed = [f"{key}={extra[key]}" for key, plain in FORWARD_OPTIONS.items()
                   if key in extra and extra[key] != plain]
        changed += [f"{key}=true" for key in ("sample_topk", "input_unit_norm") if getattr(self, key)]
        if changed:
            # Computed as a plain TopK SAE they would give other activations: every feature ID wrong.
            raise ValueError(f"unsupported SAE option {', '.join(changed)}: it changes the forward pass, "
                             "which saegov does not implement")
        return self

    def weight_shapes(self) -> dict[str, tuple[int, ...]]:
        dims = {"n": self.n_latents, "d": self.d_in}
        return {name: tuple(dims[s] for s in spec) for name, spec in WEIGHT_SHAPES.items()}

    def to_json_dict(self) -> dict[str, Any]:
        return self.model_dump(exclude_none=True)


def read_sae_config(folder: Path) -> tuple[SaeConfig, bytes]:
    """(config, the raw bytes of cfg.json) of an SAE folder."""
    path = Path(folder) / CFG_NAME
    if not path.is_file():
        raise FormatError(f"{folder}: missing {CFG_NAME}")
    raw = path.read_bytes()
    return parse_json_model(SaeConfig, raw, str(path)), raw


def write_sae_config(folder: Path, cfg: SaeConfig) -> None:
    (Path(folder) / CFG_NAME).write_text(json.dumps(cfg.to_json_dict(), indent=2, sort_keys=True) + "\n")
