"""Approvals gated by evidence (issue 15): what `review approve` checks before a mapping can
become approved.

Always (sanity, whatever the policy): the mapping selects at least one feature; every scale is
finite and below 1 (the feature is suppressed, never amplified: a scale of +5 strengthens the
concept); every gate is finite and non-negative (a gate that is NaN or infinite never, or
always, fires by accident).

The approval policy (versioned; set only by an admin, each version an audited `policy.set`
event): minimum UA / IRA / CRA that the mapping's stored sweep evidence (`concept sweep`'s table,
inside the hashed mapping spec) must show at its chosen point. With any minimum set, a mapping
without sweep evidence falls short. A shortfall is refused unless an admin approves with an
override justification, which the review and its audit event record. A policy can also require
that every action be signed by its actor's registered key (registry.signatures).
"""
from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from governance.formats.sweep import parse_sweep_table
from governance.common.errors import FormatError


class ApprovalPolicy(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    version: int = Field(ge=1)
    min_ua: float | None = Field(default=None, ge=0, le=1)
    min_ira: float | None = Field(default=None, ge=0, le=1)
    min_cra: float | None = Field(default=None, ge=0, le=1)
    # Every action must be signed by its actor's registered key (registry.signatures).
    require_signatures: bool = False

    def minimums(self) -> dict[str, float]:
        return {k: v for k, v in (("UA", self.min_ua), ("IRA", self.min_ira), ("CRA", self.min_cra)) if v is not None}

    def payload(self) -> dict[str, Any]:
        # Left out when off, so that versions logged before the field existed read the same.
        return self.model_dump(mode="json", exclude={"require_signatures"} if not self.require_signatures else None)


def sanity_shortfalls(features: Iterable[tuple[int, int, float, float]]) -> list[str]:
    """(timestep, feature, scale, gate) rows -> what makes the mapping unsafe to approve."""
    rows = list(features)
    if not rows:
        return ["it selects no feature, so it can suppress nothing"]
    out = []
    amplifying = [(t, f, s) for t, f, s, _ in rows if not math.isfinite(s) or s >= 1]
    if amplifying:
        t, f, s = amplifying[0]
        out.append(f"feature {f} at timestep {t} has scale {s:g}: only scales below 1 suppress "
                   f"({len(amplifying)} such entr{'y' if len(amplifying) == 1 else 'ies'})")
    bad_gates = [(t, f, g) for t, f, _, g in rows if not math.isfinite(g) or g < 0]
    if bad_gates:
        t, f, g = bad_gates[0]
        out.append(f"feature {f} at timestep {t} has gate {g:g}: gates must be finite and non-negative")
    return out


def evidence_shortfalls(policy: ApprovalPolicy | None, evidence: Iterable[dict[str, Any]]) -> list[str]:
    """What the mapping's sweep evidence lacks under `policy` (nothing without a policy)."""
    mins = policy.minimums() if policy else {}
    if not mins:
        return []
    tables = [e.get("ref") for e in evidence if isinstance(e, dict) and e.get("kind") == "sweep"]
    if not tables:
        return [f"it has no sweep evidence, and approval policy v{policy.version} needs measured "
                + " / ".join(mins)]
    try:
        chosen = parse_sweep_table(str(tables[-1]), "sweep evidence").chosen
    except FormatError as exc:
        return [f"its sweep evidence cannot be read ({exc})"]
    got = {"UA": chosen.UA, "IRA": chosen.IRA, "CRA": chosen.CRA}
    return [f"its sweep evidence shows {k} {100 * got[k]:.1f} %, below the {100 * v:.1f} % of approval policy "
            f"v{policy.version}" for k, v in mins.items() if got[k] < v]
