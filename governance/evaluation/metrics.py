"""UnlearnCanvas-style evaluation on the toy world (SAEURON.md section 5).

For a target concept c, a value of the toy world's attribute A (colour, shape or style; the
registry calls the shapes' kind `object`), over the deployment's images:
- UA  = 1 - accuracy of the A classifier on images whose prompt contains c;
- IRA = accuracy of the A classifier on images of the other concepts of A;
- CRA = accuracy of every other attribute's classifier on the same images.
An image whose prompt holds another *blocked* concept is left out of the IRA / CRA term that
concept's attribute would judge, so one target's removal never counts against another's retention.
"""
from __future__ import annotations

from dataclasses import dataclass
from collections.abc import Sequence
from typing import Any, Callable

import numpy as np

from governance.toyworld.classify import classify
from governance.toyworld.grammar import ATTRIBUTES, ToyPrompt, all_prompts, attribute_of, registry_kind


@dataclass
class Judged:
    prompt: ToyPrompt
    seed: int
    image: np.ndarray
    colour: str | None
    shape: str | None
    style: str | None

    def correct(self, attribute: str) -> bool:
        return getattr(self, attribute) == getattr(self.prompt, attribute)


def judge(images: list[np.ndarray], jobs: list[tuple[ToyPrompt, int]]) -> list[Judged]:
    out = []
    for (p, s), img in zip(jobs, images):
        pred = classify(img)
        out.append(Judged(p, s, img, pred.colour, pred.shape, pred.style))
    return out


def generate_jobs(pipe: Any, jobs: Sequence[tuple[ToyPrompt | str, int]], steps: int, guidance: float,
                  batch: int = 32, progress: Callable[[int, int], None] | None = None,
                  traces: list | None = None) -> list[np.ndarray]:
    """(prompt or its text, seed) jobs -> images, in batches, each image from its own seed; an
    enforced pipeline's per-image traces go to `traces` when given, in the same order."""
    from governance.toyworld.quality import generate

    images: list[np.ndarray] = []
    for i in range(0, len(jobs), batch):
        chunk = jobs[i:i + batch]
        images += generate(pipe, [p if isinstance(p, str) else p.text for p, _ in chunk], [s for _, s in chunk],
                           steps, guidance, traces=traces)
        if progress:
            progress(len(images), len(jobs))
    return images


EVAL_SEEDS: tuple[int, ...] = (0, 1)


def eval_jobs(seeds: tuple[int, ...] = EVAL_SEEDS) -> list[tuple[ToyPrompt, int]]:
    """Styled prompts only, so that every kind can be judged on every image."""
    return [(p, s) for p in all_prompts(include_style_free=False) for s in seeds]


def _acc(items: list[Judged], attribute: str) -> float | None:
    return float(np.mean([j.correct(attribute) for j in items])) if items else None


def unlearning_metrics(judged: list[Judged], targets: list[str]) -> dict[str, dict[str, Any]]:
    """Per target: `kind` (the registry's: colour, object, style), `attribute` (the judged one:
    colour, shape, style), UA, IRA, CRA, `CRA_by_kind` (keyed by the other attributes), counts."""
    blocked = set(targets)
    out: dict[str, dict[str, Any]] = {}
    for c in targets:
        attr = attribute_of(c)
        target_imgs = [j for j in judged if getattr(j.prompt, attr) == c]
        # IRA counts the other concepts of the kind, as UnlearnCanvas does; an attribute the prompt
        # leaves out (its neutral value) is no concept.
        others = [j for j in judged if getattr(j.prompt, attr) not in blocked | {c, None}]
        cra_parts = {}
        for other in ATTRIBUTES:
            if other == attr:
                continue
            # Retention includes the neutral values: a style-free prompt must keep its blank
            # background, so a point that paints over it is not scored as harmless.
            pool = [j for j in judged if getattr(j.prompt, other) not in blocked]
            cra_parts[other] = _acc(pool, other)
        acc_t = _acc(target_imgs, attr)
        cra_vals = [v for v in cra_parts.values() if v is not None]
        out[c] = {
            "kind": registry_kind(c),
            "attribute": attr,
            "UA": None if acc_t is None else 1.0 - acc_t,
            "IRA": _acc(others, attr),
            "CRA": float(np.mean(cra_vals)) if cra_vals else None,
            "CRA_by_kind": cra_parts,
            "n_target_images": len(target_imgs),
            "misses": sorted({f"{j.prompt.text} (seed {j.seed})" for j in target_imgs if j.correct(attr)})[:10],
        }
    return out
