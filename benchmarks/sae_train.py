"""Benchmark: our TopK SAE trainer vs eai-sparsify's SparseCoder on the same activations.

    python benchmarks/sae_train.py --activations DIR [--expansion 16 --k 32 --epochs 3 --repeats 3 --sd-steps 5]

Three parts, one run: whole trainings at toy width (tokens/s, median of repeats, FVU and dead %
of both), the optimisation step alone at toy width, and at SD width (d_in 1280, 20,480 latents,
synthetic activations) with the dense encoder's forward + backward matmuls as the bound.

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
import os
import statistics
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
    if "sparsify" not in sys.modules:  # skip the package __init__ (trainer imports)
        spec = importlib.util.find_spec("sparsify")
        if spec is None:
            raise SystemExit("eai-sparsify is not installed: pip install eai-sparsify")
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


def _spread(xs: list[float]) -> str:
    return f"median {statistics.median(xs):,.0f} (min {min(xs):,.0f}, max {max(xs):,.0f}, n={len(xs)})"


def toy_width(args: argparse.Namespace) -> dict[str, Any]:
    """Both trainers on the same activations, alternately, `repeats` times each."""
    ds = open_dataset(args.activations)
    cfg = TrainConfig(expansion_factor=args.expansion, k=args.k, epochs=args.epochs, lr=args.lr,
                      batch_tokens=args.batch_tokens, seed=args.seed, device="cpu")
    ours_tps, sp_tps, ours, sp_sae = [], [], None, None
    for _ in range(args.repeats):
        ours = train_sae(ds, cfg)
        ours_tps.append(ours.tokens_per_s)
        sp_sae, tps, sp_steps = train_sparsify(ds, cfg)
        sp_tps.append(tps)
    assert ours is not None and sp_sae is not None
    sp_eval = sae_metrics(sp_sae, ds, cfg.eval_tokens)
    return {"rows": ds.total_rows, "d_in": ds.d_in, "n_latents": ours.sae.n_latents, "steps": ours.steps,
            "saegov": {"tokens_per_s": ours_tps, "fvu": ours.final["fvu"], "dead_pct": ours.final["dead_pct"]},
            "sparsify": {"tokens_per_s": sp_tps, "fvu": sp_eval["fvu"], "dead_pct": sp_eval["dead_pct"]},
            "ratio_tokens_per_s": statistics.median(ours_tps) / statistics.median(sp_tps),
            "ratio_fvu": ours.final["fvu"] / max(sp_eval["fvu"], 1e-12)}


def step_times(d_in: int, expansion: int, k: int, batch: int, steps: int, seed: int = 0,
               device: str = "cpu") -> dict[str, Any]:
    """Seconds per optimisation step on synthetic activations (the same batches for all three):
    our step (sae_losses, backward, decoder-gradient surgery, clip, Adam, renorm), sparsify's
    (SparseCoder forward, backward, Adam), and the dense encoder's forward + backward matmuls
    alone (x W^T, and the two products of its backward) as the lower bound of a dense step."""
    from governance.formats.sae_config import SaeConfig
    from governance.sae.trainer import sae_losses

    SparseCoder, SparseCoderConfig = import_sparse_coder()
    torch.manual_seed(seed)
    xs = [torch.randn(batch, d_in, device=device) for _ in range(2)]
    ours = TopKSAE(SaeConfig(d_in=d_in, expansion_factor=expansion, k=k), device=device)
    opt = torch.optim.Adam(ours.parameters(), lr=1e-4)
    params = list(ours.parameters())
    sc = SparseCoder(d_in, SparseCoderConfig(expansion_factor=expansion, k=k), device=device, dtype=torch.float32)
    sp_opt = torch.optim.Adam(sc.parameters(), lr=1e-4)
    w = torch.randn(d_in * expansion, d_in, device=device, requires_grad=True)
    sync = torch.cuda.synchronize if device != "cpu" else (lambda: None)

    def ours_step(x: torch.Tensor) -> None:
        fvu, auxk, _, _, _ = sae_losses(ours, x, None, d_in // 2)
        fvu.backward()
        ours.remove_gradient_parallel_to_decoder_directions()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        ours.set_decoder_norm_to_unit_norm()

    def sparsify_step(x: torch.Tensor) -> None:
        sc.set_decoder_norm_to_unit_norm()
        sc(x, dead_mask=None).fvu.backward()
        sc.remove_gradient_parallel_to_decoder_directions()
        sp_opt.step()
        sp_opt.zero_grad()

    def dense_bound(x: torch.Tensor) -> None:
        (x @ w.t()).backward(torch.ones(x.shape[0], w.shape[0], device=x.device))
        w.grad = None

    out: dict[str, list[float]] = {"saegov": [], "sparsify": [], "dense_encoder_matmuls": []}
    for name, fn in (("saegov", ours_step), ("sparsify", sparsify_step), ("dense_encoder_matmuls", dense_bound)):
        fn(xs[0])  # warm-up
    for i in range(steps):  # interleaved, so that load changes hit all three alike
        for name, fn in (("saegov", ours_step), ("sparsify", sparsify_step), ("dense_encoder_matmuls", dense_bound)):
            sync()
            t0 = time.perf_counter()
            fn(xs[i % 2])
            sync()
            out[name].append(time.perf_counter() - t0)
    med = {name: statistics.median(v) for name, v in out.items()}
    return {"device": device, "d_in": d_in, "n_latents": d_in * expansion, "k": k, "batch": batch,
            "seconds_per_step": out,
            "tokens_per_s": {name: batch / v for name, v in med.items()},
            "ratio_vs_sparsify": med["sparsify"] / med["saegov"],
            "step_over_dense_bound": med["saegov"] / med["dense_encoder_matmuls"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--activations", type=Path, required=True)
    ap.add_argument("--expansion", type=int, default=16)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch-tokens", type=int, default=4096)
    ap.add_argument("--lr", type=float, default=None, help="ours only (sparsify uses its own default)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3, help="whole trainings per trainer at toy width")
    ap.add_argument("--sd-steps", type=int, default=5, help="timed steps per trainer at SD width (0: skip)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    result: dict[str, Any] = {"threads": args.threads, "k": args.k, "batch_tokens": args.batch_tokens,
                              "toy": toy_width(args)}
    result["toy_steps"] = step_times(result["toy"]["d_in"], args.expansion, args.k, args.batch_tokens, 20)
    if args.sd_steps:
        result["sd_width"] = step_times(1280, 16, args.k, args.batch_tokens, args.sd_steps)
    if args.json:
        print(json.dumps(result, indent=2))
        return
    toy = result["toy"]
    print(f"threads={args.threads} loadavg={os.getloadavg()[0]:.2f}")
    print(f"toy width: {toy['rows']} tokens x {toy['d_in']}, {toy['n_latents']} latents, k={args.k}, "
          f"{args.epochs} epochs ({toy['steps']} steps), batch {args.batch_tokens}, {args.repeats} trainings each")
    for name in ("saegov", "sparsify"):
        r = toy[name]
        print(f"  {name:9} tokens/s {_spread(r['tokens_per_s'])}  FVU {r['fvu']:.4f}  dead {r['dead_pct']:.2f} %")
    print(f"  ratio saegov/sparsify: tokens/s {toy['ratio_tokens_per_s']:.2f}x (medians), FVU {toy['ratio_fvu']:.2f}x")
    for key, label in (("toy_steps", "toy width, steps alone"), ("sd_width", "SD width (synthetic)")):
        if key not in result:
            continue
        r = result[key]
        print(f"{label}: d_in {r['d_in']}, {r['n_latents']} latents, k {r['k']}, batch {r['batch']}")
        for name, secs in r["seconds_per_step"].items():
            ms = [1000 * x for x in secs]
            print(f"  {name:22} ms/step median {statistics.median(ms):9.1f} (min {min(ms):.1f}, max {max(ms):.1f})"
                  f"  tokens/s {r['tokens_per_s'][name]:,.0f}")
        print(f"  saegov vs sparsify: {r['ratio_vs_sparsify']:.2f}x faster; saegov step / dense encoder "
              f"matmuls: {r['step_over_dense_bound']:.2f}")


if __name__ == "__main__":
    main()
