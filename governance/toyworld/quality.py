"""The toy world's own text-to-image quality (`saegov toyworld eval`), measured with its exact
classifiers: how often an image shows the colour, shape and style its prompt asks for."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Iterable

import numpy as np

from governance.toyworld.classify import classify
from governance.toyworld.grammar import ToyPrompt, all_prompts

# The documented generation defaults of the toy world.
DEFAULT_STEPS = 25
DEFAULT_GUIDANCE = 7.5
DEFAULT_SEEDS = (0, 1, 2)


@dataclass
class QualityResult:
    steps: int
    guidance: float
    seeds: tuple[int, ...]
    n_images: int = 0
    colour_correct: int = 0
    shape_correct: int = 0
    style_correct: int = 0
    seconds: float = 0.0
    misses: dict[str, int] = field(default_factory=dict)

    @property
    def colour_accuracy(self) -> float:
        return self.colour_correct / max(self.n_images, 1)

    @property
    def shape_accuracy(self) -> float:
        return self.shape_correct / max(self.n_images, 1)

    @property
    def style_accuracy(self) -> float:
        return self.style_correct / max(self.n_images, 1)

    @property
    def seconds_per_image(self) -> float:
        return self.seconds / max(self.n_images, 1)

    def as_dict(self) -> dict[str, object]:
        return {
            "steps": self.steps,
            "guidance": self.guidance,
            "seeds": list(self.seeds),
            "images": self.n_images,
            "colour_accuracy": self.colour_accuracy,
            "shape_accuracy": self.shape_accuracy,
            "style_accuracy": self.style_accuracy,
            "seconds_per_image": self.seconds_per_image,
            "misses": dict(sorted(self.misses.items())),
        }


def generate(pipe, prompts: list[str], seeds: list[int], steps: int, guidance: float,
             traces: list | None = None) -> list[np.ndarray]:
    """One image per (prompt, seed) pair, each from its own seeded generator; an enforced
    pipeline's per-image traces are appended to `traces` when given."""
    import torch

    gens = [torch.Generator().manual_seed(s) for s in seeds]
    out = pipe(prompts, num_inference_steps=steps, guidance_scale=guidance, generator=gens, output_type="np")
    if traces is not None:
        traces.extend(out.trace_records)
    return [(img * 255).round().clip(0, 255).astype(np.uint8) for img in out.images]


def measure_quality(
    pipe,
    prompts: Iterable[ToyPrompt] | None = None,
    seeds: Iterable[int] = DEFAULT_SEEDS,
    steps: int = DEFAULT_STEPS,
    guidance: float = DEFAULT_GUIDANCE,
    batch: int = 32,
    progress: Callable[[int, int], None] | None = None,
) -> QualityResult:
    seeds = tuple(seeds)
    plist = list(prompts) if prompts is not None else all_prompts()
    jobs = [(p, s) for p in plist for s in seeds]
    res = QualityResult(steps=steps, guidance=guidance, seeds=seeds)
    pipe.set_progress_bar_config(disable=True)
    t0 = time.perf_counter()
    for start in range(0, len(jobs), batch):
        chunk = jobs[start : start + batch]
        images = generate(pipe, [p.text for p, _ in chunk], [s for _, s in chunk], steps, guidance)
        for (p, _), img in zip(chunk, images):
            pred = classify(img)
            res.n_images += 1
            # An omitted attribute is expected as its neutral value, which the classifiers report as None.
            for kind in ("colour", "shape", "style"):
                want = getattr(p, kind)
                ok = getattr(pred, kind) == want
                setattr(res, f"{kind}_correct", getattr(res, f"{kind}_correct") + ok)
                if not ok:
                    key = f"{kind}:{want or 'neutral'}"
                    res.misses[key] = res.misses.get(key, 0) + 1
        if progress:
            progress(min(start + batch, len(jobs)), len(jobs))
    res.seconds = time.perf_counter() - t0
    return res
