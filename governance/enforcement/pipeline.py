"""`EnforcedStableDiffusionPipeline`: a verified deployment folder, loaded and enforcing.

    pipe = EnforcedStableDiffusionPipeline.from_pretrained("deployments/no-red")
    out = pipe("a red circle")          # the approved scheduler, step count and guidance
    out.traces[0]                       # which features were suppressed, for whom, approved by whom
                                        # (a saegov.trace/v1 dict; out.trace_records: the models)
"""
from __future__ import annotations

import shutil
import tempfile
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any

from governance.basemodel.loading import quiet_libraries

quiet_libraries()

import torch  # noqa: E402
from diffusers import StableDiffusionPipeline  # noqa: E402 - after quiet_libraries, which must run first

from governance.common.hashing import sha256_bytes  # noqa: E402
from governance.enforcement.component import verified_loading  # noqa: E402 - also: diffusers finds the class
from governance.enforcement.deployment import (  # noqa: E402
    DeploymentError, VerifiedDeployment, _hash_tree, read_manifest, verify_deployment,
)
from governance.enforcement.intervention import ATTR, EnforcedBlocklist, apply_blocklist, enforcer_of  # noqa: E402
from governance.enforcement.trace import build_traces  # noqa: E402

# Seeds saegov draws itself: small enough to type into `saegov generate --seed`.
SEED_BOUND = 2**32


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


