"""The toy world's Stable Diffusion components: real diffusers/transformers classes, small sizes.

The UNet keeps SD 1.x's block naming, so `up_blocks.1.attentions.1` and `.2` are cross-attention
transformer blocks (an 8 x 8 map at the default 32 px), and every SD default of later commands
works unchanged.
"""
from __future__ import annotations

from pathlib import Path

from governance.common.jsonio import pretty_json
from governance.toyworld.grammar import vocabulary
from governance.toyworld.render import IMAGE_SIZE

MAX_TOKENS = 10  # "<bos> a red circle in striped style <eos>" is 8 tokens
TEXT_DIM = 64
LATENT_CHANNELS = 4
VAE_FACTOR = 2
LATENT_SIZE = IMAGE_SIZE // VAE_FACTOR
UNET_CHANNELS = (32, 64, 64)


def _bpe_for_words(words: list[str]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """A CLIP BPE vocabulary in which every grammar word merges into a single token."""
    vocab: dict[str, int] = {}

    def add(tok: str) -> None:
        if tok not in vocab:
            vocab[tok] = len(vocab)

    # Byte-level fallbacks so that any text still tokenizes (to unknown-ish pieces).
    for ch in "abcdefghijklmnopqrstuvwxyz0123456789":
        add(ch)
        add(ch + "</w>")
    merges: list[tuple[str, str]] = []
    for word in words:
        pieces = list(word[:-1]) + [word[-1] + "</w>"]
        while len(pieces) > 1:
            pair = (pieces[0], pieces[1])
            if pair not in merges:
                merges.append(pair)
            pieces = [pieces[0] + pieces[1]] + pieces[2:]
            add(pieces[0])
    add("<|startoftext|>")
    add("<|endoftext|>")
    return vocab, merges


def build_tokenizer():  # -> CLIPTokenizer
    from transformers import CLIPTokenizer

    vocab, merges = _bpe_for_words(vocabulary())
    # transformers 5 takes in-memory merges as a list of tuples.
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=MAX_TOKENS)


def build_text_encoder(vocab_size: int):  # -> CLIPTextModel
    from transformers import CLIPTextConfig, CLIPTextModel

    cfg = CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=TEXT_DIM,
        intermediate_size=2 * TEXT_DIM,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=MAX_TOKENS,
        projection_dim=TEXT_DIM,
        bos_token_id=vocab_size - 2,
        eos_token_id=vocab_size - 1,
        pad_token_id=vocab_size - 1,
    )
    return CLIPTextModel(cfg)


def build_unet():  # -> UNet2DConditionModel
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=LATENT_SIZE,
        in_channels=LATENT_CHANNELS,
        out_channels=LATENT_CHANNELS,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        block_out_channels=UNET_CHANNELS,
        layers_per_block=2,
        cross_attention_dim=TEXT_DIM,
        attention_head_dim=4,
        norm_num_groups=8,
    )


def build_vae():  # -> AutoencoderKL
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(32, 64),
        layers_per_block=1,
        latent_channels=LATENT_CHANNELS,
        norm_num_groups=8,
        sample_size=IMAGE_SIZE,
        mid_block_add_attention=False,
    )


def scheduler_config() -> dict[str, object]:
    """SD 1.x's noise schedule."""
    return {
        "num_train_timesteps": 1000,
        "beta_start": 0.00085,
        "beta_end": 0.012,
        "beta_schedule": "scaled_linear",
        "clip_sample": False,
        "set_alpha_to_one": False,
        "steps_offset": 1,
        "prediction_type": "epsilon",
    }


def build_scheduler():  # -> DDIMScheduler
    from diffusers import DDIMScheduler

    return DDIMScheduler(**scheduler_config())


def assemble_pipeline(unet, vae, text_encoder, tokenizer):  # -> StableDiffusionPipeline
    from diffusers import StableDiffusionPipeline

    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=build_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def build_untrained_pipeline(seed: int = 0):  # -> StableDiffusionPipeline
    """The toy architecture with random weights (tests, and the start of training)."""
    import torch

    torch.manual_seed(seed)
    tokenizer = build_tokenizer()
    return assemble_pipeline(build_unet(), build_vae(), build_text_encoder(len(tokenizer)), tokenizer)


def write_model_card(path: Path, info: dict[str, object]) -> None:
    (path / "toyworld.json").write_text(pretty_json(info))
