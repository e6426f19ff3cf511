"""The scoring maths of SAEURON.md sections 3-4 on hand-made numbers."""
from __future__ import annotations

import pytest
import torch

from governance.scoring.maths import (
    choose_features,
    concept_scores,
    dense_sum_from_topk,
    gates,
    pooled_mean,
    scales,
    select_tau,
    select_top_n,
    spatial_prompt_mean,
)

torch.set_num_threads(1)


def test_dense_sum_from_topk_adds_repeated_indices() -> None:
    values = torch.tensor([[1.0, 2.0], [3.0, 0.5]])
    indices = torch.tensor([[0, 3], [3, 1]])
    assert dense_sum_from_topk(values, indices, 4).tolist() == [1.0, 0.5, 0.0, 5.0]


def test_spatial_then_prompt_mean() -> None:
    # 2 prompts x 2 tokens, 2 features
    codes = torch.tensor([[1.0, 0.0], [3.0, 0.0], [0.0, 4.0], [2.0, 0.0]])
    assert spatial_prompt_mean(codes, 2).tolist() == [1.5, 1.0]


def test_score_formula() -> None:
    mu_c = torch.tensor([[3.0], [1.0], [0.0]])  # sums to 4
    mu_not = torch.tensor([[1.0], [1.0], [2.0]])  # sums to 4
    got = concept_scores(mu_c, mu_not)[:, 0].tolist()
    expected = [3 / (4 + 1e-8) - 1 / (4 + 1e-8), 1 / (4 + 1e-8) - 1 / (4 + 1e-8), 0 - 2 / (4 + 1e-8)]
    assert got == pytest.approx(expected, abs=1e-15)
    # an all-zero column does not divide by zero
    assert concept_scores(torch.zeros(3, 1), torch.zeros(3, 1)).abs().sum().item() == 0.0


def test_pooled_mean_weights_by_prompt_count() -> None:
    mus = torch.tensor([[[1.0]], [[4.0]]])  # 2 concepts, 1 feature, 1 timestep
    assert pooled_mean(mus, torch.tensor([3, 1]))[0, 0].item() == pytest.approx((3 * 1 + 1 * 4) / 4)


def test_tau_threshold_is_linear_quantile_and_strict() -> None:
    # 5 values: quantile(0.8) with linear interpolation = 3 + 0.2 * (4 - 3) ... on sorted [0,1,2,3,4]
    # position 0.8 * 4 = 3.2 -> 3.2; only 4 is strictly above.
    scores = torch.tensor([[4.0], [0.0], [2.0], [3.0], [1.0]])
    assert select_tau(scores, 80.0)[:, 0].tolist() == [True, False, False, False, False]
    # quantile(0.75) = exactly 3.0: 3.0 itself is not selected (strict >)
    assert select_tau(scores, 75.0)[:, 0].tolist() == [True, False, False, False, False]
    assert select_tau(scores, 74.0)[:, 0].tolist() == [True, False, False, True, False]


def test_tau_is_per_timestep() -> None:
    scores = torch.tensor([[5.0, 0.0], [0.0, 5.0], [1.0, 1.0], [2.0, 2.0]])
    mask = select_tau(scores, 90.0)
    assert mask.tolist() == [[True, False], [False, True], [False, False], [False, False]]


def test_top_n_with_ties_prefers_lower_id() -> None:
    scores = torch.tensor([[1.0, 0.0], [3.0, 2.0], [3.0, 2.0], [0.0, 9.0]])
    assert select_top_n(scores, 2).tolist() == [[False, False], [True, True], [True, False], [False, True]]


def test_scale_and_gate() -> None:
    mu_all = torch.tensor([[[2.0]], [[0.0]], [[1.0]]])  # 3 concepts, 1 feature, 1 timestep
    assert scales(mu_all[0], -5.0).item() == -10.0
    assert gates(mu_all).item() == pytest.approx(1.0)  # target included in the mean


def test_choose_features_end_to_end() -> None:
    # 3 concepts, 4 features, 2 timesteps (values 901 and 1)
    mu_all = torch.tensor([
        [[4.0, 0.0], [0.0, 3.0], [1.0, 1.0], [0.0, 0.0]],  # target
        [[0.0, 1.0], [1.0, 1.0], [1.0, 1.0], [2.0, 0.0]],
        [[0.0, 1.0], [1.0, 1.0], [1.0, 1.0], [2.0, 0.0]],
    ])
    counts = torch.tensor([2, 2, 2])
    choices, score = choose_features(mu_all, counts, 0, [901, 1], gamma=-2.0, top_n=1)
    # t=901: target normalised [0.8, 0, 0.2, 0], others [0, .25, .25, .5]: feature 0 scores 0.8
    assert score[0, 0].item() == pytest.approx(4 / (5 + 1e-8))
    assert [(c.timestep, c.feature) for c in choices] == [(901, 0), (1, 1)]
    first = choices[0]
    assert first.scale == pytest.approx(-8.0)
    assert first.gate == pytest.approx(4.0 / 3.0)
    # t=1: target [0, .75, .25, 0] vs others [1/3, 1/3, 1/3, 0]; feature 1 wins with 0.75 - 1/3
    assert choices[1].score == pytest.approx(3 / (4 + 1e-8) - 1 / (3 + 1e-8))
    assert choices[1].gate == pytest.approx(5.0 / 3.0)


def test_choose_features_needs_another_concept_and_one_rule() -> None:
    with pytest.raises(ValueError, match="at least one other concept"):
        choose_features(torch.ones(1, 3, 1), torch.tensor([1]), 0, [1], -1.0, tau=50.0)
    with pytest.raises(ValueError, match="exactly one"):
        choose_features(torch.ones(2, 3, 1), torch.tensor([1, 1]), 0, [1], -1.0, tau=50.0, top_n=1)
