"""The Stable Diffusion 1.5 UNet architecture from its well-known config, with random weights.

Used to check, without downloading anything, that hook points and SAE sizes line up with real
SD shapes (SAEURON.md section 1: `up_blocks.1.attentions.1/.2` -> [B, 1280, 16, 16] at 512 px).
The text encoder and VAE are small stand-ins with the right interface widths (768-d text
states; an 8x VAE factor so 512 px -> a 64 x 64 latent); only the UNet is full size.
"""
from __future__ import annotations

from typing import Any

SD15_UNET_CONFIG: dict[str, Any] = {
    "sample_size": 64,
    "in_channels": 4,
    "out_channels": 4,
    "down_block_types": ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    "block_out_channels": (320, 640, 1280, 1280),
    "layers_per_block": 2,
    "cross_attention_dim": 768,
    "attention_head_dim": 8,
    "norm_num_groups": 32,
}
SD15_SCHEDULER_CONFIG: dict[str, Any] = {
    "num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
    "clip_sample": False, "set_alpha_to_one": False, "steps_offset": 1, "prediction_type": "epsilon",
}


def build_sd15_shaped_pipeline(seed: int = 0) -> Any:  # -> StableDiffusionPipeline
    from governance.basemodel.loading import quiet_libraries

    quiet_libraries()  # before diffusers' pipelines are imported: some hints come at import time
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from governance.toyworld.model import build_tokenizer

    torch.manual_seed(seed)
    tokenizer = build_tokenizer()  # offline; any CLIP tokenizer works, only the widths matter here
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=768, intermediate_size=768, num_hidden_layers=1,
        num_attention_heads=12, max_position_embeddings=tokenizer.model_max_length,
        bos_token_id=len(tokenizer) - 2, eos_token_id=len(tokenizer) - 1, pad_token_id=len(tokenizer) - 1))
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, norm_num_groups=8, layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 8, 8, 8), sample_size=512)
    unet = UNet2DConditionModel(**SD15_UNET_CONFIG)
    return StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
        scheduler=DDIMScheduler(**SD15_SCHEDULER_CONFIG), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False)


def config_hash() -> str:
    """Stands in for the base model hash of a random-weight pipeline (there is no folder to hash)."""
    from governance.common.hashing import sha256_text
    from governance.common.jsonio import canonical_json

    return sha256_text(canonical_json({"unet": SD15_UNET_CONFIG, "scheduler": SD15_SCHEDULER_CONFIG}))
