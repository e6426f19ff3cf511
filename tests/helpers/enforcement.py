"""Helpers for enforcement tests: a random SAE on the toy hook point, and blocklists that fire
(the toy pipeline itself is a fixture of tests/conftest.py)."""
from __future__ import annotations

from pathlib import Path

import torch

from governance.formats.blocklist import Approval, BlockedConcept, BlocklistSpec, SaeRef
from governance.formats.sae_config import SaeConfig
from governance.sae.model import TopKSAE
from governance.formats.mapping import FeatureEntry

HOOK = "up_blocks.1.attentions.1"


def load_pipe(path: Path):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(str(path), safety_checker=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def random_sae(d_in: int = 64, expansion: int = 4, k: int = 8, seed: int = 0) -> TopKSAE:
    torch.manual_seed(seed)
    sae = TopKSAE(SaeConfig(d_in=d_in, expansion_factor=expansion, k=k))
    with torch.no_grad():
        sae.encoder.bias.normal_(0, 0.1)
        sae.b_dec.normal_(0, 0.1)
    return sae


def ddim_timesteps(steps: int) -> list[int]:
    from governance.toyworld.model import build_scheduler

    sch = build_scheduler()
    sch.set_timesteps(steps)
    return [int(t) for t in sch.timesteps]


def spec_for(features: list[int], steps: int = 10, scale: float = -1.0, gate: float = 0.0,
             concept: str = "red", mapping_id: int = 1, sae: TopKSAE | None = None) -> BlocklistSpec:
    ts = {t: [FeatureEntry(feature=f, score=0.1, scale=scale, gate=gate) for f in features] for t in ddim_timesteps(steps)}
    return BlocklistSpec(
        name="test", version=1, sae=SaeRef(hook_point=HOOK),
        entries=[BlockedConcept(concept=concept, kind="colour", mapping_id=mapping_id, gamma=-1.0,
                                scheduler="DDIMScheduler", num_steps=steps,
                                approval=Approval(review_id=7, by="rob", justification="test"),
                                timesteps=ts)] if features else [],
    )


def frequent_features_at(pipe, sae: TopKSAE, hook: str, prompt: str = "a red circle", n: int = 3,
                         steps: int = 4) -> list[int]:
    """The features most often in the per-token TopK at hook point `hook`."""
    from governance.basemodel.hooks import block_output_map, to_tokens

    counts = torch.zeros(sae.n_latents)

    def hook_fn(module, args, out) -> None:
        _, idx = sae.encode(to_tokens(block_output_map(out)))
        counts.add_(torch.bincount(idx.flatten(), minlength=sae.n_latents).float())

    h = pipe.unet.get_submodule(hook).register_forward_hook(hook_fn)
    try:
        pipe(prompt, num_inference_steps=steps, generator=torch.Generator().manual_seed(0))
    finally:
        h.remove()
    return counts.topk(n).indices.tolist()


def frequent_features(pipe, sae: TopKSAE, prompt: str = "a red circle", n: int = 3, steps: int = 4) -> list[int]:
    """The features most often in the per-token TopK at the hook point."""
    return frequent_features_at(pipe, sae, HOOK, prompt=prompt, n=n, steps=steps)
