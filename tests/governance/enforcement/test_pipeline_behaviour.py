"""EnforcedStableDiffusionPipeline behaves like a diffusers pipeline (return_dict, callbacks,
num_images_per_prompt, output types, .to, from_pipe, save_pretrained) without ever becoming an
unenforced one, every trace records the real seed of its image, and plain diffusers refuses a
deployment folder. Real toy deployments (the `world` fixture), no mocks."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.governance.enforcement.conftest import build
from tests.helpers.enforcement import HOOK

torch.set_num_threads(1)
REPO = Path(__file__).resolve().parents[3]


def _load(world, out: Path):
    from governance.enforcement import EnforcedStableDiffusionPipeline

    return EnforcedStableDiffusionPipeline.from_pretrained(out, store=world["store"])


def _suppressions(trace: dict) -> list:
    return [sorted((s["hook_point"], s["feature"], s["concept"], tuple(s["halves"])) for s in c["suppressed"])
            for c in trace["unet_calls"]]


def test_plain_diffusers_refuses_a_deployment_with_one_clear_sentence(world) -> None:
    from diffusers import AutoPipelineForText2Image, DiffusionPipeline, StableDiffusionPipeline

    from governance.enforcement import verify_deployment
    from governance.enforcement.component import PlainLoadRefused, is_saegov_only

    out = build(world)
    assert is_saegov_only(out)
    for cls in (StableDiffusionPipeline, DiffusionPipeline, AutoPipelineForText2Image):
        with pytest.raises(PlainLoadRefused) as exc:
            cls.from_pretrained(str(out))
        message = str(exc.value)
        assert message == (f"{out} is a saegov deployment, and loading it with plain diffusers would skip its "
                           "verification and its blocklist: load it with saegov's "
                           "EnforcedStableDiffusionPipeline.from_pretrained(folder) or "
                           "`saegov generate --deployment folder`")
    # The declaration is signed like every other file: putting the standard one back is tampering.
    v = verify_deployment(out, store=world["store"])
    assert json.loads((out / "model_index.json").read_text())["unet"] == [
        "governance.enforcement.component", "SaegovUNet2DConditionModel"]
    index = json.loads((out / "model_index.json").read_text())
    index["unet"] = ["diffusers", "UNet2DConditionModel"]
    (out / "model_index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    from governance.enforcement import DeploymentError

    with pytest.raises(DeploymentError, match="file model_index.json was modified"):
        verify_deployment(out, store=world["store"])
    assert v.registry_checked


def test_plain_diffusers_without_saegov_imported_refuses_too(world) -> None:
    """A process that never imported saegov: diffusers will not import the module the folder
    names, so it refuses (its own message names the module)."""
    out = build(world)
    code = ("import sys\nfrom diffusers import StableDiffusionPipeline\n"
            f"try:\n    StableDiffusionPipeline.from_pretrained({str(out)!r})\n"
            "except Exception as exc:\n    print(type(exc).__name__, exc); sys.exit(7)\n"
            "assert not any(m.startswith('governance') for m in sys.modules)\n")
    env = {**os.environ, "DIFFUSERS_VERBOSITY": "error", "PYTHONPATH": ""}
    r = subprocess.run([sys.executable, "-c", code], cwd=str(out.parent), env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 7, r.stdout + r.stderr
    assert r.stdout.startswith("ValueError governance.enforcement.component is not one of the libraries"), r.stdout


def test_enforced_pipeline_loads_it_with_the_saegov_unet_and_enforces(world) -> None:
    from diffusers import UNet2DConditionModel

    from governance.enforcement.component import SaegovUNet2DConditionModel
    from governance.enforcement.intervention import enforcer_of

    out = build(world)
    pipe = _load(world, out)
    assert isinstance(pipe.unet, SaegovUNet2DConditionModel) and isinstance(pipe.unet, UNet2DConditionModel)
    assert enforcer_of(pipe).attached()
    assert pipe.config._name_or_path == str(out)
    # The saegov UNet loads from nowhere but the copy being verified.
    from governance.enforcement.component import PlainLoadRefused

    with pytest.raises(PlainLoadRefused):
        SaegovUNet2DConditionModel.from_pretrained(str(out / "unet"))


def test_save_pretrained_writes_a_copy_that_verifies_and_loads(world, tmp_path: Path) -> None:
    from diffusers import StableDiffusionPipeline

    from governance.enforcement import DeploymentError, verify_deployment
    from governance.enforcement.component import PlainLoadRefused

    out = build(world)
    pipe = _load(world, out)
    dest = tmp_path / "saved"
    pipe.save_pretrained(dest)
    v = verify_deployment(dest, store=world["store"])
    assert v.manifest_sha256 == pipe.saegov.manifest_sha256 and (dest / "saegov" / "blocklist.json").is_file()
    again = _load(world, dest)
    a = pipe("a red circle", seeds=[5], output_type="np")
    b = again("a red circle", seeds=[5], output_type="np")
    assert np.array_equal(a.images, b.images) and _suppressions(a.traces[0]) == _suppressions(b.traces[0])
    assert sum(map(len, _suppressions(a.traces[0]))) > 0
    with pytest.raises(PlainLoadRefused):
        StableDiffusionPipeline.from_pretrained(str(dest))
    with pytest.raises(DeploymentError, match="exists and is not an empty folder"):
        pipe.save_pretrained(dest)
    with pytest.raises(DeploymentError, match="no push_to_hub"):
        pipe.save_pretrained(tmp_path / "hub", push_to_hub=True)
    # The folder it was loaded from changed since: nothing is written.
    (out / "unet" / "extra.json").write_text("{}")
    with pytest.raises(DeploymentError, match="no longer the deployment this pipeline verified"):
        pipe.save_pretrained(tmp_path / "again")
    assert not (tmp_path / "again").exists() and not any(p.name.startswith(".again") for p in tmp_path.iterdir())


def test_return_dict_false_output_types_and_callbacks(world) -> None:
    from PIL import Image

    pipe = _load(world, build(world))
    steps = pipe.saegov.manifest.payload.defaults.num_inference_steps
    images, nsfw, traces = pipe("a red circle", seeds=[1], return_dict=False)
    assert len(images) == 1 and isinstance(images[0], Image.Image) and nsfw is None
    assert len(traces) == 1 and traces[0]["seed"] == 1 and len(traces[0]["unet_calls"]) == steps
    reference = _suppressions(traces[0])
    assert sum(map(len, reference)) > 0
    shapes = {"np": (1, 32, 32, 3), "pt": (1, 3, 32, 32)}
    outs = {}
    for kind in ("np", "pt", "latent"):
        out = pipe("a red circle", seeds=[1], output_type=kind)
        outs[kind] = out.images
        assert len(out.traces) == 1 and out.traces[0]["seed"] == 1
        assert _suppressions(out.traces[0]) == reference  # the same generation, whatever is returned
    assert isinstance(outs["np"], np.ndarray) and outs["np"].shape == shapes["np"]
    assert isinstance(outs["pt"], torch.Tensor) and tuple(outs["pt"].shape) == shapes["pt"]
    latent = outs["latent"]
    assert isinstance(latent, torch.Tensor) and latent.shape[0] == 1 and latent.shape[1] == pipe.unet.config.in_channels
    assert np.allclose(outs["pt"].permute(0, 2, 3, 1).numpy(), outs["np"], atol=1e-6)
    assert np.array_equal(np.asarray(images[0]), (outs["np"][0] * 255).round().astype(np.uint8))

    seen: list[tuple[int, int]] = []

    def on_step(p, i: int, t: torch.Tensor, kw: dict) -> dict:
        assert p is pipe
        seen.append((i, int(t)))
        kw["latents"] = kw["latents"] * 1.0
        return kw

    out = pipe("a red circle", seeds=[1], output_type="np", callback_on_step_end=on_step,
               callback_on_step_end_tensor_inputs=["latents"])
    assert [i for i, _ in seen] == list(range(steps))
    assert [t for _, t in seen] == [c["timestep"] for c in out.traces[0]["unet_calls"]]
    assert np.array_equal(out.images, outs["np"])


def test_several_images_get_real_distinct_seeds_that_regenerate_them(world) -> None:
    pipe = _load(world, build(world))
    # No seeds, no generator: a seed per image, drawn from torch's generator.
    torch.manual_seed(123)
    out = pipe(["a red circle", "a blue square"], num_images_per_prompt=2, output_type="np")
    seeds = [t["seed"] for t in out.traces]
    assert len(out.images) == 4 and len(out.traces) == 4
    assert all(isinstance(s, int) for s in seeds) and len(set(seeds)) == 4
    prompts = ["a red circle", "a red circle", "a blue square", "a blue square"]
    from governance.common.hashing import sha256_text

    assert [t["prompt_sha256"] for t in out.traces] == [sha256_text(p) for p in prompts]
    for j in (1, 2):  # alone, from its traced seed: the same image and the same suppressions
        alone = pipe(prompts[j], seeds=[seeds[j]], output_type="np")
        assert np.allclose(alone.images[0], out.images[j], atol=1e-5)
        assert _suppressions(alone.traces[0]) == _suppressions(out.traces[j])
    torch.manual_seed(123)  # torch.manual_seed still makes the run repeatable
    assert [t["seed"] for t in pipe(["a red circle", "a blue square"], num_images_per_prompt=2,
                                    output_type="latent").traces] == seeds

    # One generator for two images: it draws their seeds (repeatably), each image regenerates.
    two = pipe("a red circle", num_images_per_prompt=2, generator=torch.Generator().manual_seed(9), output_type="np")
    s2 = [t["seed"] for t in two.traces]
    assert len(set(s2)) == 2
    again = pipe("a red circle", num_images_per_prompt=2, generator=torch.Generator().manual_seed(9), output_type="np")
    assert [t["seed"] for t in again.traces] == s2 and np.array_equal(again.images, two.images)
    assert np.allclose(pipe("a red circle", seeds=[s2[1]], output_type="np").images[0], two.images[1], atol=1e-5)

    # A fresh generator per image (saegov generate, the evaluation): used as it is, its seed recorded.
    fresh = pipe(["a red circle", "a red circle"], generator=[torch.Generator().manual_seed(s) for s in (4, 8)],
                 output_type="np")
    assert [t["seed"] for t in fresh.traces] == [4, 8]
    assert np.allclose(pipe("a red circle", seeds=[8], output_type="np").images[0], fresh.images[1], atol=1e-5)
    used = torch.Generator().manual_seed(4)
    torch.rand(1, generator=used)
    drawn = pipe("a red circle", generator=used, output_type="np").traces[0]["seed"]
    assert drawn != 4 and isinstance(drawn, int)

    # Seeds and generator together must agree; seeds with latents would be a lie.
    assert pipe("a red circle", seeds=[3], generator=torch.Generator().manual_seed(3)).traces[0]["seed"] == 3
    with pytest.raises(ValueError, match="generator does not match seeds"):
        pipe("a red circle", seeds=[3], generator=torch.Generator().manual_seed(4))
    with pytest.raises(ValueError, match="2 seeds given for 1 images"):
        pipe("a red circle", seeds=[3, 4])
    size = pipe.unet.config.sample_size
    latents = torch.randn(1, pipe.unet.config.in_channels, size, size, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="seeds and latents"):
        pipe("a red circle", seeds=[3], latents=latents)
    assert pipe("a red circle", latents=latents, output_type="latent").traces[0]["seed"] is None


def test_to_moves_the_saes_with_the_unet(world) -> None:
    from governance.enforcement.intervention import enforcer_of

    pipe = _load(world, build(world))
    base = pipe("a red circle", seeds=[2], output_type="np")
    enforcer = enforcer_of(pipe)
    site = enforcer.sites[HOOK]
    assert site.tables  # compiled by the call
    assert pipe.to("cpu") is pipe and site.sae.W_dec.device.type == "cpu"
    pipe.to(torch.float64)
    assert pipe.unet.dtype == torch.float64
    assert all(p.dtype == torch.float64 for p in site.sae.parameters()) and not site.tables
    out = pipe("a red circle", seeds=[2], output_type="np")
    assert {t.w_dec.dtype for t in site.tables.values()} == {torch.float64}
    # (float64 noise is drawn differently from float32 noise: a different image, still enforced)
    assert sum(map(len, _suppressions(out.traces[0]))) > 0 and out.traces[0]["seed"] == 2
    pipe.to(dtype=torch.float32)
    assert site.sae.W_dec.dtype == torch.float32
    again = pipe("a red circle", seeds=[2], output_type="np")
    assert np.allclose(again.images, base.images, atol=1e-6) and _suppressions(again.traces[0]) == _suppressions(
        base.traces[0])


def test_from_pipe_keeps_enforcement_or_refuses(world) -> None:
    from diffusers import StableDiffusionPipeline

    from governance.enforcement import DeploymentError, EnforcedStableDiffusionPipeline
    from governance.enforcement.intervention import enforcer_of
    from tests.helpers.enforcement import load_pipe

    pipe = _load(world, build(world))
    base = pipe("a red circle", seeds=[6], output_type="np")
    new = EnforcedStableDiffusionPipeline.from_pipe(pipe)
    assert new is not pipe and new.unet is pipe.unet and enforcer_of(new) is enforcer_of(pipe)
    assert new.saegov is pipe.saegov
    out = new("a red circle", seeds=[6], output_type="np")
    assert np.array_equal(out.images, base.images) and _suppressions(out.traces[0]) == _suppressions(base.traces[0])
    with pytest.raises(DeploymentError, match="cannot replace unet"):
        EnforcedStableDiffusionPipeline.from_pipe(pipe, unet=load_pipe(world["model"]).unet)
    with pytest.raises(DeploymentError, match="needs an enforced pipeline"):
        EnforcedStableDiffusionPipeline.from_pipe(load_pipe(world["model"]))
    # Plain diffusers drops the deployment's saegov UNet (not exactly the class its signature
    # names) and then refuses for want of a UNet: no unenforced pipeline comes out.
    with pytest.raises(ValueError, match="expected"):
        StableDiffusionPipeline.from_pipe(pipe)
