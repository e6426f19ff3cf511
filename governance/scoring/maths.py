"""Concept scoring and feature selection (SAEURON.md sections 3-4), as pure tensor functions.

Shapes: n = SAE latents, T = timesteps (columns ordered as the `timesteps` list), K = concepts.
All statistics are float64 so that tiny means of sparse features do not lose precision.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from governance.formats.sweep import ASSIGNED_GATE_RULES, AssignedGate  # the gate rule's one definition

EPS = 1e-8


def dense_sum_from_topk(values: torch.Tensor, indices: torch.Tensor, n_latents: int) -> torch.Tensor:
    """Sum over tokens of per-token TopK codes given sparsely: [N, k] values/indices -> [n]."""
    out = torch.zeros(n_latents, dtype=torch.float64, device=values.device)
    out.index_add_(0, indices.reshape(-1).to(torch.long), values.reshape(-1).to(torch.float64))
    return out


def spatial_prompt_mean(codes: torch.Tensor, n_prompts: int) -> torch.Tensor:
    """mu over one timestep: [n_prompts * H * W, n] dense codes -> [n].

    Averages over the spatial tokens of each prompt, then over prompts (equal to the plain token
    mean because every prompt has H * W tokens, but written as the paper defines it).
    """
    per_prompt = codes.to(torch.float64).reshape(n_prompts, -1, codes.shape[-1]).mean(dim=1)
    return per_prompt.mean(dim=0)


def concept_scores(mu_c: torch.Tensor, mu_not: torch.Tensor) -> torch.Tensor:
    """score(i,t,c) = mu(i,t,c)/(sum_j mu(j,t,c) + 1e-8) - mu(i,t,~c)/(sum_j mu(j,t,~c) + 1e-8); [n, T]."""
    mu_c, mu_not = mu_c.to(torch.float64), mu_not.to(torch.float64)
    return mu_c / (mu_c.sum(dim=0, keepdim=True) + EPS) - mu_not / (mu_not.sum(dim=0, keepdim=True) + EPS)


def pooled_mean(mus: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Mean over the pooled prompts of several concepts: [K, n, T] with prompt counts [K] -> [n, T]."""
    w = counts.to(torch.float64) / counts.sum()
    return (mus.to(torch.float64) * w[:, None, None]).sum(dim=0)


def select_tau(scores: torch.Tensor, tau: float) -> torch.Tensor:
    """Boolean [n, T]: score(i, t) > quantile(score(:, t), tau / 100) (linear interpolation, strict)."""
    if not 0.0 < tau < 100.0:
        raise ValueError(f"tau must lie in (0, 100), got {tau}")
    thr = torch.quantile(scores.to(torch.float64), tau / 100.0, dim=0, interpolation="linear")
    return scores > thr[None, :]


def select_top_n(scores: torch.Tensor, top_n: int) -> torch.Tensor:
    """Boolean [n, T]: the top_n highest scores of each timestep (ties broken by lower feature id)."""
    n = scores.shape[0]
    if not 0 < top_n <= n:
        raise ValueError(f"top_n must lie in [1, {n}], got {top_n}")
    # A stable descending sort keeps the lower feature id first among equal scores.
    order = torch.sort(scores, dim=0, descending=True, stable=True).indices[:top_n]
    mask = torch.zeros_like(scores, dtype=torch.bool)
    mask.scatter_(0, order, True)
    return mask


def scales(mu_c: torch.Tensor, gamma: float) -> torch.Tensor:
    """s_i(t) = gamma * mu(i, t, c); [n, T]."""
    return gamma * mu_c.to(torch.float64)


def gates(mu_all: torch.Tensor) -> torch.Tensor:
    """g_i(t) = mean over all concepts of the kind (target included) of mu(i, t, .): [K, n, T] -> [n, T]."""
    return mu_all.to(torch.float64).mean(dim=0)


@dataclass(frozen=True)
class FeatureChoice:
    timestep: int
    feature: int
    score: float
    scale: float
    gate: float


