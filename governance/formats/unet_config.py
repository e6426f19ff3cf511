"""A base model's `unet/config.json` (diffusers UNet2DConditionModel), read torch-free for its
hook points: which blocks exist and how many channels each outputs. Lets `sae import` check an
SAE's hook point and width against the base model at import, not at first use."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from governance.common.errors import FormatError
from governance.formats.validation import read_json_model


def strip_unet_prefix(hook_point: str) -> str:
    """SAeUron names its folders after the module path from the pipeline (`unet.up_blocks...`)."""
    return hook_point[len("unet."):] if hook_point.startswith("unet.") else hook_point


class UNetConfig(BaseModel):
    model_config = ConfigDict(extra="ignore")

    down_block_types: list[str]
    up_block_types: list[str]
    block_out_channels: list[int]
    layers_per_block: int | list[int] = 2
    mid_block_type: str | None = "UNetMidBlock2DCrossAttn"

    def _layers(self, i: int) -> int:
        return self.layers_per_block[i] if isinstance(self.layers_per_block, list) else self.layers_per_block

    def hook_points(self) -> dict[str, int]:
        """Every block with a 4-D output (transformer or resnet) -> its output channels."""
        out: dict[str, int] = {}
        for i, kind in enumerate(self.down_block_types):
            ch = self.block_out_channels[i]
            for j in range(self._layers(i)):
                out[f"down_blocks.{i}.resnets.{j}"] = ch
                if "CrossAttn" in kind:
                    out[f"down_blocks.{i}.attentions.{j}"] = ch
        if self.mid_block_type:
            ch = self.block_out_channels[-1]
            out.update({"mid_block.resnets.0": ch, "mid_block.resnets.1": ch})
            if "CrossAttn" in self.mid_block_type:
                out["mid_block.attentions.0"] = ch
        reversed_ch = list(reversed(self.block_out_channels))
        n = len(self.block_out_channels)
        for i, kind in enumerate(self.up_block_types):
            ch = reversed_ch[i]
            for j in range(self._layers(n - 1 - i) + 1):
                out[f"up_blocks.{i}.resnets.{j}"] = ch
                if "CrossAttn" in kind:
                    out[f"up_blocks.{i}.attentions.{j}"] = ch
        return out

    def check_hook_point(self, hook_point: str, d_in: int | None = None) -> None:
        points = self.hook_points()
        if hook_point not in points:
            raise FormatError(f"hook point {hook_point!r} is not a block of this UNet; valid: {', '.join(points)}")
        if d_in is not None and points[hook_point] != d_in:
            raise FormatError(f"hook point {hook_point} outputs {points[hook_point]} channels, the SAE reads {d_in}")


def read_unet_config(model_folder: Path) -> UNetConfig:
    path = Path(model_folder) / "unet" / "config.json"
    if not path.is_file():
        raise FormatError(f"{model_folder}: no unet/config.json to check hook points against")
    return read_json_model(UNetConfig, path)


def unet_config_dict(config: dict[str, Any]) -> UNetConfig:
    return UNetConfig.model_validate(config)
