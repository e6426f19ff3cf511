"""Upper-bound diagnostic: can ANY activation edit at a hook point remove a concept and keep the rest?

Subtracts alpha x (mean activation on the concept's prompts - mean on a reference), per
timestep, from the conditional half of the hook point's output (an oracle that knows the
concept direction exactly, with no SAE in between), then judges the images of the concept's
prompts. If even this edit cannot remove the concept without breaking the other kinds, no
feature selection at that hook point can: the limit is the model's representation.

The reference is the other prompts of the concept's kind (`--reference others`), or the same
prompts with the concept left out (`--reference neutral`: "a circle in plain style" for "a red
circle in plain style"), so that alpha 1 moves the mean activation exactly onto the caption
without the concept.

    python benchmarks/oracle_steering.py --concept red --hookpoint up_blocks.1.attentions.2 --alphas 1,2,3,4
"""
from __future__ import annotations

import argparse
from dataclasses import replace

import torch


def oracle_bound(pipe, concept: str, hookpoint: str, alphas: list[float], mode: str = "token",  # noqa: ANN001
                 reference: str = "neutral", log=print) -> list[dict]:  # noqa: ANN001
    """One row per alpha (0 first): the concept's images (seed 0) judged after the oracle edit:
    how many keep the concept and how many keep each other kind."""
    from governance.evaluation.metrics import generate_jobs, judge
    from governance.basemodel.hooks import TimestepReader, block_output_map, conditional_half, resolve_hook_point
    from governance.toyworld.quality import DEFAULT_GUIDANCE, DEFAULT_STEPS
    from governance.toyworld.grammar import all_prompts, attribute_of

    kind = attribute_of(concept)
    block = resolve_hook_point(pipe.unet, hookpoint)
    prompts = all_prompts(include_style_free=False)
    if reference == "neutral":
        mine = [p for p in prompts if getattr(p, kind) == concept]
        prompts = mine + [replace(p, **{kind: None}) for p in mine]
    # The direction, from generations on seeds the judged images never use.
    captured: list[torch.Tensor] = []
    tokens: list[torch.Tensor] = []

    def capture(module, inputs, output):  # noqa: ANN001, ANN202
        x = conditional_half(block_output_map(output), block_output_map(output).shape[0] // 2).detach()
        captured.append(x.mean(dim=(2, 3)))
        tokens.append(x)

    handle = block.register_forward_hook(capture)
    try:
        n_seeds = len(prompts) // 2 if reference == "neutral" else len(prompts)
        gens = [torch.Generator().manual_seed(100 + i % n_seeds) for i in range(len(prompts))]
        pipe([p.text for p in prompts], num_inference_steps=DEFAULT_STEPS, guidance_scale=DEFAULT_GUIDANCE,
             generator=gens, output_type="latent")
    finally:
        handle.remove()
    acts = torch.stack(captured)  # [T, B, C]
    is_c = torch.tensor([getattr(p, kind) == concept for p in prompts])
    direction = acts[:, is_c].mean(1) - acts[:, ~is_c].mean(1)  # [T, C]
    unit = direction / direction.norm(dim=1, keepdim=True)
    # Per timestep, the mean projection of the other concepts' tokens on the direction: the baseline
    # a token of the concept exceeds.
    baseline = torch.stack([(t[~is_c] * u[None, :, None, None]).sum(1).mean() for t, u in zip(tokens, unit)])
    timesteps = [int(t) for t in pipe.scheduler.timesteps]

    reader = TimestepReader(pipe.unet, name="oracle.timestep")
    state = {"alpha": 0.0}

    def steer(module, inputs, output):  # noqa: ANN001, ANN202
        x = block_output_map(output)
        i = timesteps.index(int(reader.current[0]))
        n = x.shape[0] // 2
        if mode == "uniform":
            edit = direction[i][None, :, None, None]
        else:
            u = unit[i][None, :, None, None]
            excess = ((x[n:] * u).sum(1, keepdim=True) - baseline[i]).clamp_min(0)
            edit = excess * u
        x = torch.cat([x[:n], x[n:] - state["alpha"] * edit])
        return (x, *output[1:]) if isinstance(output, tuple) else x

    jobs = [(p, 0) for p in all_prompts(include_style_free=False) if getattr(p, kind) == concept]
    others = [k for k in ("colour", "shape", "style") if k != kind]
    rows: list[dict] = []
    reader.attach()
    handle = block.register_forward_hook(steer)
    try:
        for alpha in [0.0] + list(alphas):
            state["alpha"] = alpha
            judged = judge(generate_jobs(pipe, jobs, DEFAULT_STEPS, DEFAULT_GUIDANCE), jobs)
            kept = sum(j.correct(kind) for j in judged)
            rest = {k: sum(j.correct(k) for j in judged) for k in others}
            rows.append({"alpha": alpha, "images": len(judged), "concept_kept": kept, "others_kept": rest})
            log(f"{hookpoint} {mode} {concept} alpha {alpha:g}: concept kept {kept}/{len(judged)}  "
                + "  ".join(f"{k} kept {v}/{len(judged)}" for k, v in rest.items()))
    finally:
        handle.remove()
        reader.remove()
    return rows


def bound_of(rows: list[dict]) -> dict:
    """The oracle's best alpha: the largest min(UA, share of other kinds kept), in %."""
    def summary(r: dict) -> dict:
        n = r["images"]
        ua = 100 * (1 - r["concept_kept"] / n)
        rest = min(100 * v / n for v in r["others_kept"].values())
        return {"alpha": r["alpha"], "UA": ua, "others_kept": rest}
    return max((summary(r) for r in rows), key=lambda s: (min(s["UA"], s["others_kept"]), s["UA"]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--concept", default="red")
    ap.add_argument("--hookpoint", default="up_blocks.1.attentions.2")
    ap.add_argument("--alphas", default="1,2,3,4")
    ap.add_argument("--mode", choices=["uniform", "token"], default="uniform",
                    help="uniform: subtract alpha x the mean difference from every token; token: remove "
                         "alpha x each token's excess projection on that direction (a gated, per-token edit)")
    ap.add_argument("--reference", choices=["others", "neutral"], default="others")
    ap.add_argument("--model", default=None, help="pipeline folder (default: the committed toy world)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from governance.toyworld.loading import load_pipeline

    oracle_bound(load_pipeline(args.model), args.concept, args.hookpoint,
                 [float(a) for a in args.alphas.split(",")], args.mode, args.reference,
                 log=lambda line: print(line, flush=True))


if __name__ == "__main__":
    main()
