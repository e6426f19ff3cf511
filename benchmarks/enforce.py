"""Enforced / plain pipeline latency, and the enforcement hook's time against the dense encoder
matmul alone (its bound when every token passes a gate), side by side, repeated, median and spread.

    SAEGOV_HOME=.saegov/demo .venv/bin/python benchmarks/enforce.py [--deployment .saegov/demo/deployments/demo]
    .venv/bin/python benchmarks/enforce.py --sd15 [--steps 2 --repeats 3]                  # SD 1.5 shape
    .venv/bin/python benchmarks/enforce.py --kth                                           # k-th value rule

Toy world: the demo's deployment (run `make demo` first), plain = the same weights without hooks.
`--sd15`: the SD 1.5 UNet architecture with random weights at 512 px, batch 2 with CFG (4 UNet
rows), a reference-size SAE (1280 x 20,480, k 32) at `up_blocks.1.attentions.1` whose blocklist
selects 8 features per timestep (gates 0: they fire wherever they are in the TopK). Runs alternate
plain / enforced so that load changes hit both alike.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SD15_HOOK = "up_blocks.1.attentions.1"


def timed(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def side_by_side(fns: dict[str, Callable[[], Any]], repeats: int) -> dict[str, list[float]]:
    """Each function once as a warm-up, then `repeats` interleaved rounds."""
    for fn in fns.values():
        fn()
    out: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            out[name].append(timed(fn))
    return out


def spread(xs: list[float], unit: float = 1.0, fmt: str = ".3f") -> str:
    return (f"median {statistics.median(xs) * unit:{fmt}} (min {min(xs) * unit:{fmt}}, "
            f"max {max(xs) * unit:{fmt}}, n={len(xs)})")


def ratios(a: list[float], b: list[float]) -> list[float]:
    """Per-round ratios a/b (rounds are interleaved, so each ratio compares like with like)."""
    return [x / y for x, y in zip(a, b)]


def hook_vs_matmul(enf: Any, site: Any, x: torch.Tensor, t: int, repeats: int, inner: int) -> dict[str, Any]:
    """The hook on one UNet call's block output against the dense encoder product of the same
    tokens (what an exact hook needs for every token past a gate; tokens below every gate skip it)."""
    enf.reader.current = torch.full((x.shape[0],), t)
    w = site.sae.encoder.weight.detach()
    tokens = x.permute(0, 2, 3, 1).reshape(-1, x.shape[1]).to(w.dtype).contiguous()
    sync = torch.cuda.synchronize if x.is_cuda else (lambda: None)
    times = side_by_side({
        "hook": lambda: ([enf._hook(None, (), (x,), site=site) for _ in range(inner)], sync()),  # noqa: SLF001
        "matmul": lambda: ([tokens @ w.T for _ in range(inner)], sync()),
    }, repeats)
    r = ratios(times["hook"], times["matmul"])
    print(f"hook at {site.hook_point} on {tokens.shape[0]} tokens x {w.shape[1]} -> {w.shape[0]} latents "
          f"(k {site.sae.k}): hook ms {spread([v / inner for v in times['hook']], 1e3, '.2f')}, "
          f"dense encoder matmul ms {spread([v / inner for v in times['matmul']], 1e3, '.2f')}; "
          f"hook/matmul {spread(r, 1, '.2f')}")
    return {"tokens": tokens.shape[0], "hook_seconds": [v / inner for v in times["hook"]],
            "matmul_seconds": [v / inner for v in times["matmul"]], "hook_over_matmul": r}


def capture_block_output(pipe: Any, block: torch.nn.Module, run: Callable[[], Any]) -> torch.Tensor:
    from governance.basemodel.hooks import block_output_map

    captured: dict[str, torch.Tensor] = {}

    def grab(module: Any, inputs: Any, output: Any) -> None:
        captured.setdefault("x", block_output_map(output).detach().clone())

    h = block.register_forward_hook(grab)
    try:
        run()
    finally:
        h.remove()
    return captured["x"]


def kth_crossover(args: argparse.Namespace) -> None:
    """The two ways the hook finds each token's k-th largest pre-activation, side by side by row
    width: numpy's partition and torch.topk (the rule in Enforcer._kth_largest picks by width)."""
    import numpy as np

    def partition(y: torch.Tensor) -> Any:
        a = torch.neg(y).numpy()
        a.partition(31, axis=-1)
        return a[:, 31]

    for rows, width in ((708, 1024), (1024, 1024), (1024, 2048), (1024, 4096), (1024, 8192), (1024, 20480)):
        y = torch.randn(rows, width)
        times = side_by_side({"numpy": lambda: partition(y),
                              "topk": lambda: y.topk(32, dim=-1, sorted=True).values[:, -1]}, args.repeats)
        assert np.allclose(-partition(y), y.topk(32, dim=-1).values[:, -1].numpy())
        print(f"k-th value (k 32) of {rows} x {width}: numpy ms {spread(times['numpy'], 1e3, '.2f')}, "
              f"torch.topk ms {spread(times['topk'], 1e3, '.2f')}")


