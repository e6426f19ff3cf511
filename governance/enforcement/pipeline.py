"""`EnforcedStableDiffusionPipeline`: a verified deployment folder, loaded and enforcing.

    pipe = EnforcedStableDiffusionPipeline.from_pretrained("deployments/no-red")
    out = pipe("a red circle")          # the approved scheduler, step count and guidance
    out.traces[0]                       # which features were suppressed, for whom, approved by whom
                                        # (a saegov.trace/v1 dict; out.trace_records: the models)
"""
from __future__ import annotations

import shutil
import tempfile
from collections.abc import Collection
from pathlib import Path
from typing import Any

from governance.basemodel.loading import quiet_libraries

quiet_libraries()

from diffusers import StableDiffusionPipeline  # noqa: E402 - after quiet_libraries, which must run first

from governance.enforcement.deployment import DeploymentError, VerifiedDeployment, verify_deployment  # noqa: E402
from governance.enforcement.intervention import EnforcedBlocklist, apply_blocklist, enforcer_of  # noqa: E402
from governance.enforcement.trace import build_traces  # noqa: E402


def private_copy(source: Path, dest: Path) -> Path:
    """Copy a deployment folder's plain files into `dest` (under a private temporary folder);
    links are refused, as verification refuses them."""
    if source.is_symlink() or not source.is_dir():
        raise DeploymentError(f"{source} is not a deployment folder")
    dest.mkdir(mode=0o700)
    for p in sorted(source.rglob("*")):
        rel = p.relative_to(source)
        if p.is_symlink():
            raise DeploymentError(f"{rel.as_posix()} is a symbolic link; a deployment may not contain links")
        if p.is_dir():
            (dest / rel).mkdir(mode=0o700, exist_ok=True)
        elif p.is_file():
            (dest / rel).parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            shutil.copyfile(p, dest / rel, follow_symlinks=False)
    return dest


class EnforcedStableDiffusionPipeline(StableDiffusionPipeline):
    """A StableDiffusionPipeline that verifies its deployment folder and enforces its blocklist."""

    saegov: VerifiedDeployment

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | Path, *, store: Any | None = None,
                        check_registry: bool = True, trusted_keys: Collection[str] | None = None,
                        trusted_keys_file: str | Path | None = None, allow_untrusted: bool = False, **kwargs: Any):
        """Verify the deployment (governance.enforcement.deployment.verify_deployment: hashes,
        trusted signature, approvals unless `check_registry=False`) and load it, enforcing.

        The folder is first copied into a private temporary folder, and that copy is what is
        verified and loaded: a file swapped in the original between the check and diffusers'
        read is never used.
        """
        source = Path(pretrained_model_name_or_path)
        kwargs.setdefault("safety_checker", None)
        kwargs.setdefault("requires_safety_checker", False)
        kwargs["use_safetensors"] = True  # never unpickle weights, whatever the folder holds
        with tempfile.TemporaryDirectory(prefix="saegov-deployment-") as tmp:
            path = private_copy(source, Path(tmp) / "deployment")
            verified = verify_deployment(path, store=store, check_registry=check_registry, trusted_keys=trusted_keys,
                                         trusted_keys_file=trusted_keys_file, allow_untrusted=allow_untrusted)
            pipe = super().from_pretrained(str(path), **kwargs)
            p = verified.manifest.payload
            saes = {s.hook_point: (s.path, p.files[f"{s.path}/sae.safetensors"]) for s in p.saes}
            blocklist = EnforcedBlocklist.load(path, saes, spec=verified.blocklist)
        verified.path = source
        pipe.set_progress_bar_config(disable=True)
        pipe.saegov = verified
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
        out.trace_records = build_traces(enforcer.calls if enforcer else [], n, guidance > 1.0,
                                         self.deployment_info, prompts or [""] * n, seeds)
        out.traces = [t.to_json_dict() for t in out.trace_records]
        return out
