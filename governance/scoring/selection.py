"""What scoring hands on: the selected features as mapping entries, an operating-point
search's decision (`Selected`), and the one error of the scoring stage."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from governance.common.errors import GovernanceError
from governance.formats.mapping import FeatureEntry, FeaturesByTimestep
from governance.scoring.maths import FeatureChoice


class ScoringError(GovernanceError):
    """A scoring or sweep request that cannot be honoured."""


def entries_by_timestep(choices: list[FeatureChoice], timesteps: list[int]) -> FeaturesByTimestep:
    """The selected features as mapping entries, keyed by every scored timestep."""
    per_t: FeaturesByTimestep = {t: [] for t in timesteps}
    for c in choices:
        per_t[c.timestep].append(FeatureEntry(feature=c.feature, score=c.score, scale=c.scale, gate=c.gate))
    return per_t


@dataclass
class Selected:
    """What an operating-point search decided, and its evidence."""

    tau: float | None = None
    top_n: int | None = None
    gamma: float = -1.0
    evidence: list[dict[str, Any]] = field(default_factory=list)  # extra EvidenceRef dicts
    artifacts: dict[str, bytes] = field(default_factory=dict)  # extra files of the MLflow run
    metrics: dict[str, float] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)


# (pipe, sae, hook point, statistics, concept kind) -> the chosen operating point
Selector = Callable[[Any, Any, str, Any, str], Selected]