@contextlib.contextmanager
def hooks_timed() -> Any:
    """Seconds spent in the enforcement hooks, summed over every hooked block's calls (the
    enforcer's hook method, wrapped for the duration; the pipeline re-attaches its hooks after each
    plain run and looks the method up again). Enforced / plain is then also read as
    1 + hooks / plain within one run, which the run-to-run spread of whole generations on a loaded
    machine (0.85-1.3 for the same code) does not blur."""
    from governance.enforcement.intervention import Enforcer

    spent = [0.0]
    hook = Enforcer._hook  # noqa: SLF001

    def timed_hook(self: Any, *args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return hook(self, *args, **kwargs)
        finally:
            spent[0] += time.perf_counter() - t0

    Enforcer._hook = timed_hook  # type: ignore[method-assign]  # noqa: SLF001
    try:
        yield spent
    finally:
        Enforcer._hook = hook  # type: ignore[method-assign]  # noqa: SLF001


def prompt_mixes(blocked: list[str], n: int) -> dict[str, list[str]]:
    """Two batches of `n` toy prompts: half of them carrying every blocked concept (one per kind,
    the other kinds from the values left free), and none carrying any. A deployment serves
    mostly the second kind; the hook's exact TopK test costs the first kind far more."""
    from governance.toyworld.grammar import ATTRIBUTES, attribute_of

    blocked_by = {kind: [c for c in blocked if attribute_of(c) == kind] for kind in ATTRIBUTES}
    free = {kind: [v for v in values if v not in blocked_by[kind]] for kind, values in ATTRIBUTES.items()}

    def prompt(i: int, carry: bool) -> str:
        pick = {kind: (blocked_by[kind][i % len(blocked_by[kind])] if carry and blocked_by[kind]
                       else free[kind][i % len(free[kind])]) for kind in ATTRIBUTES}
        return f"a {pick['colour']} {pick['shape']} in {pick['style']} style"

    return {"half carry the blocked concepts": [prompt(i, i % 2 == 0) for i in range(n)],
            "none carries one": [prompt(i, False) for i in range(n)]}


def toy(args: argparse.Namespace) -> None:
    with hooks_timed() as spent:  # before the pipeline attaches its hooks
        toy_timed(args, spent)


def toy_timed(args: argparse.Namespace, spent: list[float]) -> None:
    from governance.enforcement import EnforcedStableDiffusionPipeline
    from governance.enforcement.intervention import blocklist_suspended, enforcer_of

    # Verified against the trust store given, else the registry of SAEGOV_HOME (the demo's: the
    # key that signed the demo deployment is registered there).
    enforced = EnforcedStableDiffusionPipeline.from_pretrained(args.deployment, check_registry=args.trusted_keys is None,
                                                               trusted_keys_file=args.trusted_keys)
    d = enforced.saegov.manifest.payload.defaults
    enf = enforcer_of(enforced)
    mixes = prompt_mixes([e.concept for e in enf.blocklist.spec.entries], args.batch)

    def run(pipe: Any, hooks: bool, prompts: list[str]) -> Callable[[], Any]:
        def go() -> None:
            gens = [torch.Generator().manual_seed(i) for i in range(len(prompts))]
            # Plain: the same pipeline with its hooks off (plain diffusers refuses a deployment folder).
            with contextlib.nullcontext() if hooks else blocklist_suspended(pipe):
                pipe(prompts, num_inference_steps=d.num_inference_steps, guidance_scale=d.guidance_scale,
                     generator=gens, output_type="np")
        return go

    fns = {f"{name} {mode}": run(enforced, mode == "enforced", prompts)
           for name, prompts in mixes.items() for mode in ("plain", "enforced")}
    hooks: dict[str, list[float]] = {name: [] for name in mixes}

    def counted(name: str, fn: Callable[[], Any]) -> Callable[[], Any]:
        def go() -> None:
            before = spent[0]
            fn()
            hooks[name].append(spent[0] - before)
        return go

    times = side_by_side({key: counted(key[:-len(" enforced")], fn) if key.endswith(" enforced") else fn
                          for key, fn in fns.items()}, args.repeats)
    for name, prompts in mixes.items():
        plain, enf_t = times[f"{name} plain"], times[f"{name} enforced"]
        in_hooks = hooks[name][1:]  # the warm-up run is not timed
        print(f"toy world, {name} ({len(prompts)} images x {d.num_inference_steps} steps, e.g. {prompts[0]!r}): "
              f"plain s {spread(plain)}, enforced s {spread(enf_t)}; enforced/plain {spread(ratios(enf_t, plain))}; "
              f"in the hooks s {spread(in_hooks)}, 1 + hooks/plain {spread([1 + h / p for h, p in zip(in_hooks, plain)])}")
    prompts = mixes["half carry the blocked concepts"]
    site = next(iter(enf.sites.values()))
    x = capture_block_output(enforced, site.block,
                             lambda: enforced(prompts, num_inference_steps=2, guidance_scale=d.guidance_scale))
    t = int(next(iter(site.tables))) if site.tables else 981
    hook_vs_matmul(enf, site, x, t, args.repeats, inner=50)


def sd15(args: argparse.Namespace) -> dict[str, Any]:
    from governance.basemodel.sd15 import build_sd15_shaped_pipeline
    from governance.enforcement.intervention import EnforcedBlocklist, apply_blocklist, enforcer_of, remove_blocklist
    from governance.formats.blocklist import Approval, BlockedConcept, BlocklistSpec, SaeRef
    from governance.formats.mapping import FeatureEntry
    from governance.formats.sae_config import SaeConfig
    from governance.sae.model import TopKSAE

    device, dtype = getattr(args, "device", "cpu"), getattr(args, "dtype", torch.float32)
    pipe = build_sd15_shaped_pipeline()
    if (device, dtype) != ("cpu", torch.float32):
        pipe = pipe.to(device, dtype)
    pipe.set_progress_bar_config(disable=True)
    torch.manual_seed(0)
    sae = TopKSAE(SaeConfig(d_in=1280, expansion_factor=16, k=32), device=device)
    pipe.scheduler.set_timesteps(args.steps)
    timesteps = [int(t) for t in pipe.scheduler.timesteps]
    features = list(range(0, 20480, 2560))  # 8 features per timestep
    spec = BlocklistSpec(name="bench", version=1, saes=[SaeRef(hook_point=SD15_HOOK)], entries=[BlockedConcept(
        concept="bench", kind="colour", mapping_id=1, gamma=-1.0, hook_point=SD15_HOOK, scheduler="DDIMScheduler",
        num_steps=args.steps, approval=Approval(review_id=1, by="bench", justification="benchmark"),
        timesteps={t: [FeatureEntry(feature=f, score=0.1, scale=-0.5, gate=0.0) for f in features]
                   for t in timesteps})])
    blocklist = EnforcedBlocklist(spec=spec, saes=sae)
    prompts = ["a red circle", "a blue square"]

    def run(enforce: bool) -> Callable[[], Any]:
        def go() -> None:
            if enforce:
                apply_blocklist(pipe, blocklist)
            else:
                remove_blocklist(pipe)
            pipe(prompts, height=512, width=512, num_inference_steps=args.steps, guidance_scale=7.5,
                 generator=[torch.Generator(device).manual_seed(i) for i in range(len(prompts))], output_type="latent")
            if device != "cpu":
                torch.cuda.synchronize()
        return go

    times = side_by_side({"plain": run(False), "enforced": run(True)}, args.repeats)
    print(f"SD 1.5 shape (random weights), 512 px, batch 2 + CFG, {args.steps} steps, one hooked block: "
          f"plain s {spread(times['plain'])}, enforced s {spread(times['enforced'])}; "
          f"enforced/plain {spread(ratios(times['enforced'], times['plain']))}")
    remove_blocklist(pipe)
    x = capture_block_output(pipe, pipe.unet.get_submodule(SD15_HOOK), lambda: pipe(
        prompts, height=512, width=512, num_inference_steps=1, guidance_scale=7.5, output_type="latent"))
    enf = apply_blocklist(pipe, blocklist)
    assert enforcer_of(pipe) is enf
    hook = hook_vs_matmul(enf, next(iter(enf.sites.values())), x, timesteps[0], args.repeats, inner=3)
    return {"device": str(device), "dtype": str(dtype), "steps": args.steps, "seconds": times,
            "enforced_over_plain": ratios(times["enforced"], times["plain"]), **hook}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--deployment", default=".saegov/demo/deployments/demo")
    ap.add_argument("--trusted-keys", default=None, help="trust store (default: the registry of SAEGOV_HOME)")
    ap.add_argument("--sd15", action="store_true", help="the SD 1.5 architecture at 512 px instead of the toy world")
    ap.add_argument("--kth", action="store_true", help="only the k-th value crossover: numpy vs torch.topk by row width")
    ap.add_argument("--batch", type=int, default=8, help="toy world: images per call")
    ap.add_argument("--steps", type=int, default=2, help="--sd15: denoising steps per run")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"threads={args.threads} loadavg={os.getloadavg()[0]:.2f}")
    if args.kth:
        kth_crossover(args)
    else:
        sd15(args) if args.sd15 else toy(args)


if __name__ == "__main__":
    main()
