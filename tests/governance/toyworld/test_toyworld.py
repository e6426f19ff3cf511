from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from cli.main import saegov
from governance.toyworld import model as tw
from governance.toyworld.classify import classify, classify_colour, classify_shape, classify_style
from governance.toyworld.grammar import COLOURS, SHAPES, STYLES, ToyPrompt, all_prompts, parse_prompt, partial_prompts
from governance.toyworld.render import render

torch.set_num_threads(1)


def test_grammar_lists_every_combination_and_parses_back() -> None:
    prompts = all_prompts()
    assert len(prompts) == len(COLOURS) * len(SHAPES) * (len(STYLES) + 1)
    assert len({p.text for p in prompts}) == len(prompts)
    for p in prompts:
        assert parse_prompt(p.text) == p
    assert parse_prompt("a red circle in striped style").style == "striped"
    with pytest.raises(ValueError):
        parse_prompt("a purple circle")


def test_partial_prompts_leave_out_colour_or_shape_and_parse_back() -> None:
    partial = partial_prompts()
    assert len(partial) == 5 * 5 * 4 - 4 * 4 * 4
    assert ToyPrompt(None, "circle", "dotted").text == "a circle in dotted style"
    assert ToyPrompt("red", None, None).text == "a red shape"
    assert ToyPrompt(None, None, None).text == "a shape"
    for p in partial:
        assert parse_prompt(p.text) == p
    for bad in ("a red", "a red red circle", "circle", "a red circle in style", "a red shapes"):
        with pytest.raises(ValueError):
            parse_prompt(bad)


