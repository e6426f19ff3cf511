"""From the enforcer's per-UNet-call records to one trace per image (governance.formats.trace)."""
from __future__ import annotations

from typing import Any

from governance.common.hashing import sha256_text

from governance.enforcement.intervention import CallRecord
from governance.formats.trace import Suppression, Trace, TraceDeployment, UnetCall


def build_traces(calls: list[CallRecord], n_images: int, cfg: bool, deployment: dict[str, Any],
                 prompts: list[str], seeds: list[int | None]) -> list[Trace]:
    """One trace per image.

    With classifier-free guidance the UNet batch is [uncond, cond]: sample j and j + n both
    belong to image j; a suppression in either half is listed, with the half named.
    """
    traces = []
    for j in range(n_images):
        steps = []
        for call in calls:
            suppressed = []
            for f in call.fired:
                halves = []
                if j in f["samples"]:
                    halves.append("uncond" if cfg else "cond")
                if cfg and j + n_images in f["samples"]:
                    halves.append("cond")
                if halves:
                    suppressed.append(Suppression(
                        feature=f["feature"], concept=f["concept"], mapping_id=f["mapping_id"],
                        approval_review_id=f["approval_review_id"], scored_timestep=f["scored_timestep"],
                        halves=halves))
            steps.append(UnetCall(timestep=call.timestep, suppressed=suppressed))
        traces.append(Trace(deployment=TraceDeployment(**deployment),
                            prompt_sha256=sha256_text(prompts[j]),
                            seed=seeds[j], unet_calls=steps))
    return traces
