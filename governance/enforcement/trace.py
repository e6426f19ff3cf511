"""From the enforcer's per-UNet-call records to one trace per image (governance.formats.trace)."""
from __future__ import annotations

from typing import Any

from governance.common.hashing import sha256_text

from governance.enforcement.intervention import CallRecord
from governance.formats.trace import Suppression, Trace, TraceDeployment, UnetCall


def build_traces(calls: list[CallRecord], n_images: int, cfg: bool, deployment: dict[str, Any],
                 prompts: list[str], seeds: list[int | None]) -> list[Trace]:
    """One trace per image, one entry per UNet call (the records of every hook point of a call
    merged, each suppression naming its hook point).

    With classifier-free guidance the UNet batch is [uncond, cond]: sample j and j + n both
    belong to image j; a suppression in either half is listed, with the half named.
    """
    grouped: dict[tuple[int, int], list[CallRecord]] = {}
    for rec in calls:
        grouped.setdefault((rec.call, rec.timestep), []).append(rec)
    traces = []
    for j in range(n_images):
        steps = []
        for (_, timestep), recs in grouped.items():
            suppressed = []
            for f in (f for rec in recs for f in rec.fired):
                halves = []
                if j in f["samples"]:
                    halves.append("uncond" if cfg else "cond")
                if cfg and j + n_images in f["samples"]:
                    halves.append("cond")
                if halves:
                    suppressed.append(Suppression(
                        hook_point=f["hook_point"], feature=f["feature"], concept=f["concept"], mapping_id=f["mapping_id"],
                        approval_review_id=f["approval_review_id"], scored_timestep=f["scored_timestep"],
                        halves=halves))
            steps.append(UnetCall(timestep=timestep, suppressed=suppressed))
        traces.append(Trace(deployment=TraceDeployment(**deployment),
                            prompt_sha256=sha256_text(prompts[j]),
                            seed=seeds[j], unet_calls=steps))
    return traces
