"""MLflow conventions (DESIGN.md): a local sqlite store by default, one experiment per base
model, a run per collection, training, scoring and evaluation, registered models with aliases."""
from __future__ import annotations

from governance.tracking.runs import Tracker, TrackingUnreachable, check_tracking, tracking_uri

__all__ = ["Tracker", "TrackingUnreachable", "check_tracking", "tracking_uri"]
