"""The operating-point sweep table (`saegov.sweep/v1`): every (rule, value, gamma) point with
its measured UA / IRA / CRA, and the chosen one. Stored as the mapping's `sweep` evidence and
as `sweep.json` in its MLflow run."""
from __future__ import annotations

import json
from typing import Annotated, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from governance.common.jsonio import pretty_json
from governance.formats.validation import parse_json_model

SWEEP_FORMAT = "saegov.sweep/v1"
SWEEP_NAME = "sweep.json"
# How a concept-supervised SAE's dedicated latent is gated (`--method assigned`): "paper", the
# mean over the kind's concepts (SAEURON.md s. 4); "fired", 0: scaled wherever it fires.
AssignedGate = Literal["paper", "fired"]
ASSIGNED_GATE_RULES: tuple[str, ...] = get_args(AssignedGate)
OBJECTIVES = {"ua_ira": "(UA + IRA) / 2", "ua_ira_cra": "(UA + IRA + CRA) / 3",
              "min_ua_ira_cra": "min(UA, IRA, CRA)", "min_ua_ira_kinds": "min(UA, IRA, CRA of each other kind)"}


class SweepPoint(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    # specific: top_n under specificity-aware selection; assigned: a supervised SAE's latents
    # of the concept (value: how many)
    rule: Literal["tau", "top_n", "specific", "assigned"]
    value: int | float  # an int for top_n, specific and assigned, as the sweep request gave it
    gamma: float
    UA: float
    IRA: float
    CRA: float
    # CRA is the mean over the other kinds; each kind's (left out of tables written before it).
    CRA_by_kind: dict[Annotated[str, StringConstraints(pattern=r"^[a-z_]{1,32}$")], float] | None = None
    objective: float
    n_entries: int
    n_features: int


class InForce(BaseModel):
    """A mapping of the same concept at another hook point, applied at every point of a sweep:
    the point was measured, and so chosen, with it in force (blocking at several blocks)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    mapping_id: int
    hook_point: str
    spec_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


class SweepTableHeader(BaseModel):
    """What evaluation needs of any sweep table, including hand-written evidence: which seeds,
    on which wording."""

    model_config = ConfigDict(extra="ignore")

    seeds: list[int]
    prompts: str = ""

    @property
    def styled(self) -> bool:
        return self.prompts.startswith("styled")


class SweepTable(SweepTableHeader):
    model_config = ConfigDict(extra="forbid")

    format: Literal["saegov.sweep/v1"] = SWEEP_FORMAT
    objective: str
    images_per_point: int
    chosen: SweepPoint
    points: list[SweepPoint]
    # Left out of the JSON when None, so that a one-block table reads as it always did.
    with_mappings: list[InForce] | None = None
    # The assigned points' gate rule; None (left out) for the other rules and older tables.
    assigned_gate: AssignedGate | None = None

    def evidence_text(self) -> str:
        """The table as the `ref` of a mapping's `sweep` evidence (compact, sorted keys)."""
        return json.dumps(self.model_dump(mode="json", exclude_none=True), sort_keys=True)

    def file_text(self) -> str:
        return pretty_json(self.model_dump(mode="json", exclude_none=True))


def parse_sweep_table(text: str, what: str = "sweep table") -> SweepTable:
    return parse_json_model(SweepTable, text, what)


def sweep_header(text: str | None) -> SweepTableHeader | None:
    """The seeds and wording of a `sweep` evidence text; None when it is not a sweep table
    (evidence is free-form: `mapping import` accepts any text)."""
    try:
        return SweepTableHeader.model_validate_json(text or "")
    except (ValidationError, ValueError):
        return None
