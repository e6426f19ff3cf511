"""The trace of one generation (`saegov.trace/v1`): for every UNet call, the timestep and the
features that fired above their gate and were suppressed, with their concept, mapping and
approval. Written as JSON (`--trace`), stored in the registry (`generate --record`) and
embedded in the PNG as the text chunk `saegov-trace`; its reader sits beside its writer here.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from governance.common.errors import FormatError
from governance.common.jsonio import canonical_json
from governance.formats.validation import validate_model

TRACE_FORMAT = "saegov.trace/v1"
TRACE_PNG_KEY = "saegov-trace"
Half = Literal["uncond", "cond"]


class Suppression(BaseModel):
    model_config = ConfigDict(extra="forbid")

    feature: int
    concept: str
    mapping_id: int | None
    approval_review_id: int | None
    scored_timestep: int  # the mapping's timestep whose rule applied (nearest scored; -1: none)
    halves: list[Half]  # which CFG half (or halves) of this image it fired in


class UnetCall(BaseModel):
    model_config = ConfigDict(extra="forbid")

    timestep: int
    suppressed: list[Suppression]


class TraceDeployment(BaseModel):
    model_config = ConfigDict(extra="forbid")

    path: str
    manifest_sha256: str
    deployment_id: int | None
    blocklist: str
    built_by: str
    built_at: str


class Trace(BaseModel):
    model_config = ConfigDict(extra="forbid")

    format: Literal["saegov.trace/v1"] = TRACE_FORMAT
    deployment: TraceDeployment
    prompt_sha256: str
    seed: int | None
    unet_calls: list[UnetCall]
    generation_id: int | None = None  # set once the registry recorded it

    def to_json_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude={"generation_id"} if self.generation_id is None else None)

    def canonical(self) -> str:
        return canonical_json(self.to_json_dict())

    def suppressed_calls(self) -> int:
        return sum(1 for c in self.unet_calls if c.suppressed)


def parse_trace(data: Any, what: str) -> Trace:
    if not isinstance(data, dict) or data.get("format") != TRACE_FORMAT:
        raise FormatError(f"{what}: not a saegov trace (format {TRACE_FORMAT} expected)")
    return validate_model(Trace, data, what)


def read_trace_png(path: Path) -> Trace:
    from PIL import Image

    with Image.open(path) as img:
        text = img.text.get(TRACE_PNG_KEY) if hasattr(img, "text") else None
    if not text:
        raise FormatError(f"{path}: image carries no saegov trace")
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        raise FormatError(f"{path}: the image's saegov trace is not JSON") from None
    return parse_trace(data, str(path))


def read_trace(path: Path) -> Trace:
    """A trace from a PNG made by `saegov generate` or from a trace JSON file."""
    path = Path(path)
    raw = path.read_bytes()
    if raw.startswith(b"\x89PNG"):
        return read_trace_png(path)
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise FormatError(f"{path}: neither a PNG with a trace nor trace JSON") from None
    return parse_trace(data, str(path))


def write_trace_json(path: Path, trace: Trace) -> None:
    Path(path).write_text(json.dumps(trace.to_json_dict(), indent=2) + "\n")


def write_trace_png(path: Path, image: Any, trace: Trace) -> None:
    """Save the PIL `image` as PNG with the trace in its text chunk (atomically)."""
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text(TRACE_PNG_KEY, trace.canonical())
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    image.save(tmp, format="PNG", pnginfo=info)
    tmp.replace(path)
