"""Benchmark: activation collection time / plain generation time, same prompts, toy world.

Both use the same loaded pipeline, prompts, per-prompt seeds, steps, guidance and batch size.
"Plain generation" is an ordinary pipeline call to images (VAE decode included); the latent-only
ratio isolates the cost of the hooks, fp16 copies, shard writes and hashing.

    python benchmarks/collect.py [--prompts 16] [--steps 20] [--threads 1] [--repeats 2]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    import torch

    from governance.activations.collect import CollectConfig, collect_with_pipeline
    from governance.basemodel.loading import load_pipeline, model_folder_hash
    from governance.toyworld.grammar import all_prompts

    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--guidance", type=float, default=9.0)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--model", default=None, help="default: the trained toy world, else an untrained one")
    ap.add_argument("--memory", action="store_true",
                    help="also the peak RSS of a fresh process collecting N and 10 N prompts (flat: streamed shards)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    tmp = Path(tempfile.mkdtemp(prefix="saegov-bench-"))
    model = args.model
    label = "given model"
    if model is None:
        from governance.toyworld.paths import default_pipeline_path, is_trained

        if is_trained():
            model, label = str(default_pipeline_path()), "trained toy world"
        else:
            from governance.toyworld.model import build_untrained_pipeline

            model, label = str(tmp / "untrained"), "untrained toy world (same architecture and cost)"
            build_untrained_pipeline().save_pretrained(model)
    pipe, folder = load_pipeline(model)
    model_hash = model_folder_hash(folder)
    prompts = [p.text for p in all_prompts()][: args.prompts]
    n, bs = len(prompts), args.batch_size

    def generate(output_type: str) -> float:
        t = time.perf_counter()
        for b0 in range(0, n, bs):
            gens = [torch.Generator().manual_seed(b0 + j) for j in range(min(bs, n - b0))]
            pipe(prompts[b0:b0 + bs], num_inference_steps=args.steps, guidance_scale=args.guidance,
                 generator=gens, output_type=output_type)
        return time.perf_counter() - t

    def run_collect(i: int) -> float:
        t = time.perf_counter()
        collect_with_pipeline(pipe, model_hash, CollectConfig(
            model=model, hook_point="up_blocks.1.attentions.1", prompts=prompts, out=tmp / f"acts{i}",
            steps=args.steps, guidance=args.guidance, seed=0, batch_size=bs, prompts_per_shard=bs))
        return time.perf_counter() - t

    generate("pil")  # warm-up (allocator, kernels)
    gen_pil, gen_lat, col = [], [], []
    for i in range(args.repeats):  # interleaved so background load affects all three alike
        gen_pil.append(generate("pil"))
        gen_lat.append(generate("latent"))
        col.append(run_collect(i))
    g, gl, c = min(gen_pil), min(gen_lat), min(col)
    print(f"model: {label}; {n} prompts x {args.steps} steps, CFG {args.guidance}, batch {bs}, "
          f"{args.threads} thread(s); best of {args.repeats}")
    if args.memory:
        print(f"peak memory of a process that only collects {n} prompts: {collect_peak_mib(model, n, args):.0f} MiB; "
              f"{10 * n} prompts: {collect_peak_mib(model, 10 * n, args):.0f} MiB")
    print(f"plain generation (images):  {g:7.2f} s")
    print(f"plain generation (latents): {gl:7.2f} s")
    print(f"collection:                 {c:7.2f} s")
    print(f"ratio collection / generation (images):  {c / g:.3f}")
    print(f"ratio collection / generation (latents): {c / gl:.3f}")


def collect_peak_mib(model: str, n: int, args: argparse.Namespace) -> float:
    """Peak resident memory (MiB) of a fresh `saegov activations collect` of the first n toy
    prompts (cycled), in its own process so that the peak is its own."""
    import subprocess

    from governance.toyworld.grammar import all_prompts

    tmp = Path(tempfile.mkdtemp(prefix="saegov-mem-"))
    texts = [p.text for p in all_prompts()]
    (tmp / "p.txt").write_text("\n".join(texts[i % len(texts)] for i in range(n)) + "\n")
    code = ("import resource, sys; from cli.main import main; sys.argv = ['saegov'] + sys.argv[1:]\n"
            "try:\n    main()\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
            "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)")
    r = subprocess.run([sys.executable, "-c", code, "activations", "collect", "--model", model,
                        "--hookpoint", "up_blocks.1.attentions.1", "--prompts", str(tmp / "p.txt"),
                        "--out", str(tmp / "acts"), "--steps", str(args.steps), "--guidance", str(args.guidance),
                        "--batch-size", str(args.batch_size), "--prompts-per-shard", str(args.batch_size),
                        "--device", "cpu"], capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1],
                       env={**__import__("os").environ, "SAEGOV_HOME": str(tmp / "ws")})
    if r.returncode:
        raise SystemExit(f"collection of {n} prompts failed: {r.stderr.strip().splitlines()[-1:]}")
    return int(r.stderr.strip().splitlines()[-1]) / 1024  # ru_maxrss is in KiB on Linux


if __name__ == "__main__":
    main()