def copy_verified_deployment(verified: VerifiedDeployment, dest: str | Path) -> Path:
    """Copy the deployment folder `verified` was loaded from to `dest` (absent or empty), and
    check that the copy is byte for byte what was verified: the same manifest, every file it
    lists and no other. The copy appears at `dest` only once it has passed."""
    dest = Path(dest)
    if dest.is_symlink() or (dest.exists() and (not dest.is_dir() or any(dest.iterdir()))):
        raise DeploymentError(f"{dest} exists and is not an empty folder")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        copy = private_copy(Path(verified.path), tmp / "deployment")
        _, raw = read_manifest(copy)
        if sha256_bytes(raw) != verified.manifest_sha256 or _hash_tree(copy) != verified.manifest.payload.files:
            raise DeploymentError(f"{verified.path} is no longer the deployment this pipeline verified and loaded; "
                                  "load it again before saving")
        if dest.exists():
            dest.rmdir()  # empty (checked above)
        copy.rename(dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


class EnforcedStableDiffusionPipeline(StableDiffusionPipeline):
    """A StableDiffusionPipeline that verifies its deployment folder and enforces its blocklist.

    It is called like a StableDiffusionPipeline (`num_images_per_prompt`, `output_type` "pil",
    "np", "pt" or "latent", `callback_on_step_end`, `latents`, `prompt_embeds`, ...), with the
    deployment's approved step count and guidance as defaults, and adds one trace per image:
    - `return_dict=True` (default): the diffusers output with `.traces` (saegov.trace/v1 dicts)
      and `.trace_records` (governance.formats.trace.Trace), in the order of `.images`;
    - `return_dict=False`: the tuple `(images, nsfw_content_detected, traces)`: diffusers' two
      elements, then the trace dicts.

    Seeds: every trace records the seed its image was generated from, and
    `torch.Generator(device).manual_seed(seed)` (device: the caller's generator's, else "cpu")
    with the same prompt and settings generates it again, alone or in any batch:
    - `seeds=[...]` (one per image, None: draw one): each image gets a CPU generator of its seed;
      with `generator=` as well, the generator(s) must be fresh from exactly those seeds;
    - `generator=` only: a generator fresh from `manual_seed` (one per image, or a single one for
      a single image) is used as it is and its seed recorded; any other generator (used, or one
      for several images) draws a seed per image, from which each image's generator is made;
    - neither: a seed per image is drawn from torch's global generator (so `torch.manual_seed`
      still makes a run repeatable);
    - `latents=`: the caller's noise, not a seed, starts the image, and the trace's seed is None.

    `.to(device or dtype)` moves the SAEs with the UNet (a dtype given explicitly is theirs too).
    `from_pipe` of an enforced pipeline shares its components and its enforcement; of any other
    pipeline it is refused. `save_pretrained` writes a copy of the verified deployment folder, as
    signed (never in-memory changes to the components: a changed model is a new deployment).
    """

    saegov: VerifiedDeployment

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | Path, *, store: Any | None = None,
                        check_registry: bool = True, trusted_keys: Collection[str] | None = None,
                        trusted_keys_file: str | Path | None = None, allow_untrusted: bool = False, **kwargs: Any):
        """Verify the deployment (governance.enforcement.deployment.verify_deployment: hashes,
        trusted signature, approvals unless `check_registry=False`) and load it, enforcing.

        The folder is first copied into a private temporary folder, and that copy is what is
        verified and loaded: a file swapped in the original between the check and diffusers'
        read is never used. Only this loading, of that copy, may load a deployment's
        saegov-only UNet (governance.enforcement.component).
        """
        source = Path(pretrained_model_name_or_path)
        kwargs.setdefault("safety_checker", None)
        kwargs.setdefault("requires_safety_checker", False)
        kwargs["use_safetensors"] = True  # never unpickle weights, whatever the folder holds
        with tempfile.TemporaryDirectory(prefix="saegov-deployment-") as tmp:
            path = private_copy(source, Path(tmp) / "deployment")
            verified = verify_deployment(path, store=store, check_registry=check_registry, trusted_keys=trusted_keys,
                                         trusted_keys_file=trusted_keys_file, allow_untrusted=allow_untrusted)
            with verified_loading(path):
                pipe = super().from_pretrained(str(path), **kwargs)
            p = verified.manifest.payload
            saes = {s.hook_point: (s.path, p.files[f"{s.path}/sae.safetensors"]) for s in p.saes}
            blocklist = EnforcedBlocklist.load(path, saes, spec=verified.blocklist)
        verified.path = source
        pipe.register_to_config(_name_or_path=str(source))  # not the temporary copy, gone by now
        pipe.set_progress_bar_config(disable=True)
        pipe.saegov = verified
        apply_blocklist(pipe, blocklist, error_mode=verified.manifest.payload.error_mode)
        return pipe

    @classmethod
    def from_pipe(cls, pipeline: Any, **kwargs: Any):
        """A new EnforcedStableDiffusionPipeline sharing `pipeline`'s components, its verified
        deployment and its enforcement (the hooks live on the shared UNet). Only an enforced
        pipeline is accepted, and none of its components may be replaced: either would give a
        pipeline whose enforcement is not the verified deployment's."""
        enforcer = enforcer_of(pipeline)
        verified = getattr(pipeline, "saegov", None)
        if not isinstance(pipeline, EnforcedStableDiffusionPipeline) or enforcer is None or verified is None:
            raise DeploymentError("EnforcedStableDiffusionPipeline.from_pipe needs an enforced pipeline (loaded with "
                                  "EnforcedStableDiffusionPipeline.from_pretrained), not "
                                  f"a {type(pipeline).__name__} with no verified deployment")
        replaced = sorted(k for k in kwargs if k in pipeline.components or k == "custom_pipeline")
        if replaced:
            raise DeploymentError(f"from_pipe cannot replace {', '.join(replaced)} of an enforced pipeline; load "
                                  "another deployment instead")
        # Given explicitly: diffusers would drop a component whose class is not exactly the one
        # the signature names (the deployment's saegov UNet subclass).
        new = super().from_pipe(pipeline, **pipeline.components, **kwargs)
        new.saegov = verified
        new.__dict__[ATTR] = enforcer
        new.set_progress_bar_config(disable=True)
        enforcer.to(device=new.unet.device)  # from_pipe may have moved the shared UNet
        return new

    def save_pretrained(self, save_directory: str | Path, safe_serialization: bool = True, variant: str | None = None,
                        max_shard_size: int | str | None = None, push_to_hub: bool = False, **kwargs: Any) -> None:
        """Write a copy of the verified deployment folder to `save_directory` (absent or empty),
        checked against the manifest this pipeline verified; it verifies and loads like the
        original. Saved is the deployment as signed, not in-memory changes to the components."""
        if push_to_hub or variant is not None or not safe_serialization:
            raise DeploymentError("a deployment is saved only as the signed folder it is: no push_to_hub, variant or "
                                  "non-safetensors serialization")
        copy_verified_deployment(self.saegov, save_directory)

    def to(self, *args: Any, **kwargs: Any):
        pipe = super().to(*args, **kwargs)
        enforcer = enforcer_of(pipe)
        if enforcer is not None:
            dtype_given = kwargs.get("dtype") is not None or any(isinstance(a, torch.dtype) for a in args)
            enforcer.to(device=pipe.unet.device, dtype=pipe.unet.dtype if dtype_given else None)
        return pipe

    @property
    def deployment_info(self) -> dict[str, Any]:
        p = self.saegov.manifest.payload
        return {"path": str(self.saegov.path), "manifest_sha256": self.saegov.manifest_sha256,
                "deployment_id": self.saegov.deployment_id, "blocklist": p.blocklist,
                "built_by": p.built_by, "built_at": p.built_at}

    def __call__(self, prompt: str | list[str] | None = None, *, num_inference_steps: int | None = None,
                 guidance_scale: float | None = None, seeds: Sequence[int | None] | None = None,
                 generator: torch.Generator | list[torch.Generator] | None = None, return_dict: bool = True,
                 **kwargs: Any):
        d = self.saegov.manifest.payload.defaults
        steps = d.num_inference_steps if num_inference_steps is None else num_inference_steps
        guidance = d.guidance_scale if guidance_scale is None else guidance_scale
        prompts = [prompt] if isinstance(prompt, str) else list(prompt or [])
        per_prompt = int(kwargs.get("num_images_per_prompt") or 1)
        if prompts:
            n = len(prompts) * per_prompt
        elif kwargs.get("prompt_embeds") is not None:
            n = int(kwargs["prompt_embeds"].shape[0]) * per_prompt
        else:
            n = per_prompt  # diffusers refuses a call with neither prompt nor embeddings
        if kwargs.get("latents") is not None:
            if seeds is not None:
                raise ValueError("seeds and latents cannot both be given: the latents, not a seed, start the images")
            image_seeds: list[int | None] = [None] * n
        else:
            generator, image_seeds = _seeded_generators(n, seeds, generator)
        enforcer = enforcer_of(self)
        if enforcer is not None:
            enforcer.reset_trace()
        out = super().__call__(prompt, num_inference_steps=steps, guidance_scale=guidance, generator=generator,
                               return_dict=True, **kwargs)
        prompts = [p for p in prompts for _ in range(per_prompt)]
        n = len(out.images)
        image_seeds = image_seeds if len(image_seeds) == n else [None] * n
        out.trace_records = build_traces(enforcer.calls if enforcer else [], n, bool(self.do_classifier_free_guidance),
                                         self.deployment_info, prompts or [""] * n, image_seeds)
        out.traces = [t.to_json_dict() for t in out.trace_records]
        if not return_dict:
            return out.images, out.nsfw_content_detected, out.traces
        return out


