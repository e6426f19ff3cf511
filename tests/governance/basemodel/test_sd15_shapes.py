"""Real SD 1.5 shapes (random weights, no download): collection at 512 px resolves the SAeUron
hook points to 16 x 16 maps of 1280 channels, and a reference-size SAE (x16, k=32) encodes them."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from governance.activations.collect import CollectConfig, collect_with_pipeline
from governance.formats.sae_config import SaeConfig
from governance.sae.model import TopKSAE
from governance.basemodel.sd15 import build_sd15_shaped_pipeline, config_hash

torch.set_num_threads(1)


@pytest.mark.slow
def test_sd15_hook_points_and_reference_sae(tmp_path: Path) -> None:
    pipe = build_sd15_shaped_pipeline()
    pipe.set_progress_bar_config(disable=True)
    n_params = sum(p.numel() for p in pipe.unet.parameters())
    assert 855_000_000 < n_params < 866_000_000  # SD 1.5's UNet: 859.5 M
    torch.manual_seed(0)
    sae = TopKSAE(SaeConfig(d_in=1280, expansion_factor=16, k=32))
    assert sae.n_latents == 20480
    for hook in ("up_blocks.1.attentions.1", "up_blocks.1.attentions.2"):
        out = tmp_path / hook
        m = collect_with_pipeline(pipe, config_hash(), CollectConfig(
            model="sd15-architecture", hook_point=hook, prompts=["a red circle"], out=out, steps=1,
            guidance=9.0, seed=0))
        assert (m.params.height, m.params.width) == (512, 512)
        assert m.d_in == 1280 and m.spatial_shape == (16, 16) and m.total_rows == 256
        x = load_file(str(out / m.shards[0].file))["activations"]
        assert x.shape == (256, 1280) and x.dtype == torch.float16
        with torch.no_grad():
            values, indices = sae.encode(x.float())
            recon = sae.decode(sae.encode_dense(x.float()))
        assert values.shape == (256, 32) and int(indices.max()) < 20480
        assert (sae.encode_dense(x.float()) > 0).sum(dim=1).max().item() <= 32
        assert recon.shape == (256, 1280)
