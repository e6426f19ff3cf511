"""Concept scoring and feature selection (SAEURON.md sections 3-4): the maths (`maths`), the
statistics run on the base pipeline (`statistics`), `concept score` (`service`), the
operating-point sweep (`sweep`) and the score heatmap (`heatmap`)."""
from __future__ import annotations

from governance.scoring.selection import ScoringError, Selected, entries_by_timestep

__all__ = ["ScoringError", "Selected", "entries_by_timestep"]
