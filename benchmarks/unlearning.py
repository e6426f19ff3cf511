"""Unlearning on the whole toy world: every colour, shape and style as a target (issue 6 goals).

For each concept: statistics against the other concepts of its kind, the operating-point sweep
of `saegov concept sweep` (sweep images disjoint from evaluation), then the chosen point applied
as a one-concept blocklist and measured on the evaluation images (styled prompts, seeds 0 and 1)
with UA / IRA / CRA. Then all colours but one blocked at once, each at its chosen point.

    python benchmarks/unlearning.py --sae .saegov/demo/saes/toy-sae-* --hookpoint up_blocks.1.attentions.2 \
        --top-ns 1,4,8 --multipliers=-5,-10   # '=' because the value starts with '-'

Prints a table (misses per concept, never averaged away) and writes --out JSON.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch


def reorder(stats: Any, target: str) -> Any:
    """The same statistics with `target` as concept 0 (what the selection functions expect)."""
    from governance.scoring.statistics import ConceptStats

    order = [stats.names.index(target)] + [i for i, n in enumerate(stats.names) if n != target]
    return ConceptStats(names=[stats.names[i] for i in order], timesteps=stats.timesteps,
                        mu=stats.mu[order], counts=stats.counts[order])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sae", required=True, help="SAE folder (cfg.json + sae.safetensors)")
    ap.add_argument("--hookpoint", default="up_blocks.1.attentions.2")
    ap.add_argument("--model", default=None, help="pipeline folder (default: the committed toy world)")
    ap.add_argument("--concepts", default="", help="comma-separated (default: all 11)")
    ap.add_argument("--top-ns", default="1,2,4")
    ap.add_argument("--taus", default="")
    ap.add_argument("--multipliers", default="-1,-5,-10")
    ap.add_argument("--sweep-seeds", default="100", help="seeds of the sweep images (never 0 or 1)")
    ap.add_argument("--no-multi", action="store_true", help="skip the all-colours-but-one run")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("unlearning.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from governance.scoring.statistics import ConceptPrompts, collect_concept_stats
    from governance.scoring.sweep import SweepRequest, blocklist_for, make_selector
    from governance.enforcement.intervention import EnforcedBlocklist, apply_blocklist, remove_blocklist
    from governance.formats.blocklist import BlocklistSpec, SaeRef
    from governance.evaluation.metrics import eval_jobs, generate_jobs, judge, unlearning_metrics
    from governance.sae.model import TopKSAE
    from governance.scoring.maths import choose_features
    from governance.toyworld.quality import DEFAULT_GUIDANCE, DEFAULT_STEPS
    from governance.toyworld.grammar import ATTRIBUTES, COLOURS, all_prompts, attribute_of, registry_kind
    from governance.toyworld.loading import load_pipeline

    steps, guidance = DEFAULT_STEPS, DEFAULT_GUIDANCE
    pipe = load_pipeline(args.model)
    sae = TopKSAE.load(args.sae).eval()
    concepts = [c for c in args.concepts.split(",") if c] or [c for names in ATTRIBUTES.values() for c in names]
    sweep = SweepRequest(taus=[float(t) for t in args.taus.split(",") if t],
                         top_ns=[int(n) for n in args.top_ns.split(",") if n],
                         multipliers=[float(g) for g in args.multipliers.split(",") if g],
                         seeds=tuple(int(x) for x in args.sweep_seeds.split(",") if x))
    stats_by_kind: dict[str, Any] = {}
    jobs = eval_jobs()
    t0 = time.monotonic()
    results: dict[str, Any] = {}
    entries: dict[str, Any] = {}
    for c in concepts:
        kind = attribute_of(c)
        if kind not in stats_by_kind:
            cps = [ConceptPrompts(n, tuple(p.text for p in all_prompts() if getattr(p, kind) == n)) for n in ATTRIBUTES[kind]]
            stats_by_kind[kind] = collect_concept_stats(pipe, sae, args.hookpoint, cps, steps=steps,
                                                        guidance=guidance, seed=0, batch_size=32)
        stats = reorder(stats_by_kind[kind], c)
        chosen = make_selector(sweep, steps=steps, guidance=guidance)(pipe, sae, args.hookpoint, stats, kind)
        table = json.loads(chosen.evidence[0]["ref"])
        choices, _ = choose_features(stats.mu, stats.counts, 0, stats.timesteps, chosen.gamma,
                                     tau=chosen.tau, top_n=chosen.top_n)
        spec = blocklist_for(c, registry_kind(c), args.hookpoint, chosen.gamma, choices, stats.timesteps,
                              type(pipe.scheduler).__name__, steps)
        entries[c] = spec.entries[0]
        apply_blocklist(pipe, EnforcedBlocklist(spec=spec, saes=sae))
        try:
            images = generate_jobs(pipe, jobs, steps, guidance)
        finally:
            remove_blocklist(pipe)
        m = unlearning_metrics(judge(images, jobs), [c])[c]
        results[c] = {"chosen": table["chosen"], "eval": m}
        print(f"{c:9s} {kind:6s} chosen {table['chosen']['rule']}={table['chosen']['value']:g} "
              f"gamma={table['chosen']['gamma']:g} (sweep UA {100 * table['chosen']['UA']:.1f} IRA "
              f"{100 * table['chosen']['IRA']:.1f})  eval UA {100 * m['UA']:5.1f} IRA {100 * m['IRA']:5.1f} "
              f"CRA {100 * m['CRA']:5.1f} {json.dumps({k: round(100 * v, 1) for k, v in m['CRA_by_kind'].items()})}"
              f"  [{time.monotonic() - t0:.0f} s]", flush=True)

    multi: dict[str, Any] = {}
    if not args.no_multi and all(c in entries for c in COLOURS):
        for keep in COLOURS:
            targets = [c for c in COLOURS if c != keep]
            spec = BlocklistSpec(name="multi", sae=SaeRef(hook_point=args.hookpoint),
                                 entries=[entries[c] for c in targets])
            apply_blocklist(pipe, EnforcedBlocklist(spec=spec, saes=sae))
            try:
                images = generate_jobs(pipe, jobs, steps, guidance)
            finally:
                remove_blocklist(pipe)
            m = unlearning_metrics(judge(images, jobs), targets)
            kept_acc = m[targets[0]]["IRA"]  # other colours not blocked = the kept colour
            multi[keep] = {"UA": {c: m[c]["UA"] for c in targets}, "kept_colour_accuracy": kept_acc,
                           "CRA": {c: m[c]["CRA"] for c in targets}}
            print(f"all colours but {keep:7s}: UA " + " ".join(f"{c} {100 * m[c]['UA']:.1f}" for c in targets)
                  + f"  kept-colour accuracy {100 * kept_acc:.1f}", flush=True)
    args.out.write_text(json.dumps({"hookpoint": args.hookpoint, "sae": args.sae, "model": args.model, "sweep": sweep.model_dump(),
                                    "per_concept": results, "all_colours_but_one": multi}, indent=2, default=str))
    print(f"wrote {args.out} in {time.monotonic() - t0:.0f} s")


if __name__ == "__main__":
    main()