def test_prompts_cli_json() -> None:
    result = CliRunner().invoke(saegov, ["toyworld", "prompts", "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert {"prompt": "a blue cross in dotted style", "colour": "blue", "shape": "cross", "style": "dotted"} in rows
    assert {"prompt": "a red circle", "colour": "red", "shape": "circle", "style": None} in rows


@pytest.mark.parametrize("kind", ["colour", "shape", "style"])
def test_exact_classifiers_on_rendered_ground_truth(kind: str) -> None:
    """Every value of each kind, its neutral value (None) included, on 750 renders."""
    rng = np.random.default_rng(7)
    n, correct = 750, 0
    fn = {"colour": classify_colour, "shape": classify_shape, "style": classify_style}[kind]
    colours, shapes, styles = (*COLOURS, None), (*SHAPES, None), (*STYLES, None)
    misses: dict[object, int] = {}
    for i in range(n):
        c, s, st = colours[i % 5], shapes[(i // 5) % 5], styles[(i // 25) % 4]
        truth = {"colour": c, "shape": s, "style": st}[kind]
        ok = fn(render(c, s, st, rng)) == truth
        correct += ok
        if not ok:
            misses[truth] = misses.get(truth, 0) + 1
    assert correct / n >= 0.99, misses


def test_classifier_rejects_blank_image() -> None:
    blank = np.full((32, 32, 3), 205, dtype=np.uint8)
    pred = classify(blank)
    assert pred.colour is None and pred.shape is None and pred.style == "plain"
    white = np.full((32, 32, 3), 245, dtype=np.uint8)
    assert classify(white).style is None


def test_debris_has_no_shape() -> None:
    """What an edit leaves of a wrecked object is no shape: a shape cut in two, or a blob no
    template fits. The intact render of the same shape is recognised."""
    rng = np.random.default_rng(11)
    img = render("red", "circle", "plain", rng)
    assert classify_shape(img) == "circle"
    cut = img.copy()
    obj = (cut.max(axis=2).astype(int) - cut.min(axis=2)) > 60
    cols = np.nonzero(obj.any(axis=0))[0]
    mid = (cols.min() + cols.max()) // 2
    cut[:, mid - 2:mid + 2] = 205  # the circle in two halves: neither holds 90 % of the object
    assert classify_shape(cut) is None
    blob = np.full((32, 32, 3), 205, dtype=np.uint8)
    blob[8:10, 6:26] = (220, 40, 40)  # a thin red bar fits every template at IoU < 0.65
    blob[10:24, 14:16] = (220, 40, 40)
    assert classify_shape(blob) is None


def test_neutral_values_are_not_mistaken_for_concepts() -> None:
    """An uncoloured diamond on the blank background has no colour, no shape and no style."""
    rng = np.random.default_rng(3)
    for _ in range(50):
        pred = classify(render(None, None, None, rng))
        assert (pred.colour, pred.shape, pred.style) == (None, None, None)
    for style in STYLES:  # the uncoloured object is still found, and its shape and background
        for shape in SHAPES:
            pred = classify(render(None, shape, style, rng))
            assert pred.colour is None and pred.shape == shape and pred.style == style


def test_uncoloured_object_on_plain_is_plain_when_blurred() -> None:
    """A removed colour leaves an uncoloured object; its soft edge must not read as dots."""
    kernel = np.exp(-0.5 * np.arange(-3, 4) ** 2)  # Gaussian, sigma 1 pixel
    kernel /= kernel.sum()

    def blur(img: np.ndarray) -> np.ndarray:
        padded = np.pad(img, ((3, 3), (3, 3), (0, 0)), mode="edge")
        rows = sum(w * padded[i:i + img.shape[0]] for i, w in enumerate(kernel))
        return sum(w * rows[:, i:i + img.shape[1]] for i, w in enumerate(kernel))

    rng = np.random.default_rng(5)
    for i in range(40):
        img = render(None, SHAPES[i % 4], "plain", rng).astype(np.float32)
        assert classify_style(blur(img).round().astype(np.uint8)) == "plain"


def test_training_captions_match_their_images() -> None:
    from governance.toyworld.train import TrainConfig, _render_batch

    images, captions = _render_batch(np.random.default_rng(11), 200, TrainConfig())
    omitted = 0
    for img, caption in zip(images, captions):
        truth, pred = parse_prompt(caption), classify(img)
        assert (pred.colour, pred.shape) == (truth.colour, truth.shape), caption
        assert pred.style == truth.style, caption
        omitted += truth.colour is None or truth.shape is None
    assert 40 <= omitted <= 110  # about 1 - 0.8 * 0.8 = 36 % leave out the colour or the shape


def test_tokenizer_keeps_every_word_whole() -> None:
    tok = tw.build_tokenizer()
    ids = tok("a yellow triangle in dotted style").input_ids
    assert len(ids) == 8  # bos + 6 words + eos
    assert tok.decode(ids, skip_special_tokens=True).split() == ["a", "yellow", "triangle", "in", "dotted", "style"]


def test_untrained_pipeline_round_trips_and_has_sd_hook_points(tmp_path: Path) -> None:
    from diffusers import StableDiffusionPipeline

    tw.build_untrained_pipeline().save_pretrained(str(tmp_path / "p"))
    pipe = StableDiffusionPipeline.from_pretrained(str(tmp_path / "p"))
    pipe.set_progress_bar_config(disable=True)
    shapes: dict[str, tuple[int, ...]] = {}
    modules = dict(pipe.unet.named_modules())
    def record(name: str):
        def hook(module, args, out) -> None:
            shapes[name] = tuple(out[0].shape)

        return hook

    names = ("up_blocks.1.attentions.1", "up_blocks.1.attentions.2")
    handles = [modules[name].register_forward_hook(record(name)) for name in names]
    try:
        image = pipe("a red circle", num_inference_steps=2, generator=torch.Generator().manual_seed(0)).images[0]
    finally:
        for h in handles:
            h.remove()
    assert image.size == (32, 32) and image.mode == "RGB"
    assert type(modules["up_blocks.1.attentions.1"]).__name__ == "Transformer2DModel"
    assert set(shapes) == set(names)
    for shape in shapes.values():
        assert shape[2:] == (8, 8) and shape[1] == tw.UNET_CHANNELS[1]


def _small_cfg(**kw):
    from governance.toyworld.train import TrainConfig

    base = dict(vae_steps=6, vae_batch=8, pool_size=256, batch=16, max_steps=8, warmup=2, checkpoint_every_s=0.0)
    base.update(kw)
    return TrainConfig(**base)


def test_training_resumes_exactly_after_interruption(tmp_path: Path) -> None:
    from safetensors.torch import load_file

    from governance.toyworld.train import Trainer

    Trainer(tmp_path / "a", _small_cfg()).run()

    class Stop(Exception):
        pass

    def crash(stage: str, step: int, total: int, metrics: dict[str, float]) -> None:
        if stage == "unet" and step == 5:
            raise Stop

    with pytest.raises(Stop):
        Trainer(tmp_path / "b", _small_cfg(), crash).run()
    state = json.loads((tmp_path / "b" / "checkpoint" / "state.json").read_text())
    assert state["stage"] == "unet" and state["step"] == 4
    from dataclasses import replace

    from governance.toyworld.train import CheckpointMismatch

    with pytest.raises(CheckpointMismatch, match="lr differ"):  # another recipe is refused, not mixed in
        Trainer(tmp_path / "b", replace(_small_cfg(), lr=1e-3)).run()
    Trainer(tmp_path / "b", replace(_small_cfg(), checkpoint_every_s=999.0)).run()  # pacing may change
    a = load_file(str(tmp_path / "a" / "pipeline" / "unet" / "diffusion_pytorch_model.safetensors"))
    b = load_file(str(tmp_path / "b" / "pipeline" / "unet" / "diffusion_pytorch_model.safetensors"))
    assert a.keys() == b.keys()
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-5


def test_training_recipe_lowers_the_loss(tmp_path: Path) -> None:
    from governance.toyworld.train import Trainer

    trainer = Trainer(tmp_path, _small_cfg(vae_steps=10, max_steps=60, batch=32, pool_size=512, lr=1e-3, warmup=5))
    trainer.run()
    first, last = np.mean(trainer.losses[:10]), np.mean(trainer.losses[-10:])
    assert last < 0.8 * first, (first, last)
