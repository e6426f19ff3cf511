"""`saegov audit explain`: which features removed what, approved by whom, in which deployment."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

TRACE_PNG_KEY = "saegov-trace"


class ExplainError(ValueError):
    pass


def load_trace(target: str, store: Any | None) -> tuple[dict[str, Any], int | None]:
    """A trace from a PNG made by `saegov generate`, a trace JSON file, or a generation ID."""
    path = Path(target)
    if path.is_file():
        raw = path.read_bytes()
        if raw.startswith(b"\x89PNG"):
            from PIL import Image

            with Image.open(path) as img:
                text = img.text.get(TRACE_PNG_KEY) if hasattr(img, "text") else None
            if not text:
                raise ExplainError(f"{target}: image carries no saegov trace")
            return json.loads(text), None
        try:
            return json.loads(raw), None
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise ExplainError(f"{target}: neither a PNG with a trace nor trace JSON") from None
    if target.isdigit():
        if store is None:
            raise ExplainError("a generation ID needs the registry")
        gens = [g for g in store.list_generations() if g.id == int(target)]
        if not gens:
            raise ExplainError(f"unknown generation {target}")
        return gens[0].trace, gens[0].id
    raise ExplainError(f"{target}: no such file, and not a generation ID")


def explain(trace: dict[str, Any], store: Any | None, generation_id: int | None = None) -> dict[str, Any]:
    if trace.get("format") != "saegov.trace/v1":
        raise ExplainError("not a saegov trace (format saegov.trace/v1 expected)")
    concepts: dict[str, dict[str, Any]] = {}
    for call in trace.get("unet_calls", []):
        for s in call.get("suppressed", []):
            c = concepts.setdefault(s["concept"], {"concept": s["concept"], "mapping_id": s["mapping_id"],
                                                   "approval_review_id": s["approval_review_id"],
                                                   "features": {}, "unet_calls": 0})
            c["features"].setdefault(str(s["feature"]), []).append(call["timestep"])
        for name in {s["concept"] for s in call.get("suppressed", [])}:
            concepts[name]["unet_calls"] += 1
    dep = dict(trace.get("deployment") or {})
    blocklist_file = Path(dep.get("path", "")) / "saegov" / "blocklist.json"
    local = {}
    if blocklist_file.is_file():
        for e in json.loads(blocklist_file.read_text()).get("entries", []):
            local[e.get("mapping_id")] = e.get("approval", {})
    for c in concepts.values():
        approval = dict(local.get(c["mapping_id"], {}))
        state = None
        if store is not None and c["mapping_id"] is not None:
            try:
                m = store.get_mapping(c["mapping_id"], with_features=False)
                state = m.state
                review = next((r for r in m.reviews if r.id == c["approval_review_id"]), m.approval)
                if review is not None:
                    approval = {"review_id": review.id, "by": review.actor, "at": review.created_at.isoformat(),
                                "justification": review.justification}
            except Exception:  # noqa: BLE001 - the registry may not know it; local facts still stand
                pass
        c["approval"] = approval
        c["mapping_state_now"] = state
        c["features"] = [{"feature": int(f), "timesteps": ts} for f, ts in sorted(c["features"].items(), key=lambda kv: int(kv[0]))]
    if store is not None and dep.get("deployment_id") is not None:
        try:
            d = store.get_deployment(int(dep["deployment_id"]))
            dep.update({"built_by": d.built_by, "built_at": d.built_at.isoformat(), "blocklist_state_now": d.blocklist_state})
        except Exception:  # noqa: BLE001
            pass
    return {"generation_id": generation_id, "prompt_sha256": trace.get("prompt_sha256"), "seed": trace.get("seed"),
            "deployment": dep, "unet_calls": len(trace.get("unet_calls", [])),
            "suppressed": sorted(concepts.values(), key=lambda c: c["concept"])}


def render_text(report: dict[str, Any]) -> str:
    dep = report["deployment"]
    lines = [f"Deployment {dep.get('path', '?')} (blocklist {dep.get('blocklist', '?')}), "
             f"built by {dep.get('built_by', '?')} at {dep.get('built_at', '?')}."]
    if not report["suppressed"]:
        lines.append(f"Nothing was suppressed in this generation ({report['unet_calls']} UNet calls).")
    for c in report["suppressed"]:
        a = c["approval"]
        feats = ", ".join(f"{f['feature']} (at {len(f['timesteps'])} calls, timesteps {min(f['timesteps'])}-{max(f['timesteps'])})"
                          for f in c["features"])
        lines.append(f"Concept '{c['concept']}' was suppressed in {c['unet_calls']} of {report['unet_calls']} UNet calls "
                     f"by features {feats}.")
        lines.append(f"  Mapping {c['mapping_id']} was approved by {a.get('by', '?')} on {a.get('at', '?')} "
                     f"(review {a.get('review_id', c['approval_review_id'])}): \"{a.get('justification') or ''}\"."
                     + (f" Its state now: {c['mapping_state_now']}." if c.get("mapping_state_now") else ""))
    return "\n".join(lines)
