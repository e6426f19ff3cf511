"""Where a blocklist acted, per concept, from the per-image traces (governance.evaluation.firing)."""
from __future__ import annotations

import pytest

from governance.evaluation.firing import firing_rates
from governance.formats.trace import Suppression, Trace, TraceDeployment, UnetCall
from governance.toyworld.grammar import parse_prompt

DEPLOYMENT = TraceDeployment(path="d", manifest_sha256="0" * 64, deployment_id=1, blocklist="b@1", built_by="erin",
                             built_at="2026-12-07T00:00:00Z")


def trace(per_step: list[list[tuple[str, list[str]]]]) -> Trace:
    """One UNet call per item: the (concept, halves) suppressed in it."""
    calls = [UnetCall(timestep=999 - 10 * i, suppressed=[
        Suppression(hook_point="h", feature=7, concept=c, mapping_id=1, approval_review_id=2, scored_timestep=1,
                    halves=halves) for c, halves in step]) for i, step in enumerate(per_step)]
    return Trace(deployment=DEPLOYMENT, prompt_sha256="1" * 64, seed=0, unet_calls=calls)


def test_rates_count_the_prompts_half_and_split_own_from_other_images() -> None:
    prompts = [parse_prompt(t) for t in ("a red circle in plain style", "a red square in dotted style",
                                         "a blue circle in plain style", "a green cross in dotted style")]
    traces = [
        trace([[("red", ["cond"])], [("red", ["uncond", "cond"])], [], []]),  # red image: 2 of 4 steps
        trace([[], [], [], []]),  # red image, never suppressed
        trace([[("red", ["uncond"])], [("red", ["cond"])], [], []]),  # blue image: 1 step in its prompt's half
        trace([[("red", ["uncond"])], [("dotted", ["cond"])], [], []]),  # only the other half, another concept
    ]
    rates = firing_rates(traces, prompts, ["red", "dotted"])
    assert rates["red"] == {"images_own": 0.5, "steps_own": pytest.approx((2 / 4 + 0) / 2), "n_own": 2,
                            "images_other": 0.5, "steps_other": pytest.approx((1 / 4 + 0) / 2), "n_other": 2}
    assert rates["dotted"]["images_own"] == 0.5 and rates["dotted"]["n_own"] == 2
    assert rates["dotted"]["images_other"] == 0.0 and rates["dotted"]["steps_other"] == 0.0


def test_rates_refuse_traces_that_do_not_match_the_images() -> None:
    with pytest.raises(ValueError, match="1 traces for 2 images"):
        firing_rates([trace([[]])], [parse_prompt("a red circle"), parse_prompt("a blue circle")], ["red"])
