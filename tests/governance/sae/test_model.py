"""TopKSAE: the two sparsity rules, decoder constraint, reference-layout save/load with hashes."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from governance.common.hashing import sha256_file
from governance.formats.sae_config import SaeConfig
from governance.sae import SaeLoadError, TopKSAE
from governance.sae.model import batch_topk
from governance.sae.trainer import geometric_median
from tests.helpers.enforcement import random_sae

torch.set_num_threads(1)


def make_sae(d: int = 16, exp: int = 4, k: int = 3, seed: int = 0) -> TopKSAE:
    return random_sae(d_in=d, expansion=exp, k=k, seed=seed)


def test_config_n_latents_and_validation() -> None:
    assert SaeConfig(d_in=1280).n_latents == 20_480
    assert SaeConfig(d_in=64, num_latents=100, k=4).n_latents == 100
    with pytest.raises(ValueError, match="exceeds"):
        SaeConfig(d_in=4, expansion_factor=1, k=5)


def test_per_token_topk_matches_definition() -> None:
    sae = make_sae()
    x = torch.randn(50, 16)
    pre = torch.relu(sae.encoder(x - sae.b_dec))
    assert torch.allclose(sae.pre_acts(x), pre)
    vals, idx = sae.encode(x)
    assert vals.shape == idx.shape == (50, 3)
    ref_vals = pre.topk(3, dim=1).values
    assert torch.allclose(vals.sort(dim=1).values, ref_vals.sort(dim=1).values)
    z = sae.encode_dense(x)
    assert ((z != 0).sum(1) <= 3).all()
    assert torch.allclose(z.gather(1, idx), vals)
    x_hat, z2 = sae(x)
    assert torch.equal(z, z2)
    assert torch.allclose(x_hat, z @ sae.W_dec + sae.b_dec, atol=1e-6)
    assert torch.allclose(sae.decode_sparse(vals, idx), x_hat, atol=1e-5)


@pytest.mark.parametrize("shape,shift", [((300, 400), 0.0), ((300, 400), 2.5), ((7, 9), -3.0)])
def test_batch_topk_is_exact(shape: tuple[int, int], shift: float) -> None:
    torch.manual_seed(1)
    pre = torch.relu(torch.randn(*shape) - shift)
    k = 5
    z = batch_topk(pre, k)
    flat = pre.flatten()
    ref = torch.zeros_like(flat).scatter_(0, flat.topk(k * shape[0]).indices, flat.topk(k * shape[0]).values)
    assert torch.equal(z.flatten(), ref)
    if shift <= 0.0:
        assert int((z > 0).sum()) == k * shape[0]
        # Batch rule: rows differ in their count, unlike per-token TopK.
        assert len(set((z > 0).sum(1).tolist())) > 1


def test_decoder_unit_norm_and_tangent_gradient() -> None:
    sae = make_sae()
    assert torch.allclose(sae.W_dec.norm(dim=1), torch.ones(64), atol=1e-6)
    # Initialised as a copy of the encoder, then normalised.
    enc = sae.encoder.weight / sae.encoder.weight.norm(dim=1, keepdim=True)
    assert torch.allclose(sae.W_dec, enc, atol=1e-6)
    assert float(sae.encoder.bias.detach().abs().sum()) > 0  # make_sae perturbed it; a fresh one is zero
    assert float(TopKSAE(SaeConfig(d_in=8, expansion_factor=2, k=2)).encoder.bias.detach().abs().sum()) == 0.0
    x = torch.randn(32, 16)
    x_hat, _ = sae(x)
    (x_hat - x).pow(2).sum().backward()
    sae.remove_gradient_parallel_to_decoder_directions()
    parallel = (sae.W_dec.grad * sae.W_dec).sum(1)
    assert parallel.abs().max() < 1e-5


def test_geometric_median_weiszfeld() -> None:
    pts = torch.tensor([[0.0, 0.0], [1.0, 0.0], [2.0, 0.0]])
    assert torch.allclose(geometric_median(pts), torch.tensor([1.0, 0.0]), atol=1e-3)
    # Robust to outliers, unlike the mean.
    torch.manual_seed(0)
    cloud = torch.randn(200, 3) * 0.1
    cloud[:20] += 100.0
    assert geometric_median(cloud).norm() < 1.0 < cloud.mean(0).norm()


def test_save_load_roundtrip_reference_layout(tmp_path: Path) -> None:
    sae = make_sae()
    sha = sae.save(tmp_path / "s")
    assert sha == sha256_file(tmp_path / "s" / "sae.safetensors")
    with safe_open(str(tmp_path / "s" / "sae.safetensors"), framework="pt") as f:
        shapes = {k: (tuple(f.get_slice(k).get_shape()), f.get_slice(k).get_dtype()) for k in f.keys()}
    assert shapes == {"encoder.weight": ((64, 16), "F32"), "encoder.bias": ((64,), "F32"),
                      "W_dec": ((64, 16), "F32"), "b_dec": ((16,), "F32")}
    cfg = json.loads((tmp_path / "s" / "cfg.json").read_text())
    assert {"expansion_factor", "normalize_decoder", "num_latents", "k", "batch_topk", "sample_topk",
            "input_unit_norm", "multi_topk", "d_in"} <= set(cfg)
    loaded = TopKSAE.load(tmp_path / "s", expected_sha256=sha)
    x = torch.randn(10, 16)
    assert torch.equal(loaded(x)[0], sae(x)[0])
    # The registry's torch-free validator accepts our folders too.
    from registry.artifacts import inspect_sae_folder

    assert inspect_sae_folder(tmp_path / "s").weights_sha256 == sha


def test_load_refuses_hash_mismatch_and_bad_shapes(tmp_path: Path) -> None:
    sae = make_sae()
    sha = sae.save(tmp_path / "s")
    with pytest.raises(SaeLoadError, match="sha256 mismatch"):
        TopKSAE.load(tmp_path / "s", expected_sha256="0" * 64)
    cfg = json.loads((tmp_path / "s" / "cfg.json").read_text())
    (tmp_path / "s" / "cfg.json").write_text(json.dumps({**cfg, "expansion_factor": 8}))
    with pytest.raises(SaeLoadError, match="cfg.json implies"):
        TopKSAE.load(tmp_path / "s", expected_sha256=sha)
    (tmp_path / "s" / "cfg.json").write_text("{not json")
    with pytest.raises(SaeLoadError, match="invalid config"):
        TopKSAE.load(tmp_path / "s")
    (tmp_path / "s" / "sae.safetensors").write_bytes(b"garbage")
    (tmp_path / "s" / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(SaeLoadError, match="safetensors"):
        TopKSAE.load(tmp_path / "s")
    with pytest.raises(SaeLoadError, match="missing"):
        TopKSAE.load(tmp_path / "nothing")


def test_imports_reference_checkpoint_folder(tmp_path: Path) -> None:
    """A folder as the reference writes it (fp16 weights, extra cfg keys) loads unchanged."""
    d, n = 8, 32
    torch.manual_seed(0)
    w = torch.randn(n, d)
    save_file({"encoder.weight": w.half(), "encoder.bias": torch.zeros(n).half(),
               "W_dec": w.half(), "b_dec": torch.ones(d).half()}, str(tmp_path / "sae.safetensors"))
    (tmp_path / "cfg.json").write_text(json.dumps({
        "expansion_factor": 4, "normalize_decoder": True, "num_latents": 0, "k": 4, "batch_topk": True,
        "sample_topk": False, "input_unit_norm": False, "multi_topk": False, "d_in": d, "signed": False}))
    sae = TopKSAE.load(tmp_path)
    assert sae.W_dec.dtype == torch.float32 and sae.n_latents == n
    assert torch.allclose(sae.b_dec, torch.ones(d))


def test_unsupported_options_refused(tmp_path: Path) -> None:
    # Refused by the one cfg.json model, so already at import and at load, never computed wrongly.
    with pytest.raises(ValueError, match="input_unit_norm"):
        SaeConfig(d_in=8, expansion_factor=2, k=2, input_unit_norm=True)
    TopKSAE(SaeConfig(d_in=8, expansion_factor=2, k=2)).save(tmp_path)
    cfg = json.loads((tmp_path / "cfg.json").read_text())
    (tmp_path / "cfg.json").write_text(json.dumps({**cfg, "activation": "groupmax"}))
    with pytest.raises(SaeLoadError, match="activation=groupmax"):
        TopKSAE.load(tmp_path)
    (tmp_path / "cfg.json").write_text(json.dumps({**cfg, "multi_topk": True}))  # training-only: accepted
    assert TopKSAE.load(tmp_path).cfg.multi_topk


def test_batch_topk_indices_with_nan_keeps_topk_rule() -> None:
    """NaN ranks highest (torch.topk's rule): exactly m indices, sorted, NaNs among them."""
    from governance.sae.model import batch_topk_indices

    for n in (50, 100_000):
        flat = torch.randn(n)
        flat[[3, 7, 11]] = float("nan")
        idx = batch_topk_indices(flat, 5)
        assert idx.numel() == 5 and torch.equal(idx, idx.sort().values) and {3, 7, 11} <= set(idx.tolist())
    assert batch_topk_indices(torch.full((70_000,), float("nan")), 4).numel() == 4
