"""`saegov audit explain`: which features removed what, approved by whom, in which deployment."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from governance.common.errors import FormatError, GovernanceError
from governance.formats.blocklist import read_blocklist
from governance.formats.deployment import SAEGOV_DIR
from governance.formats.trace import Trace, parse_trace, read_trace


class ExplainError(GovernanceError):
    """A trace that cannot be found or explained."""


def load_trace(target: str, store: Any | None) -> tuple[Trace, int | None]:
    """A trace from a PNG made by `saegov generate`, a trace JSON file, or a generation ID."""
    path = Path(target)
    if path.is_file():
        return read_trace(path), None
    if target.isdigit():
        if store is None:
            raise ExplainError("a generation ID needs the registry")
        from registry.errors import NotFound

        try:
            gen = store.get_generation(int(target))
        except NotFound:
            raise ExplainError(f"unknown generation {target}") from None
        return parse_trace(gen.trace, f"generation {gen.id}"), gen.id
    raise ExplainError(f"{target}: no such file, and not a generation ID")


def _local_approvals(deployment_path: str) -> dict[int | None, dict[str, Any]]:
    """mapping id -> approval, from the deployment's blocklist.json when the folder is here."""
    folder = Path(deployment_path) / SAEGOV_DIR
    if not (folder / "blocklist.json").is_file():
        return {}
    try:
        spec = read_blocklist(folder)
    except FormatError:  # a damaged local copy adds nothing; the registry may still answer
        return {}
    return {e.mapping_id: e.approval.model_dump() for e in spec.entries}


def explain(trace: Trace, store: Any | None, generation_id: int | None = None) -> dict[str, Any]:
    from registry.errors import RegistryError

    # One entry per (concept, mapping): a concept blocked at two hook points has two mappings.
    # Features are keyed by (hook point, feature ID): the same ID on two SAEs is two features.
    concepts: dict[tuple[str, int | None], dict[str, Any]] = {}
    for call in trace.unet_calls:
        for s in call.suppressed:
            c = concepts.setdefault((s.concept, s.mapping_id), {
                "concept": s.concept, "mapping_id": s.mapping_id, "approval_review_id": s.approval_review_id,
                "hook_points": [], "features": {}, "unet_calls": 0})
            if s.hook_point not in c["hook_points"]:
                c["hook_points"].append(s.hook_point)
            c["features"].setdefault((s.hook_point or "", s.feature), []).append(call.timestep)
        for key in {(s.concept, s.mapping_id) for s in call.suppressed}:
            concepts[key]["unet_calls"] += 1
    dep = trace.deployment.model_dump()
    local = _local_approvals(trace.deployment.path)
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
            except RegistryError:  # the registry may not know it; local facts still stand
                pass
        c["approval"] = approval
        c["mapping_state_now"] = state
        c["features"] = [{"hook_point": h or None, "feature": f, "timesteps": ts}
                         for (h, f), ts in sorted(c["features"].items())]
    if store is not None and trace.deployment.deployment_id is not None:
        try:
            d = store.get_deployment(trace.deployment.deployment_id)
            dep.update({"built_by": d.built_by, "built_at": d.built_at.isoformat(), "blocklist_state_now": d.blocklist_state})
        except RegistryError:
            pass
    return {"generation_id": generation_id, "prompt_sha256": trace.prompt_sha256, "seed": trace.seed,
            "deployment": dep, "unet_calls": len(trace.unet_calls),
            "suppressed": sorted(concepts.values(), key=lambda c: (c["concept"], c["mapping_id"] or 0))}


def render_text(report: dict[str, Any]) -> str:
    dep = report["deployment"]
    lines = [f"Deployment {dep.get('path', '?')} (blocklist {dep.get('blocklist', '?')}), "
             f"built by {dep.get('built_by', '?')} at {dep.get('built_at', '?')}."]
    if report.get("trace_verified") is False:
        lines.append("Note: this trace was not checked against a recorded generation (not recorded, or no "
                     "registry here); it is only as trustworthy as the file it came from.")
    elif report.get("trace_verified"):
        lines.append(f"Trace matches the registry's record of generation {report['generation_id']}.")
    if not report["suppressed"]:
        lines.append(f"Nothing was suppressed in this generation ({report['unet_calls']} UNet calls).")
    for c in report["suppressed"]:
        a = c["approval"]
        by_hook: dict[str | None, list[str]] = {}
        for f in c["features"]:
            by_hook.setdefault(f["hook_point"], []).append(
                f"{f['feature']} (at {len(f['timesteps'])} calls, timesteps {min(f['timesteps'])}-{max(f['timesteps'])})")
        feats = "; ".join((f"at {h}: " if h else "") + ", ".join(fs) for h, fs in by_hook.items())
        lines.append(f"Concept '{c['concept']}' was suppressed in {c['unet_calls']} of {report['unet_calls']} UNet calls "
                     f"by features {feats}.")
        lines.append(f"  Mapping {c['mapping_id']} was approved by {a.get('by', '?')} on {a.get('at', '?')} "
                     f"(review {a.get('review_id', c['approval_review_id'])}): \"{a.get('justification') or ''}\"."
                     + (f" Its state now: {c['mapping_state_now']}." if c.get("mapping_state_now") else ""))
    return "\n".join(lines)


def explain_target(target: str) -> dict[str, Any]:
    """`saegov audit explain TARGET`: load the trace (PNG, JSON or generation ID) and explain it
    with the workspace's registry when there is one."""
    from registry.store import Store

    store = Store.open_if_present()
    trace, gen_id = load_trace(target, store)
    verified = gen_id is not None  # read from the registry itself
    if gen_id is None and trace.generation_id is not None and store is not None:
        verify_against_record(trace, store, target)
        verified = True
    report = explain(trace, store, gen_id if gen_id is not None else trace.generation_id)
    report["trace_verified"] = verified
    return report


def verify_against_record(trace: Trace, store: Any, target: str) -> None:
    """A trace read from a file (an image's chunk) must be the one the registry recorded for the
    generation it names: an edited chunk could otherwise blame or clear any concept."""
    from governance.common.hashing import sha256_text
    from registry.errors import NotFound

    try:
        gen = store.get_generation(int(trace.generation_id))  # type: ignore[arg-type]
    except NotFound:
        raise ExplainError(f"{target} names generation {trace.generation_id}, which the registry does not know") from None
    recorded = trace.model_copy(update={"generation_id": None}).canonical()
    if sha256_text(recorded) != gen.trace_sha256:
        raise ExplainError(f"the trace in {target} is not the one recorded for generation {gen.id} (sha256 differs): "
                           "it was altered")
