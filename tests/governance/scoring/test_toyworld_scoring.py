"""On the trained toy world: the features `concept score` selects for a colour fire on images of
that colour far more than on the other colours.

Pipeline: collect activations of every colour prompt (10 DDIM steps, CFG 9) at the hook point the
demo blocks colours at -> train a small SAE (x4, k 8) -> per-timestep statistics of each colour
(seed 0) -> top-2 features per timestep -> firing of those (timestep, feature) pairs on fresh
generations (seed 1000) of each colour's prompts, grouped by the prompted colour. Skipped (with
the reason) while the trained toy world is not installed; the untrained architecture is not
expected to separate colours.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)

STEPS = 10
# `saegov demo` blocks colours at `.2`, where colour blocking measured best (docs/evaluation.md);
# at `.1` the same pipeline measures red 3.01, green 2.19, blue 1.83, yellow 2.16.
HOOK = "up_blocks.1.attentions.2"
# Measured on the committed toy world v2 (small x4, k=8 SAE) at `.2`: red 4.34, green 3.02,
# blue 3.90, yellow 2.00 (mean 3.31). Yellow is the weakest because its RGB (225, 205, 30) is red
# light plus green light: its features also fire on red (0.75 of their yellow level), while
# red's fire on green and blue at 10 % and 5 % of their red level (the matrix the test prints).
MIN_RATIO = 1.6
MEAN_RATIO = 2.6


def _trained_toy_world() -> Path | None:
    try:
        from governance.toyworld.paths import default_pipeline_path, is_trained
    except ImportError:
        return None
    return default_pipeline_path() if is_trained() else None


def colour_selectivity(model: str, work: Path, steps: int = STEPS) -> dict[str, list[float]]:
    """{colour: mean firing of its selected features on each colour (in COLOURS order) / on its own}."""
    from governance.activations.collect import CollectConfig, collect
    from governance.basemodel.loading import load_pipeline
    from governance.scoring.statistics import ConceptPrompts, collect_concept_stats
    from governance.sae.data import open_dataset
    from governance.sae.trainer import TrainConfig, train_sae
    from governance.scoring.maths import choose_features
    from governance.toyworld.grammar import COLOURS, SHAPES

    def prompts_of(colour: str) -> tuple[str, ...]:
        # 4 shapes x (style-free, striped): 8 prompts per colour
        return tuple(t for s in SHAPES for t in (f"a {colour} {s}", f"a {colour} {s} in striped style"))

    concepts = [ConceptPrompts(c, prompts_of(c)) for c in COLOURS]
    all_prompts = [p for c in concepts for p in c.prompts]
    collect(CollectConfig(model=model, hook_point=HOOK, prompts=all_prompts, out=work / "acts", steps=steps,
                          guidance=9.0, seed=0, prompts_per_shard=16))
    result = train_sae(open_dataset(work / "acts"),
                       TrainConfig(expansion_factor=4, k=8, epochs=4, batch_tokens=1024, device="cpu",
                                   eval_tokens=8192))
    sae = result.sae.eval()
    pipe, _ = load_pipeline(model)
    stats = collect_concept_stats(pipe, sae, HOOK, concepts, steps=steps, guidance=9.0, seed=0)
    held_out = collect_concept_stats(pipe, sae, HOOK, concepts, steps=steps, guidance=9.0, seed=1000)
    assert held_out.timesteps == stats.timesteps
    matrix: dict[str, list[float]] = {}
    for k, colour in enumerate(stats.names):
        choices, _ = choose_features(stats.mu, stats.counts, k, stats.timesteps, -1.0, top_n=2)
        cols = [stats.timesteps.index(c.timestep) for c in choices]
        feats = [c.feature for c in choices]
        fire = held_out.mu[:, feats, cols].mean(dim=1)  # [K]: mean over the selected pairs
        matrix[colour] = [float(f / fire[k].clamp_min(1e-12)) for f in fire]
    return matrix


def own_vs_others(matrix: dict[str, list[float]]) -> dict[str, float]:
    """{colour: firing on its own colour / mean firing on the other colours}."""
    return {c: 1.0 / max(sum(v for j, v in enumerate(row) if j != k) / (len(row) - 1), 1e-12)
            for k, (c, row) in enumerate(matrix.items())}


@pytest.mark.skipif(_trained_toy_world() is None,
                    reason="the trained toy world is not installed (governance/toyworld/weights); "
                           "an untrained model has no colour features to find")
def test_selected_colour_features_fire_on_their_colour(tmp_path: Path) -> None:
    model = _trained_toy_world()
    matrix = colour_selectivity(str(model), tmp_path)
    ratios = own_vs_others(matrix)
    print("own-colour / other-colours firing ratio:", {c: round(r, 2) for c, r in ratios.items()})
    print("firing on each colour / on its own:", {c: [round(v, 3) for v in row] for c, row in matrix.items()})
    assert min(ratios.values()) > MIN_RATIO, ratios
    assert sum(ratios.values()) / len(ratios) > MEAN_RATIO, ratios
    for k, (colour, row) in enumerate(matrix.items()):
        # every colour's features fire most on that colour, never as much on any other
        assert max(v for j, v in enumerate(row) if j != k) < 0.85, (colour, row)


if __name__ == "__main__":  # measure on any pipeline folder: python tests/test_toyworld_scoring.py PATH
    import sys
    import tempfile

    sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
    with tempfile.TemporaryDirectory() as d:
        m = colour_selectivity(sys.argv[1], Path(d))
        print(own_vs_others(m), m)
