"""UA / IRA / CRA bookkeeping (SAEURON.md section 5) on hand-made judgements."""
from __future__ import annotations

import numpy as np
import pytest

from governance.evaluation.metrics import Judged, unlearning_metrics
from governance.toyworld.grammar import ToyPrompt

IMG = np.zeros((2, 2, 3), dtype=np.uint8)


def j(prompt: ToyPrompt, colour: str | None, shape: str | None, style: str | None) -> Judged:
    return Judged(prompt, 0, IMG, colour, shape, style)


def test_colour_target() -> None:
    judged = [
        j(ToyPrompt("red", "circle", "plain"), "blue", "circle", "plain"),      # red removed
        j(ToyPrompt("red", "square", "dotted"), "red", "cross", "dotted"),     # red kept, shape lost
        j(ToyPrompt("green", "circle", "plain"), "green", "circle", "plain"),
        j(ToyPrompt("blue", "circle", "striped"), "red", "circle", "striped"),  # collateral damage
        j(ToyPrompt("green", "cross", None), "green", "cross", "dotted"),       # style-free: blank lost
        j(ToyPrompt("blue", "cross", None), "blue", "cross", None),             # style-free: blank kept
    ]
    m = unlearning_metrics(judged, ["red"])["red"]
    assert m["UA"] == pytest.approx(0.5) and m["n_target_images"] == 2
    assert m["IRA"] == pytest.approx(3 / 4)
    assert m["CRA_by_kind"] == {"shape": pytest.approx(5 / 6), "style": pytest.approx(5 / 6)}
    assert m["CRA"] == pytest.approx(5 / 6)


def test_style_target_ignores_style_free_prompts_and_other_blocked_concepts() -> None:
    judged = [
        j(ToyPrompt("red", "circle", "dotted"), "red", "circle", "plain"),
        j(ToyPrompt("red", "circle", "plain"), "red", "circle", "plain"),
        j(ToyPrompt("green", "circle", None), "green", "circle", "dotted"),
        j(ToyPrompt("blue", "circle", "striped"), "blue", "circle", "plain"),
    ]
    m = unlearning_metrics(judged, ["dotted", "blue"])
    assert m["dotted"]["UA"] == 1.0
    assert m["dotted"]["IRA"] == pytest.approx(0.5)  # plain and striped, not the style-free prompt
    # Blue is blocked too: its image does not count for dotted's colour retention.
    assert m["dotted"]["CRA_by_kind"]["colour"] == pytest.approx(1.0)
    assert m["blue"]["UA"] == 0.0 and m["blue"]["IRA"] == pytest.approx(1.0)


def test_sweep_seed_clashes_reads_only_sweep_tables() -> None:
    """Evaluation refuses seeds a styled sweep used; free-form evidence is never a crash."""
    import json

    from governance.evaluation.deployment import sweep_seed_clashes

    styled = {"prompts": "styled wording, sweep seeds", "seeds": [100, 101]}
    style_free = {"prompts": "style-free wording", "seeds": [0, 1]}
    evidence = {
        1: [{"kind": "sweep", "ref": json.dumps(styled)}, {"kind": "note", "ref": "seeds 0,1"}],
        2: [{"kind": "sweep", "ref": json.dumps(style_free)}],
        3: [{"kind": "sweep", "ref": "https://example.org/sweep"}, {"kind": "sweep", "ref": "[1, 2]"},
            {"kind": "sweep", "ref": json.dumps({"prompts": "styled", "seeds": 5})}, {"kind": "sweep"}],
    }
    assert sweep_seed_clashes(evidence, (0, 1)) == []
    assert sweep_seed_clashes(evidence, (101, 7)) == ["mapping 1 (seeds 101)"]
