"""Per-concept SAE feature statistics mu(i, t, c) from running the base pipeline (SAEURON.md s. 3).

For each concept's prompts the pipeline runs with fixed seeds (prompt j of every concept uses
`seed + j`, so concepts are contrasted under the same noise); at the hook point the
conditional half of every UNet call is encoded with per-token TopK and each feature is averaged
over the spatial tokens, then over the prompts, keyed by the UNet's timestep value.

Alongside the paper's means, every image's peak (the largest activation of each feature over the
image's tokens, per timestep) is kept: what specificity-aware selection (governance.scoring.specificity)
calibrates its per-token gates on.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from governance.basemodel.hooks import (
    TimestepReader,
    add_named_hook,
    block_output_map,
    conditional_half,
    remove_hooks,
    resolve_hook_point,
    to_tokens,
)
from governance.scoring.maths import dense_sum_from_topk
from governance.scoring.selection import ScoringError

Progress = Callable[[int, int], None]  # (prompts done, prompts total)


@dataclass(frozen=True)
class ConceptPrompts:
    name: str
    prompts: tuple[str, ...]


@dataclass
class ConceptStats:
    names: list[str]
    timesteps: list[int]  # descending (the order a sampler visits them)
    mu: torch.Tensor  # [K, n, T] float64
    counts: torch.Tensor  # [K] prompts per concept
    # Per concept [P_k, n, T] float32: each image's largest activation of each feature over its
    # tokens. None for statistics made before peaks were kept.
    peaks: list[torch.Tensor] | None = None

    def index(self, name: str) -> int:
        return self.names.index(name)

    def with_target(self, name: str) -> ConceptStats:
        """The same statistics with `name` as concept 0 (what the selection functions expect)."""
        order = [self.index(name)] + [i for i, n in enumerate(self.names) if n != name]
        return ConceptStats(names=[self.names[i] for i in order], timesteps=self.timesteps, mu=self.mu[order],
                            counts=self.counts[order],
                            peaks=None if self.peaks is None else [self.peaks[i] for i in order])


class _Accumulator:
    """Forward hook: per timestep value, the sum over prompts of each prompt's spatial mean."""

    def __init__(self, reader: TimestepReader, sae: Any, keep_peaks: bool = True) -> None:
        self.reader = reader
        self.keep_peaks = keep_peaks
        self.sae = sae
        self.n_prompts = 0
        self.offset = 0  # index of the batch's first prompt within its concept
        self.sums: dict[int, torch.Tensor] = {}
        self.prompt_counts: dict[int, int] = {}
        self.peaks: dict[int, dict[int, torch.Tensor]] = {}  # timestep -> prompt -> [n]

    def reset(self) -> None:
        self.sums, self.prompt_counts, self.peaks = {}, {}, {}

    def __call__(self, module: Any, args: Any, output: Any) -> None:
        x = conditional_half(block_output_map(output), self.n_prompts)
        t = conditional_half(self.reader.current, self.n_prompts)  # type: ignore[arg-type]
        b, c, h, w = x.shape
        if c != self.sae.d_in:
            raise ScoringError(f"the hook point's map has {c} channels but the SAE's d_in is {self.sae.d_in}")
        tokens = to_tokens(x).to(self.sae.W_dec.device)
        with torch.no_grad():
            values, indices = self.sae.encode(tokens)  # per-token TopK (never Batch-TopK here)
        for tv in torch.unique(t).tolist():
            rows = torch.nonzero(t == tv).flatten().tolist()
            sel = torch.cat([torch.arange(r * h * w, (r + 1) * h * w) for r in rows]).to(values.device)
            # Sum of per-prompt spatial means = (sum over those prompts' tokens) / (h * w).
            s = dense_sum_from_topk(values[sel], indices[sel], self.sae.n_latents).cpu() / (h * w)
            self.sums[tv] = self.sums.get(tv, 0) + s
            self.prompt_counts[tv] = self.prompt_counts.get(tv, 0) + len(rows)
            if not self.keep_peaks:
                continue
            peaks = per_image_peak(values[sel], indices[sel], len(rows), self.sae.n_latents).cpu()
            at = self.peaks.setdefault(tv, {})
            for j, r in enumerate(rows):
                at[self.offset + r] = peaks[j]
        return None


def per_image_peak(values: torch.Tensor, indices: torch.Tensor, n_images: int, n_latents: int) -> torch.Tensor:
    """[n_images * H * W, k] TopK codes (image-major) -> [n_images, n]: each feature's largest
    activation over each image's tokens (0 where it never fires; codes are non-negative)."""
    tokens = values.shape[0] // n_images
    image = torch.arange(n_images, device=values.device).repeat_interleave(tokens)[:, None]
    flat = (image * n_latents + indices.to(torch.long)).reshape(-1)
    out = torch.zeros(n_images * n_latents, dtype=torch.float32, device=values.device)
    out.scatter_reduce_(0, flat, values.reshape(-1).to(torch.float32), reduce="amax", include_self=True)
    return out.reshape(n_images, n_latents)


def collect_concept_stats(
    pipe: Any,
    sae: Any,
    hook_point: str,
    concepts: Sequence[ConceptPrompts],
    *,
    steps: int,
    guidance: float,
    seed: int,
    batch_size: int = 8,
    height: int | None = None,
    width: int | None = None,
    progress: Progress | None = None,
    peaks: bool = True,
) -> ConceptStats:
    """`peaks=False` skips the per-image peaks ([P, n, T] float32 per concept: 4 MB per prompt at
    SD width and 50 steps), which only specificity-aware selection needs."""
    block = resolve_hook_point(pipe.unet, hook_point)
    reader = TimestepReader(pipe.unet, name="saegov.score.timestep")
    acc = _Accumulator(reader, sae, keep_peaks=peaks)
    device = pipe.unet.device
    total = sum(len(c.prompts) for c in concepts)
    done = 0
    per_concept: list[tuple[dict[int, torch.Tensor], dict[int, int]]] = []
    try:
        reader.attach()
        add_named_hook(block, "saegov.score.capture", acc)
        for c in concepts:
            acc.reset()
            for b0 in range(0, len(c.prompts), batch_size):
                batch = list(c.prompts[b0:b0 + batch_size])
                acc.n_prompts, acc.offset = len(batch), b0
                gens = [torch.Generator(device="cpu" if device.type == "cpu" else device).manual_seed(seed + b0 + j)
                        for j in range(len(batch))]
                pipe(batch, num_inference_steps=steps, guidance_scale=guidance, generator=gens,
                     height=height, width=width, output_type="latent")
                done += len(batch)
                if progress:
                    progress(done, total)
            per_concept.append((acc.sums, acc.prompt_counts, acc.peaks))
    finally:
        remove_hooks(block, "saegov.score.capture")
        reader.remove()

    timesteps = sorted(per_concept[0][0], reverse=True)
    for name, (sums, _, _) in zip((c.name for c in concepts), per_concept):
        if sorted(sums, reverse=True) != timesteps:
            raise ScoringError(f"concept {name!r} was sampled at other timesteps than {concepts[0].name!r}")
    mu = torch.stack([
        torch.stack([sums[t] / counts[t] for t in timesteps], dim=1) for sums, counts, _ in per_concept
    ]).to(torch.float64)
    kept = [torch.stack([torch.stack([pk[t][p] for p in range(len(c.prompts))]) for t in timesteps], dim=2)
            for c, (_, _, pk) in zip(concepts, per_concept)] if peaks else None
    return ConceptStats(names=[c.name for c in concepts], timesteps=timesteps, mu=mu,
                        counts=torch.tensor([len(c.prompts) for c in concepts]), peaks=kept)
