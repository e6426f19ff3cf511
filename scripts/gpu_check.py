"""GPU check: SD 1.5 shapes on CUDA in fp16 (random weights, no download), one JSON report.

1. Activation collection at 512 px for both SAeUron hook points with CFG (shapes, seconds, peak
   memory), and the collected tokens encoded by a reference-size SAE (d_in 1280, x16, k 32).
2. Enforced / plain generation at the SD 1.5 shape in fp16 (benchmarks/enforce.py --sd15 on
   CUDA), side by side, and the hook against the dense encoder matmul.
3. SAE training step at SD width (1280 -> 20,480, k 32, batch 4096) against eai-sparsify on the
   same GPU and the dense encoder matmuls (benchmarks/sae_train.py), when sparsify is installed.

Sized to finish in well under 8 minutes on one H100. Exits non-zero on any failed shape check.

    python scripts/gpu_check.py [--prompts 4] [--steps 10] [--out /tmp/gpu_check]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> int:
    import torch
    from safetensors.torch import load_file

    from governance.activations.collect import CollectConfig, collect_with_pipeline
    from governance.formats.sae_config import SaeConfig
    from governance.sae.model import TopKSAE
    from governance.basemodel.sd15 import build_sd15_shaped_pipeline, config_hash

    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=4)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--repeats", type=int, default=5, help="enforced / plain rounds")
    ap.add_argument("--train-steps", type=int, default=20, help="timed training steps per trainer")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA device", file=sys.stderr)
        return 2
    dev = "cuda"
    t0 = time.time()
    pipe = build_sd15_shaped_pipeline().to(dev, torch.float16)
    pipe.set_progress_bar_config(disable=True)
    torch.manual_seed(0)
    sae = TopKSAE(SaeConfig(d_in=1280, expansion_factor=16, k=32), device=dev)
    print(f"built pipeline + SAE in {time.time() - t0:.1f}s on {torch.cuda.get_device_name()}")
    prompts = [f"a {c} circle" for c in ("red", "green", "blue", "yellow")] * (args.prompts // 4 + 1)
    prompts = prompts[: args.prompts]
    root = args.out or Path(tempfile.mkdtemp(prefix="saegov-gpu-check-"))
    report: dict[str, object] = {}
    ok = True
    for hook in ("up_blocks.1.attentions.1", "up_blocks.1.attentions.2"):
        torch.cuda.reset_peak_memory_stats()
        t = time.time()
        m = collect_with_pipeline(pipe, config_hash(), CollectConfig(
            model="sd15-architecture", hook_point=hook, prompts=prompts, out=root / hook, steps=args.steps,
            guidance=9.0, seed=0, device=dev, dtype="float16", batch_size=4, prompts_per_shard=4))
        torch.cuda.synchronize()
        secs = time.time() - t
        x = load_file(str(root / hook / m.shards[0].file))["activations"].to(dev)
        with torch.no_grad():
            values, indices = sae.encode(x.float())
            recon = sae.decode_sparse(values, indices)
        expected_rows = args.prompts * args.steps * 256
        checks = {
            "d_in": m.d_in == 1280,
            "map": tuple(m.spatial_shape) == (16, 16),
            "px": (m.params.height, m.params.width) == (512, 512),
            "rows": m.total_rows == expected_rows,
            "fp16": x.dtype == torch.float16,
            "finite": bool(torch.isfinite(x).all()),
            "sae_k": tuple(values.shape[1:]) == (32,) and int(indices.max()) < 20480,
            "recon": tuple(recon.shape) == (x.shape[0], 1280),
        }
        ok &= all(checks.values())
        report[hook] = {"seconds": round(secs, 2), "rows": m.total_rows, "d_in": m.d_in,
                        "spatial": list(m.spatial_shape), "peak_mem_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2),
                        "checks": checks}
    report["enforce_sd15_fp16"] = _enforce(args.repeats)
    report["sae_training_sd_width"] = _training(args.train_steps)
    print(json.dumps(report, indent=2))
    print("OK" if ok else "FAILED")
    return 0 if ok else 1


def _bench(name: str):  # noqa: ANN202
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"saegov_bench_{name}", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _median(xs: list[float]) -> float:
    import statistics

    return round(statistics.median(xs), 4)


def _enforce(repeats: int) -> dict[str, object]:
    import argparse

    import torch

    r = _bench("enforce").sd15(argparse.Namespace(steps=10, repeats=repeats, device="cuda", dtype=torch.float16))
    return {"steps": r["steps"], "plain_s_median": _median(r["seconds"]["plain"]),
            "enforced_s_median": _median(r["seconds"]["enforced"]),
            "enforced_over_plain_median": _median(r["enforced_over_plain"]),
            "enforced_over_plain_all": [round(v, 4) for v in r["enforced_over_plain"]],
            "hook_over_matmul_median": _median(r["hook_over_matmul"]), "tokens": r["tokens"]}


def _training(steps: int) -> dict[str, object]:
    try:
        r = _bench("sae_train").step_times(1280, 16, 32, 4096, steps, device="cuda")
    except SystemExit as exc:  # sparsify not installed
        return {"skipped": str(exc)}
    return {"tokens_per_s": {k: round(v) for k, v in r["tokens_per_s"].items()},
            "saegov_over_sparsify": round(r["ratio_vs_sparsify"], 3),
            "step_over_dense_encoder_matmuls": round(r["step_over_dense_bound"], 3)}


if __name__ == "__main__":
    raise SystemExit(main())
