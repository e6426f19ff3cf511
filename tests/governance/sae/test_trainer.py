"""SAE trainer: dataset verification and streaming, the training rules, and data parallelism
under torchrun (2 gloo processes) matching one process."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from governance.sae.data import DatasetError, iter_batches, open_dataset
from governance.sae.model import TopKSAE
from governance.sae.trainer import TrainConfig, sae_losses, train_sae
from tests.helpers.activations import BASE_MODEL_HASH, HOOKPOINT, sparse_toy_activations, write_dataset

torch.set_num_threads(1)
REPO = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def toy_ds(tmp_path_factory: pytest.TempPathFactory) -> Path:
    x = sparse_toy_activations(8000, d_in=32, n_atoms=128, active=3, seed=0)
    return write_dataset(tmp_path_factory.mktemp("acts") / "ds", x, shard_rows=3000)


def test_open_dataset_lineage_and_verification(tmp_path: Path, toy_ds: Path) -> None:
    ds = open_dataset(toy_ds)
    assert ds.d_in == 32 and ds.total_rows == 8000 and ds.hookpoint == HOOKPOINT
    assert ds.base_model_hash == BASE_MODEL_HASH
    import hashlib

    assert ds.manifest_sha256 == hashlib.sha256((toy_ds / "manifest.json").read_bytes()).hexdigest()
    # A tampered shard is refused before use.
    bad = write_dataset(tmp_path / "bad", sparse_toy_activations(500, d_in=8), shard_rows=200)
    with open(bad / "shard-00001.safetensors", "r+b") as f:
        f.seek(-4, 2)
        f.write(b"\x00\x01\x02\x03")
    with pytest.raises(DatasetError, match="sha256 does not match"):
        open_dataset(bad)
    # Incomplete collections and missing manifests are refused.
    m = json.loads((toy_ds / "manifest.json").read_text())
    inc = write_dataset(tmp_path / "inc", sparse_toy_activations(100, d_in=8))
    (inc / "manifest.json").write_text(json.dumps({**json.loads((inc / "manifest.json").read_text()),
                                                   "complete": False}))
    with pytest.raises(DatasetError, match="incomplete"):
        open_dataset(inc)
    with pytest.raises(DatasetError, match="no manifest.json"):
        open_dataset(tmp_path)
    # One manifest format (governance.formats.activations): another layout, e.g. the hook point
    # at the top level instead of in `params`, is refused with one line naming what is missing.
    flat = {k: v for k, v in m.items() if k != "params"} | {"hookpoint": "h", "base_model_hash": "cd" * 32}
    (tmp_path / "flat").mkdir()
    for s in m["shards"]:
        (tmp_path / "flat" / s["file"]).write_bytes((toy_ds / s["file"]).read_bytes())
    (tmp_path / "flat" / "manifest.json").write_text(json.dumps(flat))
    with pytest.raises(DatasetError, match="params"):
        open_dataset(tmp_path / "flat")


def test_iter_batches_ranks_disjoint_and_shuffled(toy_ds: Path) -> None:
    ds = open_dataset(toy_ds)
    seen = []
    for rank in range(2):
        n = ds.rows_for_rank(rank, 2) // 500
        batches = list(iter_batches(ds, 500, n, epoch=0, seed=1, rank=rank, world=2, buffer_tokens=2500))
        assert len(batches) == n and all(b.shape == (500, 32) and b.dtype == torch.float16 for b in batches)
        seen.append(torch.cat(batches))
    rows = {tuple(r.tolist()) for r in seen[0]}
    assert not rows & {tuple(r.tolist()) for r in seen[1]}  # disjoint slices
    # The first batch already mixes shards: the shuffle crosses shard boundaries.
    shard_of = {}
    for i, (path, _) in enumerate(ds.shards):
        for r in load_file(str(path))["activations"]:
            shard_of[tuple(r.tolist())] = i
    assert len({shard_of[tuple(r.tolist())] for r in seen[0][:500]}) >= 2


def test_auxk_trains_only_dead_latents() -> None:
    torch.manual_seed(0)
    from governance.formats.sae_config import SaeConfig

    sae = TopKSAE(SaeConfig(d_in=16, expansion_factor=4, k=2))
    x = torch.randn(64, 16)
    dead = torch.zeros(64, dtype=torch.bool)
    dead[:10] = True
    fvu, auxk, active, x_hat, _ = sae_losses(sae, x, dead, k_aux=8)
    assert float(auxk.detach()) > 0 and active.numel() <= 2 * 64
    # The sparse training decode equals the dense Batch-TopK definition.
    from governance.sae.model import batch_topk

    assert torch.allclose(x_hat, sae.decode(batch_topk(sae.pre_acts(x), 2)), atol=1e-5)
    auxk.backward()
    g = sae.W_dec.grad.abs().sum(1)
    assert float(g[:10].sum()) > 0 and float(g[10:].sum()) == 0.0
    _, auxk0, _, _, _ = sae_losses(sae, x, torch.zeros(64, dtype=torch.bool), k_aux=8)
    assert float(auxk0) == 0.0


@pytest.mark.parametrize("dead_count", [0, 7])
def test_sparse_training_step_has_the_dense_definitions_gradients(dead_count: int) -> None:
    """The CSR forward/backward of sae_losses equals autograd through the dense Batch-TopK
    definition: same losses and the same gradient for every parameter."""
    from governance.formats.sae_config import SaeConfig
    from governance.sae.model import batch_topk

    torch.manual_seed(1)
    sae = TopKSAE(SaeConfig(d_in=12, expansion_factor=4, k=3))
    with torch.no_grad():
        sae.encoder.bias.normal_(0, 0.1)
        sae.b_dec.normal_(0, 0.1)
    x = torch.randn(40, 12)
    dead = torch.zeros(48, dtype=torch.bool)
    dead[torch.randperm(48)[:dead_count]] = True
    fvu, auxk, active, x_hat, _ = sae_losses(sae, x, dead, k_aux=4)
    (fvu + auxk / 32).backward()
    sparse_grads = [p.grad.clone() for p in sae.parameters()]
    sae.zero_grad()
    pre = sae.pre_acts(x)
    z = batch_topk(pre, 3)
    ref_hat = sae.decode(z)
    total_var = (x - x.mean(0)).pow(2).sum()
    ref_fvu = (ref_hat - x).pow(2).sum() / total_var
    ref_aux = torch.zeros(())
    if dead_count:
        dvals, didx = torch.where(dead[None], pre, float("-inf")).topk(4, dim=-1)
        e_hat = torch.einsum("nk,nkd->nd", dvals.clamp_min(0), sae.W_dec[didx])
        ref_aux = min(dead_count / 4, 1.0) * (e_hat - (x - ref_hat).detach()).pow(2).sum() / total_var
    (ref_fvu + ref_aux / 32).backward()
    assert torch.allclose(x_hat, ref_hat, atol=1e-5) and torch.allclose(fvu, ref_fvu, atol=1e-6)
    assert torch.allclose(auxk, ref_aux, atol=1e-6) and (float(auxk.detach()) > 0) == bool(dead_count)
    assert sorted(active.tolist()) == sorted(z.nonzero()[:, 1].tolist())
    for (name, _), got, p in zip(sae.named_parameters(), sparse_grads, sae.parameters()):
        assert torch.allclose(got, p.grad, atol=1e-5), name


def test_training_reaches_quality_and_follows_schedule(toy_ds: Path) -> None:
    ds = open_dataset(toy_ds)
    cfg = TrainConfig(expansion_factor=4, k=6, epochs=8, batch_tokens=256, seed=0)
    res = train_sae(ds, cfg)
    assert res.steps == 8 * (8000 // 256) and res.tokens == res.steps * 256
    f = res.final
    # 248 small steps: far from converged, but well below the ~0.6 of the first steps.
    assert f["fvu"] < 0.3, f
    assert f["dead_pct"] <= 5.0, f
    assert f["l0"] == pytest.approx(6.0)
    assert abs(f["explained_variance"] - (1 - f["fvu"])) < 0.05
    lrs = [h["lr"] for h in res.history]
    assert lrs[0] == pytest.approx(res.lr) and lrs[-1] < res.lr / len(lrs) * 1.01
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))  # linear decay to 0
    assert res.history[-1]["fvu"] < res.history[0]["fvu"] / 2
    assert torch.allclose(res.sae.W_dec.norm(dim=1), torch.ones(res.sae.n_latents), atol=1e-5)
    assert res.dead_tokens == max(256, res.tokens // 20)


def _cli_train(args: list[str], env: dict[str, str], nproc: int) -> subprocess.CompletedProcess[str]:
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
                "--standalone", "-m", "cli.sae_train"] if nproc > 1 else [sys.executable, "-m", "cli.sae_train"]
    return subprocess.run(launcher + args, env=env, cwd=REPO, capture_output=True, text=True, timeout=150)


def test_torchrun_two_processes_match_one(tmp_path: Path, toy_ds: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "SAEGOV_HOME": str(tmp_path / "home"),
           "PYTHONPATH": str(REPO)}
    common = ["--activations", str(toy_ds), "--expansion", "4", "--k", "6", "--epochs", "8",
              "--batch-tokens", "256", "--no-mlflow", "--no-register", "--json"]
    out = {}
    for nproc in (1, 2):
        p = _cli_train(common + ["--out", str(tmp_path / f"sae{nproc}")], env, nproc)
        assert p.returncode == 0, p.stderr[-3000:]
        out[nproc] = json.loads((tmp_path / f"sae{nproc}" / "training.json").read_text())
    one, two = out[1], out[2]
    # Same global batch, steps and token count; ranks split every batch.
    assert two["steps"] == one["steps"] and two["tokens"] == one["tokens"]
    assert two["metrics"]["fvu"] < 0.3
    assert abs(two["metrics"]["fvu"] - one["metrics"]["fvu"]) < 0.05
    assert TopKSAE.load(tmp_path / "sae2", expected_sha256=two["weights_sha256"]).n_latents == 128
