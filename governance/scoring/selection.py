"""What scoring hands on: the selected features as mapping entries, an operating-point
search's decision (`Selected`), and the one error of the scoring stage."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from governance.common.errors import GovernanceError
from governance.formats.mapping import FeatureEntry, FeaturesByTimestep
from governance.scoring.maths import FeatureChoice, choose_features

# How features are scored and gated: the paper's (SAEURON.md s. 3-4) or specificity-aware
# (governance.scoring.specificity: per-image peaks, gates calibrated on the other concepts).
# "assigned": a concept-supervised SAE's dedicated latents (governance.sae.supervision).
METHODS = ("saeuron", "specific", "assigned")


class ScoringError(GovernanceError):
    """A scoring or sweep request that cannot be honoured."""


def assigned_latents(sae: Any, concept: str) -> list[int]:
    """The latents a concept-supervised SAE dedicated to `concept`, read from its hash-checked
    cfg.json (governance.formats.supervision); a ScoringError when it was not supervised by it."""
    from governance.common.errors import FormatError
    from governance.formats.supervision import supervision_of

    try:
        spec = supervision_of(sae.cfg, sae.n_latents)
    except FormatError as exc:
        raise ScoringError(str(exc)) from None
    latents = spec.latents_of(concept) if spec else None
    if not latents:
        by = ", ".join(c.name for c in spec.concepts) if spec else "no concept"
        raise ScoringError(f"the SAE assigns no latents to {concept!r} (it was supervised by {by}); "
                           "train one with `sae train --supervise`")
    return latents


def entries_by_timestep(choices: list[FeatureChoice], timesteps: list[int]) -> FeaturesByTimestep:
    """The selected features as mapping entries, keyed by every scored timestep."""
    per_t: FeaturesByTimestep = {t: [] for t in timesteps}
    for c in choices:
        per_t[c.timestep].append(FeatureEntry(feature=c.feature, score=c.score, scale=c.scale, gate=c.gate))
    return per_t


def choose(stats: Any, *, gamma: float, method: str = "saeuron", tau: float | None = None,
           top_n: int | None = None, gate_quantile: float = 1.0,
           assigned: list[int] | None = None, assigned_gate: str = "paper") -> tuple[list[FeatureChoice], Any]:
    """The features of concept 0 of `stats` (a ConceptStats) under one selection rule; raises
    ScoringError on a rule that cannot be applied."""
    try:
        if method == "specific":
            from governance.scoring.specificity import choose_specific

            if top_n is None or tau is not None:
                raise ValueError("specific selection takes a feature count per timestep (top_n), not tau")
            if stats.peaks is None:
                raise ValueError("specific selection needs statistics with per-image peaks")
            return choose_specific(stats.mu, stats.peaks, 0, stats.timesteps, gamma, top_n, gate_quantile)
        if method == "assigned":
            from governance.scoring.maths import choose_assigned

            if not assigned:
                raise ValueError(f"the SAE assigns no latents to {stats.names[0]!r} (it was not supervised by it)")
            return choose_assigned(stats.mu, stats.counts, 0, stats.timesteps, gamma, assigned, assigned_gate)
        if method != "saeuron":
            raise ValueError(f"unknown selection method {method!r} (one of {', '.join(METHODS)})")
        return choose_features(stats.mu, stats.counts, 0, stats.timesteps, gamma, tau=tau, top_n=top_n)
    except ValueError as exc:
        raise ScoringError(f"selection: {exc}") from None


@dataclass
class ChildRun:
    """One measured point of an operating-point search, logged as a child of the scoring run."""

    name: str
    kind: str
    params: dict[str, Any]
    metrics: dict[str, float]  # UA / IRA / CRA in percent, as every MLflow metric of saegov
    tags: dict[str, str] = field(default_factory=dict)


@dataclass
class Selected:
    """What an operating-point search decided, and its evidence."""

    tau: float | None = None
    top_n: int | None = None
    gamma: float = -1.0
    method: str = "saeuron"
    evidence: list[dict[str, Any]] = field(default_factory=list)  # extra EvidenceRef dicts
    artifacts: dict[str, bytes] = field(default_factory=dict)  # extra files of the MLflow run
    metrics: dict[str, float] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    children: list[ChildRun] = field(default_factory=list)  # logged as child runs of the scoring run


# (pipe, sae, hook point, statistics, concept kind) -> the chosen operating point
Selector = Callable[[Any, Any, str, Any, str], Selected]