def choose_features(
    mu_all: torch.Tensor,
    counts: torch.Tensor,
    target: int,
    timesteps: list[int],
    gamma: float,
    tau: float | None = None,
    top_n: int | None = None,
) -> tuple[list[FeatureChoice], torch.Tensor]:
    """Everything of sections 3-4 for concept `target` among K concepts of one kind.

    mu_all: [K, n, T] per-concept means; counts: prompts per concept [K]. Returns the selected
    features (keyed by timestep value, highest timestep first, then by descending score) and the
    full score matrix [n, T].
    """
    if (tau is None) == (top_n is None):
        raise ValueError("give exactly one of tau and top_n")
    k = mu_all.shape[0]
    if k < 2:
        raise ValueError("scoring needs at least one other concept of the same kind")
    if mu_all.shape[2] != len(timesteps):
        raise ValueError(f"{mu_all.shape[2]} timestep columns for {len(timesteps)} timesteps")
    others = [j for j in range(k) if j != target]
    mu_c = mu_all[target].to(torch.float64)
    mu_not = pooled_mean(mu_all[others], counts[others])
    score = concept_scores(mu_c, mu_not)
    mask = select_tau(score, tau) if tau is not None else select_top_n(score, top_n)  # type: ignore[arg-type]
    s, g = scales(mu_c, gamma), gates(mu_all)
    out: list[FeatureChoice] = []
    for col in sorted(range(len(timesteps)), key=lambda c: -timesteps[c]):
        feats = torch.nonzero(mask[:, col]).flatten().tolist()
        feats.sort(key=lambda i: (-float(score[i, col]), i))
        out += [FeatureChoice(int(timesteps[col]), i, float(score[i, col]), float(s[i, col]), float(g[i, col]))
                for i in feats]
    return out, score




def choose_assigned(
    mu_all: torch.Tensor,
    counts: torch.Tensor,
    target: int,
    timesteps: list[int],
    gamma: float,
    features: list[int],
    gate_rule: str = "paper",
) -> tuple[list[FeatureChoice], torch.Tensor]:
    """The concept's dedicated latents of a concept-supervised SAE (governance.sae.supervision) at
    every timestep, with the paper's scales and gates (SAEURON.md s. 6: the intervention is the
    same, only the selection changes). Same contract as `choose_features`; the scores are the
    paper's, recorded for the reviewer, not used to select.

    `gate_rule` "fired": gate 0, so the latent is scaled at every token where it is in the TopK.
    A latent trained to fire only on its concept needs no threshold to tell the concept's tokens
    from the others', and a prompt that merely weakens it below the paper's gate (a white-box
    attack's easiest way around) is still edited (docs/evaluation.md, stop 31)."""
    if gate_rule not in ASSIGNED_GATE_RULES:
        raise ValueError(f"unknown gate rule {gate_rule!r} (one of {', '.join(ASSIGNED_GATE_RULES)})")
    k, n = mu_all.shape[0], mu_all.shape[1]
    if k < 2:
        raise ValueError("scoring needs at least one other concept of the same kind")
    if mu_all.shape[2] != len(timesteps):
        raise ValueError(f"{mu_all.shape[2]} timestep columns for {len(timesteps)} timesteps")
    if not features or any(not 0 <= i < n for i in features) or len(set(features)) != len(features):
        raise ValueError(f"assigned latents must be distinct ids in [0, {n})")
    if not bool((mu_all[target][features] > 0).any()):
        # Under the per-token TopK of inference they never fire on the concept's prompts: the
        # scale gamma * mu would be 0 and the mapping would block nothing.
        raise ValueError(f"the assigned latents {features} never fire on the concept's statistics prompts "
                         "(per-token TopK); the SAE's supervision did not take")
    others = [j for j in range(k) if j != target]
    mu_c = mu_all[target].to(torch.float64)
    score = concept_scores(mu_c, pooled_mean(mu_all[others], counts[others]))
    s, g = scales(mu_c, gamma), gates(mu_all)
    if gate_rule == "fired":
        g = torch.zeros_like(g)
    out: list[FeatureChoice] = []
    for col in sorted(range(len(timesteps)), key=lambda c: -timesteps[c]):
        out += [FeatureChoice(int(timesteps[col]), i, float(score[i, col]), float(s[i, col]), float(g[i, col]))
                for i in features]
    return out, score
