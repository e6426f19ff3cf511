"""`EnforcedStableDiffusionPipeline`: a verified deployment folder, loaded and enforcing.

    pipe = EnforcedStableDiffusionPipeline.from_pretrained("deployments/no-red")
    out = pipe("a red circle")          # the approved scheduler, step count and guidance
    out.traces[0]                       # which features were suppressed, for whom, approved by whom
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from diffusers import StableDiffusionPipeline

from governance.enforcement.deployment import SAEGOV_DIR, VerifiedDeployment, verify_deployment
from governance.enforcement.intervention import Blocklist, CallRecord, apply_blocklist, enforcer_of


def build_traces(calls: list[CallRecord], n_images: int, cfg: bool, deployment: dict[str, Any],
                 prompts: list[str], seeds: list[int | None]) -> list[dict[str, Any]]:
    """One trace per image from the enforcer's per-call records.

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
                    suppressed.append({k: f[k] for k in ("feature", "concept", "mapping_id", "approval_review_id", "scored_timestep")}
                                      | {"halves": halves})
            steps.append({"timestep": call.timestep, "suppressed": suppressed})
        traces.append({
            "format": "saegov.trace/v1",
            "deployment": deployment,
            "prompt_sha256": hashlib.sha256(prompts[j].encode()).hexdigest(),
            "seed": seeds[j],
            "unet_calls": steps,
        })
    return traces


class EnforcedStableDiffusionPipeline(StableDiffusionPipeline):
    """A StableDiffusionPipeline that verifies its deployment folder and enforces its blocklist."""

    saegov: VerifiedDeployment

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | Path, *, store: Any | None = None,
                        check_registry: bool = True, trusted_key: str | None = None, **kwargs: Any):
        path = Path(pretrained_model_name_or_path)
        verified = verify_deployment(path, store=store, check_registry=check_registry, trusted_key=trusted_key)
        kwargs.setdefault("safety_checker", None)
        kwargs.setdefault("requires_safety_checker", False)
        pipe = super().from_pretrained(str(path), **kwargs)
        pipe.set_progress_bar_config(disable=True)
        pipe.saegov = verified
        blocklist = Blocklist.load(path / SAEGOV_DIR, expected_sae_sha256=verified.manifest.payload.files.get(f"{SAEGOV_DIR}/sae/sae.safetensors"))
        apply_blocklist(pipe, blocklist, error_mode=verified.manifest.payload.error_mode)
        return pipe

    @property
    def deployment_info(self) -> dict[str, Any]:
        p = self.saegov.manifest.payload
        return {"path": str(self.saegov.path), "manifest_sha256": self.saegov.manifest_sha256,
                "deployment_id": self.saegov.deployment_id, "blocklist": p.blocklist,
                "built_by": p.built_by, "built_at": p.built_at}

    def __call__(self, prompt: str | list[str] | None = None, num_inference_steps: int | None = None,
                 guidance_scale: float | None = None, seeds: list[int | None] | None = None, **kwargs: Any):
        d = self.saegov.manifest.payload.defaults
        steps = d.num_inference_steps if num_inference_steps is None else num_inference_steps
        guidance = d.guidance_scale if guidance_scale is None else guidance_scale
        enforcer = enforcer_of(self)
        if enforcer is not None:
            enforcer.reset_trace()
        out = super().__call__(prompt, num_inference_steps=steps, guidance_scale=guidance, **kwargs)
        prompts = [prompt] if isinstance(prompt, str) else list(prompt or [])
        per_prompt = int(kwargs.get("num_images_per_prompt") or 1)
        prompts = [p for p in prompts for _ in range(per_prompt)]
        n = len(out.images)
        seeds = list(seeds) if seeds is not None else [None] * n
        out.traces = build_traces(enforcer.calls if enforcer else [], n, guidance > 1.0,
                                  self.deployment_info, prompts or [""] * n, seeds)
        return out