def _fresh_seed(g: torch.Generator) -> int | None:
    """The seed `g` was made from when nothing has been drawn from it since; else None."""
    seed = int(g.initial_seed())
    fresh = torch.Generator(device=g.device).manual_seed(seed)
    return seed if torch.equal(g.get_state(), fresh.get_state()) else None


def _draw_seed(g: torch.Generator | None) -> int:
    device = g.device if g is not None else "cpu"
    return int(torch.randint(0, SEED_BOUND, (1,), generator=g, device=device))


def _seeded_generators(n: int, seeds: Sequence[int | None] | None,
                       generator: torch.Generator | list[torch.Generator] | None
                       ) -> tuple[list[torch.Generator] | torch.Generator, list[int | None]]:
    """The generator(s) to pass to diffusers for `n` images, and each image's real seed (see the
    class docstring)."""
    gens = list(generator) if isinstance(generator, (list, tuple)) else None
    if gens is not None and len(gens) != n:
        raise ValueError(f"{len(gens)} generators given for {n} images; give one per image")
    if seeds is not None:
        seeds = list(seeds)
        if len(seeds) != n:
            raise ValueError(f"{len(seeds)} seeds given for {n} images; give one per image")
        if any(s is not None and (not isinstance(s, int) or isinstance(s, bool)) for s in seeds):
            raise ValueError("seeds must be integers (or None: draw one)")
        if generator is None:
            drawn = [s if s is not None else _draw_seed(None) for s in seeds]
            return [torch.Generator().manual_seed(s) for s in drawn], list(drawn)
        given = gens if gens is not None else [generator]
        if len(given) != n or any(s is None or _fresh_seed(g) != s % 2**64 for g, s in zip(given, seeds)):
            raise ValueError("generator does not match seeds: give seeds alone, or one generator per image, each "
                             "fresh from torch.Generator().manual_seed(its seed)")
        return generator, list(seeds)  # type: ignore[return-value]
    if generator is None:
        drawn = [_draw_seed(None) for _ in range(n)]
        return [torch.Generator().manual_seed(s) for s in drawn], list(drawn)
    if gens is None:
        seed = _fresh_seed(generator) if n == 1 else None
        if seed is not None:
            return generator, [seed]
        drawn = [_draw_seed(generator) for _ in range(n)]
        return [torch.Generator(device=generator.device).manual_seed(s) for s in drawn], list(drawn)
    out_gens: list[torch.Generator] = []
    out_seeds: list[int | None] = []
    for g in gens:
        seed = _fresh_seed(g)
        if seed is None:
            seed = _draw_seed(g)
            g = torch.Generator(device=g.device).manual_seed(seed)
        out_gens.append(g)
        out_seeds.append(seed)
    return out_gens, out_seeds
