"""Activation collection on the (untrained) toy architecture: hooks, shards, resume, CLI errors."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from governance.activations.collect import CollectConfig, CollectionError, collect
from governance.formats.activations import read_activation_manifest
from governance.basemodel.loading import ModelLoadError, model_folder_hash, resolve_model_folder
from governance.basemodel.hooks import (
    HookPointError,
    TimestepReader,
    conditional_half,
    from_tokens,
    hook_names,
    read_timestep,
    resolve_hook_point,
    to_tokens,
)

torch.set_num_threads(1)

PROMPTS = ["a red circle", "a blue square in striped style", "a green cross", "a yellow triangle"]
HOOK = "up_blocks.1.attentions.1"


def _cfg(model: Path, out: Path, **kw: object) -> CollectConfig:
    base: dict[str, object] = dict(model=str(model), hook_point=HOOK, prompts=PROMPTS, out=out, steps=3,
                                   guidance=9.0, seed=0, prompts_per_shard=2, batch_size=2)
    base.update(kw)
    return CollectConfig(**base)  # type: ignore[arg-type]


def test_tokens_are_row_major_and_invertible() -> None:
    x = torch.arange(2 * 3 * 2 * 2, dtype=torch.float32).reshape(2, 3, 2, 2)  # B, C, H, W
    t = to_tokens(x)
    assert t.shape == (8, 3)
    # token 1 is (b=0, h=0, w=1): channels x[0, :, 0, 1]
    assert t[1].tolist() == x[0, :, 0, 1].tolist()
    assert t[2].tolist() == x[0, :, 1, 0].tolist()
    assert t[4].tolist() == x[1, :, 0, 0].tolist()
    assert torch.equal(from_tokens(t, 2, 2, 2), x)


def test_read_timestep_forms() -> None:
    s = torch.zeros(4, 1)
    assert read_timestep((s, 981), {}, 4).tolist() == [981] * 4
    assert read_timestep((s,), {"timestep": torch.tensor(21)}, 4).tolist() == [21] * 4
    assert read_timestep((s,), {"timestep": torch.tensor([5.0, 5.0, 7.0, 7.0])}, 4).tolist() == [5, 5, 7, 7]
    assert read_timestep((s, torch.tensor([999.0])), {}, 2).tolist() == [999, 999]
    with pytest.raises(ValueError, match="3 values for a batch of 4"):
        read_timestep((s, torch.tensor([1, 2, 3])), {}, 4)


def test_conditional_half() -> None:
    x = torch.arange(6)
    assert conditional_half(x, 3).tolist() == [3, 4, 5]  # [uncond, cond]
    assert conditional_half(x, 6).tolist() == list(range(6))  # guidance off
    with pytest.raises(ValueError):
        conditional_half(x, 4)


def test_hook_point_resolution(toy_model: Path) -> None:
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(str(toy_model), subfolder="unet")
    assert type(resolve_hook_point(unet, HOOK)).__name__ == "Transformer2DModel"
    assert type(resolve_hook_point(unet, "up_blocks.1.resnets.0")).__name__ == "ResnetBlock2D"
    with pytest.raises(HookPointError, match=r"'up_blocks\.9' does not exist; valid: .*up_blocks\.1\.attentions\.2"):
        resolve_hook_point(unet, "up_blocks.9")
    with pytest.raises(HookPointError, match="BasicTransformerBlock, not a block with a 4-D output"):
        resolve_hook_point(unet, HOOK + ".transformer_blocks.0")


def test_timestep_reader_positional_and_keyword(toy_model: Path) -> None:
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(str(toy_model), subfolder="unet")
    reader = TimestepReader(unet).attach()
    reader.attach()  # idempotent: still one hook
    assert hook_names(unet) == ["saegov.timestep"]
    sample = torch.zeros(2, 4, 16, 16)
    enc = torch.zeros(2, 10, 64)
    try:
        with torch.no_grad():
            unet(sample, 500, enc)
            assert reader.current.tolist() == [500, 500]
            unet(sample=sample, timestep=torch.tensor([981, 1]), encoder_hidden_states=enc)
            assert reader.current.tolist() == [981, 1]
    finally:
        reader.remove()
    assert hook_names(unet) == []


def test_collect_shards_manifest_and_values(toy_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "acts"
    m = collect(_cfg(toy_model, out))
    assert m.complete and m.n_shards == 2 and [s.rows for s in m.shards] == [2 * 3 * 64] * 2
    assert m.d_in == 64 and m.spatial_shape == (8, 8)
    assert m.timesteps == [667, 334, 1]  # DDIM, 3 steps, leading spacing, steps_offset 1
    assert m.scheduler_class == "DDIMScheduler" and m.unet_calls_per_prompt == 3
    assert m.params.base_model_hash == model_folder_hash(toy_model)
    assert [(s.prompt_start, s.prompt_end) for s in m.shards] == [(0, 2), (2, 4)]
    d = load_file(str(out / "shard-00001.safetensors"))
    assert d["activations"].dtype == torch.float16 and d["activations"].shape == (384, 64)
    assert d["timesteps"].dtype == torch.int32 and d["prompt_index"].dtype == torch.int32
    # rows: (UNet call, sample, h, w)
    assert d["timesteps"][::64].tolist() == [667, 667, 334, 334, 1, 1]
    assert d["prompt_index"][::64].tolist() == [2, 3, 2, 3, 2, 3]
    assert read_activation_manifest(out)[0] == m

    # The conditional half is read: the first UNet call sees identical latents with guidance on
    # and off, so the cond-half rows must equal the guidance-off rows (the uncond half would not).
    off = collect(_cfg(toy_model, tmp_path / "off", guidance=1.0))
    assert off.params.guidance == 1.0
    d_off = load_file(str(tmp_path / "off" / "shard-00001.safetensors"))
    first_on, first_off = d["activations"][:128].float(), d_off["activations"][:128].float()
    assert torch.allclose(first_on, first_off, atol=2e-3)
    assert not torch.allclose(d["activations"][128:].float(), d_off["activations"][128:].float(), atol=2e-3)


def test_sharding_does_not_change_a_prompts_rows(toy_model: Path, tmp_path: Path) -> None:
    a = collect(_cfg(toy_model, tmp_path / "a", prompts_per_shard=1, batch_size=1, prompts=PROMPTS[:3]))
    b = collect(_cfg(toy_model, tmp_path / "b", prompts_per_shard=3, batch_size=1, prompts=PROMPTS[:3]))
    rows_a = torch.cat([load_file(str(tmp_path / "a" / s.file))["activations"] for s in a.shards])
    rows_b = load_file(str(tmp_path / "b" / b.shards[0].file))["activations"]
    assert torch.equal(rows_a, rows_b)  # same prompt order, same per-prompt seeds: bitwise equal


def test_resume_skips_verified_shards_and_redoes_damaged_ones(toy_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "acts"
    first = collect(_cfg(toy_model, out))
    s0, s1 = out / "shard-00000.safetensors", out / "shard-00001.safetensors"
    os.utime(s0, (1, 1))  # a skipped shard keeps this mtime
    blob = bytearray(s1.read_bytes())
    blob[-1] ^= 0xFF  # corrupt shard 1: its sha256 no longer matches the record
    s1.write_bytes(bytes(blob))
    (out / ".shard-00002.safetensors.tmp-1").write_bytes(b"half")  # a crashed write: ignored
    second = collect(_cfg(toy_model, out))
    assert s0.stat().st_mtime == 1
    assert second.shards == first.shards  # shard 1 redone bit-identically
    assert second.complete

    with pytest.raises(CollectionError, match="differs in: steps"):
        collect(_cfg(toy_model, out, steps=4))


def test_model_errors(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="no such folder"):
        resolve_model_folder(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="not a diffusers pipeline folder"):
        resolve_model_folder(str(tmp_path / "empty"))


def test_cli_collect_and_errors(toy_model: Path, tmp_path: Path) -> None:
    from cli.main import saegov

    prompts = tmp_path / "p.json"
    prompts.write_text(json.dumps([{"prompt": p} for p in PROMPTS[:2]]))
    runner = CliRunner()
    base = ["activations", "collect", "--model", str(toy_model), "--prompts", str(prompts), "--steps", "2",
            "--out", str(tmp_path / "out"), "--device", "cpu", "--no-mlflow"]  # runs: tests/cli/test_mlflow_runs.py
    res = runner.invoke(saegov, base + ["--hookpoint", "up_blocks.1.attentions.9"])
    assert res.exit_code == 1
    err_lines = [ln for ln in res.output.splitlines() if ln.startswith("error:")]
    assert len(err_lines) == 1 and "up_blocks.1.attentions.2" in err_lines[0]
    assert res.exception is None or isinstance(res.exception, SystemExit)

    res = runner.invoke(saegov, base + ["--hookpoint", "up_blocks.1.attentions.2", "--json"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)  # progress and links go to stderr
    assert summary["rows"] == 2 * 2 * 64 and summary["shards"] == "1/1" and summary["complete"] is True


def test_second_order_scheduler_every_unet_call_keyed_by_its_timestep(toy_model: Path, tmp_path: Path) -> None:
    from diffusers import HeunDiscreteScheduler

    from governance.activations.collect import collect_with_pipeline
    from governance.basemodel.loading import load_pipeline

    pipe, _ = load_pipeline(str(toy_model))
    pipe.scheduler = HeunDiscreteScheduler.from_config(pipe.scheduler.config)
    m = collect_with_pipeline(pipe, "ab" * 32, _cfg(toy_model, tmp_path / "heun", prompts=PROMPTS[:1]))
    # Heun: two UNet calls per step except the first-order first one; no call counting involved.
    assert m.scheduler_class == "HeunDiscreteScheduler" and m.unet_calls_per_prompt == 5
    assert m.timesteps == [667, 334, 334, 1, 1] and m.total_rows == 5 * 64
