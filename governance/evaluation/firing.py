"""Where a blocklist acts: per blocked concept, on which evaluation images its features were
suppressed, read from the per-image traces the enforced pipeline writes.

UA / IRA / CRA judge the images. They cannot tell a blocklist that leaves other images alone
from one that edits them too lightly to change what a classifier sees. A feature selected for red
that is suppressed on half the tokens of blue images is the second kind (docs/performance.md:
the demo's features fire on images with neither blocked concept). This is the auditor's
question "where did it act", answered on the evaluation's own images.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from governance.formats.trace import Trace
from governance.toyworld.grammar import ToyPrompt, attribute_of


def _cond_steps(trace: Trace, concept: str) -> int:
    """UNet calls of the image in which a feature of `concept` was suppressed in the prompt's
    (conditional) half; without guidance the one half is the conditional one."""
    return sum(1 for call in trace.unet_calls
               if any(s.concept == concept and "cond" in s.halves for s in call.suppressed))


def firing_rates(traces: Sequence[Trace], prompts: Sequence[ToyPrompt], targets: Sequence[str]
                 ) -> dict[str, dict[str, Any]]:
    """Per target: `images_own` / `images_other`, the share of the images whose prompt names the
    concept (does not name it) in which its features were suppressed at any step;
    `steps_own` / `steps_other`, the mean share of denoising steps in which they were."""
    if len(traces) != len(prompts):
        raise ValueError(f"{len(traces)} traces for {len(prompts)} images")
    out: dict[str, dict[str, Any]] = {}
    for c in targets:
        attr = attribute_of(c)
        rows: dict[str, list[tuple[int, int]]] = {"own": [], "other": []}
        for trace, prompt in zip(traces, prompts):
            rows["own" if getattr(prompt, attr) == c else "other"].append(
                (_cond_steps(trace, c), len(trace.unet_calls)))
        m: dict[str, Any] = {}
        for side, items in rows.items():
            m[f"images_{side}"] = sum(1 for f, _ in items if f) / len(items) if items else None
            m[f"steps_{side}"] = sum(f / n for f, n in items if n) / len(items) if items else None
            m[f"n_{side}"] = len(items)
        out[c] = m
    return out
