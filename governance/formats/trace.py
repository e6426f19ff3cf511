"""The trace of one generation: for every UNet call, the timestep and, per hook point, the
features that fired above their gate and were suppressed, with their concept, mapping and
approval (a feature two concepts select is listed once per concept it was suppressed for).
Written as JSON (`--trace`), stored in the registry (`generate --record`) and embedded in the
PNG as the text chunk `saegov-trace`; its reader sits beside its writer here.

`saegov.trace/v2` names the hook point of every suppression; a v1 trace (one SAE, no hook
point) still reads, with `hook_point` None.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from governance.common.errors import FormatError
from governance.common.jsonio import canonical_json
from governance.formats.validation import validate_model

TRACE_FORMAT_V1 = "saegov.trace/v1"
TRACE_FORMAT = "saegov.trace/v2"
TRACE_FORMATS = (TRACE_FORMAT_V1, TRACE_FORMAT)
TRACE_PNG_KEY = "saegov-trace"
Half = Literal["uncond", "cond"]


class Suppression(BaseModel):
    model_config = ConfigDict(extra="forbid")

    hook_point: str | None = None  # None only in v1 traces
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

    format: Literal["saegov.trace/v1", "saegov.trace/v2"] = TRACE_FORMAT
    deployment: TraceDeployment
    prompt_sha256: str
    seed: int | None
    unet_calls: list[UnetCall]
    generation_id: int | None = None  # set once the registry recorded it

    def to_json_dict(self) -> dict[str, Any]:
        d = self.model_dump(mode="json", exclude={"generation_id"} if self.generation_id is None else None)
        if self.format == TRACE_FORMAT_V1:  # v1 had no hook points: write it as it was
            for call in d["unet_calls"]:
                for sup in call["suppressed"]:
                    sup.pop("hook_point", None)
        return d

    def canonical(self) -> str:
        return canonical_json(self.to_json_dict())

    def suppressed_calls(self) -> int:
        return sum(1 for c in self.unet_calls if c.suppressed)


def parse_trace(data: Any, what: str) -> Trace:
    if not isinstance(data, dict) or data.get("format") not in TRACE_FORMATS:
        raise FormatError(f"{what}: not a saegov trace (format {TRACE_FORMAT} expected)")
    return validate_model(Trace, data, what)


def read_trace_png(path: Path) -> Trace:
    from PIL import Image

    try:
        with Image.open(path) as img:
            text = img.text.get(TRACE_PNG_KEY) if hasattr(img, "text") else None
    except (OSError, SyntaxError, ValueError) as exc:  # PIL's errors for a damaged image
        raise FormatError(f"{path}: not a readable PNG ({exc})") from None
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
