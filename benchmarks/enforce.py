"""Enforced / plain pipeline latency on the toy world, and the hook's time against the dense
encoder matmul alone (its lower bound). Run `make demo` first (it builds the deployment).

    .venv/bin/python benchmarks/enforce.py [--deployment .saegov/demo/deployments/demo]
"""
from __future__ import annotations

import argparse
import time

import torch


def best_of(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--deployment", default=".saegov/demo/deployments/demo")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from governance.enforcement import EnforcedStableDiffusionPipeline
    from governance.enforcement.intervention import enforcer_of
    from governance.basemodel.hooks import block_output_map
    from governance.toyworld.loading import load_pipeline

    enforced = EnforcedStableDiffusionPipeline.from_pretrained(args.deployment, check_registry=False)
    plain = load_pipeline(args.deployment)  # the same weights, no hooks
    d = enforced.saegov.manifest.payload.defaults
    prompts = ["a red circle in dotted style", "a blue square in plain style"] * (args.batch // 2)

    def run(pipe):
        def go():
            gens = [torch.Generator().manual_seed(i) for i in range(len(prompts))]
            pipe(prompts, num_inference_steps=d.num_inference_steps, guidance_scale=d.guidance_scale,
                 generator=gens, output_type="np")
        return go

    run(plain)()  # warm-up
    t_plain = best_of(run(plain), args.repeats)
    t_enf = best_of(run(enforced), args.repeats)
    print(f"pipeline ({len(prompts)} images, {d.num_inference_steps} steps): plain {t_plain:.3f} s, "
          f"enforced {t_enf:.3f} s, ratio enforced/plain = {t_enf / t_plain:.3f}")

    enf = enforcer_of(enforced)
    site = next(iter(enf.sites.values()))  # the hook's cost is per site: time the first hook point's
    captured = {}
    def grab(module, inputs, output) -> None:
        captured.setdefault("x", block_output_map(output).clone())

    h = site.block.register_forward_hook(grab)
    try:
        enforced(prompts, num_inference_steps=2, guidance_scale=d.guidance_scale)
    finally:
        h.remove()
    x = captured["x"]
    t = int(next(iter(site.tables))) if site.tables else 981
    enf.reader.current = torch.full((x.shape[0],), t)
    tokens = x.permute(0, 2, 3, 1).reshape(-1, x.shape[1])
    w = site.sae.encoder.weight
    n = 200
    t_hook = best_of(lambda: [enf._hook(None, (), (x,), site=site) for _ in range(n)], args.repeats) / n
    t_mm = best_of(lambda: [tokens @ w.T for _ in range(n)], args.repeats) / n
    print(f"hook at {site.hook_point} on {tokens.shape[0]} tokens x {w.shape[1]} -> {w.shape[0]} latents: {t_hook * 1e6:.1f} us, "
          f"dense encoder matmul {t_mm * 1e6:.1f} us, ratio hook/matmul = {t_hook / t_mm:.2f}")


if __name__ == "__main__":
    main()
