"""`saegov/blocklist.json` of a deployment: what is suppressed, at which hook point, with which
features per scored timestep, on whose approval. Also what a sweep point applies.

v2 (`saegov.blocklist/v2`, written since several SAEs may serve one blocklist): `saes` lists one
SAE per hook point and every entry names its hook point. v1 (`saegov.blocklist/v1`: one `sae`,
entries without a hook point) is read as the v2 it means: its SAE is the only hook point.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from governance.common.jsonio import canonical_json
from governance.formats.mapping import FeaturesByTimestep
from governance.formats.validation import read_json_model

BLOCKLIST_FORMAT_V1 = "saegov.blocklist/v1"
BLOCKLIST_FORMAT = "saegov.blocklist/v2"
BLOCKLIST_NAME = "blocklist.json"


class Approval(BaseModel):
    model_config = ConfigDict(extra="forbid")

    review_id: int | None = None
    by: str | None = None
    at: str | None = None
    justification: str | None = None


class BlockedConcept(BaseModel):
    """One approved mapping: a concept, the hook point of its SAE, its features per scored
    timestep value. `hook_point` may be left out when the blocklist has a single SAE."""

    model_config = ConfigDict(extra="forbid")

    concept: str
    kind: str = "other"  # the registry's concept kind: colour, object, style or other
    mapping_id: int | None = None
    hook_point: str | None = None
    gamma: float
    scheduler: str
    num_steps: int = Field(gt=0)
    approval: Approval = Field(default_factory=Approval)
    timesteps: FeaturesByTimestep


class SaeRef(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: int | None = None
    ref: str | None = None
    hook_point: str
    weights_sha256: str | None = None


class BlocklistSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    format: Literal["saegov.blocklist/v2"] = BLOCKLIST_FORMAT
    name: str
    version: int | None = None
    content_sha256: str | None = None
    saes: list[SaeRef] = Field(min_length=1)
    entries: list[BlockedConcept] = Field(default_factory=list)

    @model_validator(mode="before")
    @classmethod
    def _from_v1(cls, data: Any) -> Any:
        """A v1 document (or a one-SAE spec built as `sae=SaeRef(...)`): its SAE is the one hook point."""
        if isinstance(data, dict) and "sae" in data and "saes" not in data:
            data = dict(data)
            sae = data.pop("sae")
            data["saes"] = [sae]
            if data.get("format") == BLOCKLIST_FORMAT_V1:
                data["format"] = BLOCKLIST_FORMAT
        return data

    @model_validator(mode="after")
    def _check(self) -> BlocklistSpec:
        hooks = [s.hook_point for s in self.saes]
        dup = sorted({h for h in hooks if hooks.count(h) > 1})
        if dup:
            raise ValueError(f"hook point {dup[0]} has more than one SAE")
        for e in self.entries:
            if e.hook_point is None:
                if len(hooks) != 1:
                    raise ValueError(f"entry {e.concept!r} names no hook point and the blocklist has {len(hooks)} SAEs")
                e.hook_point = hooks[0]
            elif e.hook_point not in hooks:
                raise ValueError(f"entry {e.concept!r} is at hook point {e.hook_point}, which has no SAE")
        return self

    @property
    def sae(self) -> SaeRef:
        """The SAE of a single-hook-point blocklist."""
        if len(self.saes) != 1:
            raise ValueError(f"blocklist {self.name!r} has {len(self.saes)} SAEs; ask for one by hook point")
        return self.saes[0]

    def hook_points(self) -> list[str]:
        return [s.hook_point for s in self.saes]

    def sae_at(self, hook_point: str) -> SaeRef:
        return next(s for s in self.saes if s.hook_point == hook_point)


def read_blocklist(path: Path) -> BlocklistSpec:
    """`path`: the blocklist.json file, or the `saegov/` folder holding it (v1 or v2)."""
    path = Path(path)
    return read_json_model(BlocklistSpec, path / BLOCKLIST_NAME if path.is_dir() else path)


def blocklist_bytes(spec: BlocklistSpec) -> bytes:
    return (canonical_json(spec.model_dump(mode="json")) + "\n").encode()


def write_blocklist(path: Path, spec: BlocklistSpec) -> None:
    """`path`: the file, or the `saegov/` folder to write blocklist.json into."""
    path = Path(path)
    (path / BLOCKLIST_NAME if path.is_dir() else path).write_bytes(blocklist_bytes(spec))
