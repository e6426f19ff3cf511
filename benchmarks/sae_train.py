"""Benchmark: our TopK SAE trainer vs eai-sparsify's SparseCoder on the same activations.

    python benchmarks/sae_train.py --activations DIR [--expansion 16 --k 32 --epochs 5]

Both train on the same shuffled batches (our streaming reader, same seed), same width and k;
both are scored with the same per-token TopK evaluation (sparsify's weights use the reference
layout, so they load into our TopKSAE unchanged). sparsify's `Trainer` needs a language model,
so its step is reproduced around its `SparseCoder` with its own defaults: Adam at
2e-4 / sqrt(n / 2^14), linear schedule with warmup (1000 steps, capped at 10 % of the run),
b_dec = mean of the first batch, decoder renormalised before each forward, parallel gradient
removed, per-token TopK in training, auxk_alpha 0 (its default), no grad clipping.

Needs `pip install eai-sparsify simple_parsing einops natsort accelerate` in the venv; only
`sparsify.sparse_coder` is imported (its package __init__ pulls in datasets/transformers
trainers we do not use).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
import types
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from governance.sae.data import ActivationDataset, iter_batches, open_dataset  # noqa: E402
from governance.sae.model import TopKSAE  # noqa: E402
from governance.sae.trainer import TrainConfig, sae_metrics, train_sae  # noqa: E402


def import_sparse_coder() -> tuple[Any, Any]:
    spec = importlib.util.find_spec("sparsify")
    if spec is None:
        raise SystemExit("eai-sparsify is not installed: pip install eai-sparsify")
    if "sparsify" not in sys.modules:  # skip the package __init__ (trainer imports)
        pkg = types.ModuleType("sparsify")
        pkg.__path__ = list(spec.submodule_search_locations or [])
        sys.modules["sparsify"] = pkg
    from sparsify.config import SparseCoderConfig
    from sparsify.sparse_coder import SparseCoder

    return SparseCoder, SparseCoderConfig


def train_sparsify(ds: ActivationDataset, cfg: TrainConfig) -> tuple[TopKSAE, float, int]:
    SparseCoder, SparseCoderConfig = import_sparse_coder()
    torch.manual_seed(cfg.seed)
    sc = SparseCoder(ds.d_in, SparseCoderConfig(expansion_factor=cfg.expansion_factor, k=cfg.k,
                                                num_latents=cfg.num_latents), device="cpu", dtype=torch.float32)
    n = sc.num_latents
    steps_per_epoch = ds.total_rows // cfg.batch_tokens
    total = steps_per_epoch * cfg.epochs
    opt = torch.optim.Adam(sc.parameters(), lr=2e-4 / (n / 2**14) ** 0.5)
    warmup = min(1000, total // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / warmup if s < warmup else max(0.0, (total - s) / max(1, total - warmup)))
    since_fired = torch.zeros(n, dtype=torch.long)
    step = 0
    t0 = time.perf_counter()
    for epoch in range(cfg.epochs):
        for xb in iter_batches(ds, cfg.batch_tokens, steps_per_epoch, epoch, cfg.seed, buffer_tokens=cfg.buffer_tokens):
            x = xb.float()
            if step == 0:
                sc.b_dec.data = x.mean(0)
            sc.set_decoder_norm_to_unit_norm()
            out = sc(x, dead_mask=None)  # auxk_alpha = 0: sparsify's default
            out.fvu.backward()
            sc.remove_gradient_parallel_to_decoder_directions()
            opt.step()
            opt.zero_grad()
            sched.step()
            with torch.no_grad():
                since_fired += x.shape[0]
                since_fired[out.latent_indices.flatten()] = 0
            step += 1
    seconds = time.perf_counter() - t0
    sc.set_decoder_norm_to_unit_norm()
    from governance.formats.sae_config import SaeConfig

    ours = TopKSAE(SaeConfig(d_in=ds.d_in, expansion_factor=cfg.expansion_factor, num_latents=cfg.num_latents,
                             k=cfg.k, batch_topk=False))
    ours.load_state_dict({k: v.detach().clone() for k, v in sc.state_dict().items()})
    return ours, step * cfg.batch_tokens / seconds, step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--activations", type=Path, required=True)
    ap.add_argument("--expansion", type=int, default=16)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--batch-tokens", type=int, default=4096)
    ap.add_argument("--lr", type=float, default=None, help="ours only (sparsify uses its own default)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    ds = open_dataset(args.activations)
    cfg = TrainConfig(expansion_factor=args.expansion, k=args.k, epochs=args.epochs, lr=args.lr,
                      batch_tokens=args.batch_tokens, seed=args.seed, device="cpu")
    ours = train_sae(ds, cfg)
    sp_sae, sp_tps, sp_steps = train_sparsify(ds, cfg)
    sp_eval = sae_metrics(sp_sae, ds, cfg.eval_tokens)
    rows = {
        "saegov": {"tokens_per_s": ours.tokens_per_s, "steps": ours.steps, "fvu": ours.final["fvu"],
                   "dead_pct": ours.final["dead_pct"], "lr": ours.lr},
        "sparsify": {"tokens_per_s": sp_tps, "steps": sp_steps, "fvu": sp_eval["fvu"],
                     "dead_pct": sp_eval["dead_pct"], "lr": 2e-4 / (ours.sae.n_latents / 2**14) ** 0.5},
    }
    ratio = {"tokens_per_s": ours.tokens_per_s / sp_tps, "fvu": ours.final["fvu"] / max(sp_eval["fvu"], 1e-12)}
    result = {"dataset": str(args.activations), "rows": ds.total_rows, "d_in": ds.d_in,
              "n_latents": ours.sae.n_latents, "k": args.k, "epochs": args.epochs,
              "batch_tokens": args.batch_tokens, "threads": args.threads, "results": rows,
              "ratio_saegov_over_sparsify": ratio}
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"{ds.total_rows} tokens x {ds.d_in}, {ours.sae.n_latents} latents, k={args.k}, "
          f"{args.epochs} epochs, batch {args.batch_tokens}, {args.threads} thread(s)")
    print(f"{'':10} {'tokens/s':>10} {'steps':>6} {'FVU':>7} {'dead %':>7} {'lr':>9}")
    for name, r in rows.items():
        print(f"{name:10} {r['tokens_per_s']:10.0f} {r['steps']:6d} {r['fvu']:7.4f} {r['dead_pct']:7.2f} {r['lr']:9.2e}")
    print(f"ratio saegov/sparsify: tokens/s {ratio['tokens_per_s']:.2f}x, FVU {ratio['fvu']:.2f}x")


if __name__ == "__main__":
    main()
