"""Specificity-aware selection (issue 14): a feature is chosen for how far it rises, on the
concept's images, above the most it ever shows on any other concept's images, and its gate is
set at that most, so that it is suppressed where the concept is and left alone elsewhere.

Why not the paper's score (governance.scoring.maths): `score = mu_c / sum mu_c - mu_not / sum mu_not`
compares spatial means against the pooled other concepts. On the toy world the top features by
that score are common ones (an "object interior" feature that fires on every shape, a little
more often on squares), and the gate, the mean over concepts of a spatial mean, is far below a
single token's activation, so the edit also fires on other concepts' images and wrecks them.

Here, per feature i and timestep t, from each image's peak (its largest activation over the
image's tokens, `ConceptStats.peaks`):
- `gate(i, t)   = quantile_q over the images of every other concept of the kind of peak(i, t)`;
  q = 1 (the default) is the largest: on the statistics images the feature never exceeds its
  gate on another concept of the kind, whose images cover every value of the other kinds.
- `score(i, t)  = mean over the concept's images of max(peak(i, t) - gate(i, t), 0)`: how far, on
  average, the feature rises above anything the other concepts show (0: it is not specific).
The scale stays the paper's `s_i = gamma * mu(i, t, c)`, so that gamma means the same thing in
both methods and the mapping format is unchanged.
"""
from __future__ import annotations

import torch

from governance.scoring.maths import FeatureChoice, scales


def calibrated_gates(other_peaks: list[torch.Tensor], quantile: float = 1.0) -> torch.Tensor:
    """[P_j, n, T] peaks of every other concept -> gates [n, T] (float64)."""
    if not 0.0 < quantile <= 1.0:
        raise ValueError(f"gate quantile must lie in (0, 1], got {quantile}")
    pooled = torch.cat([p.to(torch.float64) for p in other_peaks], dim=0)
    if quantile == 1.0:
        return pooled.amax(dim=0)
    return torch.quantile(pooled, quantile, dim=0, interpolation="linear")


def specificity_scores(target_peaks: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
    """[P, n, T] peaks of the concept's images and gates [n, T] -> scores [n, T] (>= 0)."""
    return (target_peaks.to(torch.float64) - gate[None]).clamp_min(0).mean(dim=0)


def choose_specific(
    mu_all: torch.Tensor,
    peaks: list[torch.Tensor],
    target: int,
    timesteps: list[int],
    gamma: float,
    top_n: int,
    gate_quantile: float = 1.0,
) -> tuple[list[FeatureChoice], torch.Tensor]:
    """The up-to-`top_n` most specific features of each timestep (score > 0 only), each with its
    calibrated gate and the paper's scale. Same contract as `maths.choose_features`."""
    k = mu_all.shape[0]
    if k < 2 or len(peaks) != k:
        raise ValueError("specific selection needs the peaks of the concept and of at least one other of its kind")
    n = mu_all.shape[1]
    if not 0 < top_n <= n:
        raise ValueError(f"top_n must lie in [1, {n}], got {top_n}")
    if mu_all.shape[2] != len(timesteps):
        raise ValueError(f"{mu_all.shape[2]} timestep columns for {len(timesteps)} timesteps")
    gate = calibrated_gates([peaks[j] for j in range(k) if j != target], gate_quantile)
    score = specificity_scores(peaks[target], gate)
    s = scales(mu_all[target], gamma)
    out: list[FeatureChoice] = []
    for col in sorted(range(len(timesteps)), key=lambda c: -timesteps[c]):
        order = torch.sort(score[:, col], descending=True, stable=True).indices[:top_n].tolist()
        out += [FeatureChoice(int(timesteps[col]), i, float(score[i, col]), float(s[i, col]), float(gate[i, col]))
                for i in order if score[i, col] > 0]
    return out, score
