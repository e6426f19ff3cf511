"""Unlearning on the whole toy world, every selection method side by side (issue 14).

Each kind is blocked at its own block (docs/evaluation.md, "Where each kind lives"): give one SAE
folder per kind's hook point (its cfg.json names the hook point). For every concept and every
method: statistics against the other concepts of its kind, the operating-point sweep of `saegov
concept sweep` (sweep images disjoint from evaluation), the chosen point applied as a one-concept
blocklist and measured on the evaluation images (styled prompts, seeds 0 and 1) with UA / IRA /
CRA and CRA by kind. Then, per method: all concepts of a kind but one at once (for every kept
one), and one blocklist holding a colour, a shape and a style at their blocks. `--oracle` adds
the per-token oracle's bound at each concept's block (benchmarks/oracle_steering.py). The method
"assigned" blocks a concept-supervised SAE's dedicated latents (`sae train --supervise`), read from
the --sae-assigned folders (at each hook point, the one whose supervision names the concept).
`--second kind=hook` adds, for every concept of that kind and every method, a blocking at two
blocks: the one-block mapping held in force while a second sweep picks the point at `hook`, as
`concept sweep --with-mapping` does (rows "method, 2 blocks"). `--envelope` also measures every
point of each grid on the evaluation images themselves: not a choice any sweep could make, but
the best the edit reaches on the protocol, beside what the sweep chose (is the limit the edit or
the choice?). `--attack` adds, for each one-concept blocklist, UA under the prompt attacks of
`saegov eval --attack` (paraphrases; the white-box prefix attack on 4 prompts x seeds 0 and 1).
`--choices-from PREV.json` takes every point from an earlier run's rows instead of sweeping
again, so the several-concepts runs and the attacks of a long sweep can be measured in minutes.

    python benchmarks/unlearning.py --sae sae-colour --sae sae-shape --sae sae-style \\
        --sae-assigned sup-colour --sae-assigned sup-shape --sae-assigned sup-style \\
        --methods saeuron,specific,assigned --oracle --out unlearning.json

Prints one markdown table (misses per concept, never averaged away) and writes --out JSON.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

from governance.formats.sweep import ASSIGNED_GATE_RULES

sys.path.insert(0, str(Path(__file__).resolve().parent))

# Per (kind, method): (feature counts per timestep, gammas). The paper's rows use the grids of
# docs/evaluation.md; "specific" the grid its own sweep needs.
GRIDS: dict[tuple[str, str], tuple[list[int], list[float]]] = {
    ("colour", "saeuron"): ([1, 2, 4], [-1.0, -5.0, -10.0]),
    ("shape", "saeuron"): ([4, 8, 16], [-10.0, -20.0, -30.0]),
    ("style", "saeuron"): ([4, 8, 16], [-5.0, -10.0, -20.0]),
    ("colour", "specific"): ([8, 16], [-10.0, -30.0, -100.0]),
    ("shape", "specific"): ([8, 16], [-10.0, -30.0, -100.0]),
    ("style", "specific"): ([8, 16], [-10.0, -30.0, -100.0]),
    # A concept-supervised SAE's dedicated latents: only gamma is searched.
    ("colour", "assigned"): ([], [-2.0, -5.0, -10.0, -20.0, -50.0]),
    ("shape", "assigned"): ([], [-2.0, -5.0, -10.0, -20.0, -50.0, -100.0]),
    ("style", "assigned"): ([], [-2.0, -5.0, -10.0, -20.0, -50.0, -100.0]),
}
DEFAULT_HOOKS = {"colour": "up_blocks.1.attentions.2", "shape": "mid_block.attentions.0",
                 "style": "up_blocks.1.attentions.1"}


def pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sae", action="append", required=True, help="SAE folder (repeat: one per hook point)")
    ap.add_argument("--sae-assigned", action="append", default=[],
                    help="concept-supervised SAE folder for the 'assigned' method (repeat: one per hook point; "
                         "default: the --sae folders)")
    ap.add_argument("--at", default=",".join(f"{k}={h}" for k, h in DEFAULT_HOOKS.items()),
                    help="kind=hook point for each kind (default: each kind's block)")
    ap.add_argument("--second", default="",
                    help="kind=hook point: also block that kind's concepts at this second block, swept with "
                         "the first block's mapping in force (comma-separated)")
    ap.add_argument("--model", default=None, help="pipeline folder (default: the committed toy world)")
    ap.add_argument("--methods", default="saeuron,specific")
    ap.add_argument("--concepts", default="", help="comma-separated (default: every concept of the kinds given)")
    ap.add_argument("--objective", default="min_ua_ira_cra",
                    choices=["min_ua_ira_cra", "min_ua_ira_kinds", "ua_ira", "ua_ira_cra"])
    ap.add_argument("--sweep-seeds", default="100", help="seeds of the sweep images (never 0 or 1)")
    ap.add_argument("--styled-sweep", action="store_true",
                    help="sweep colours and shapes on the styled wording too (as `concept sweep --styled-sweep`)")
    ap.add_argument("--trio", default="red,triangle,dotted", help="the colour, shape and style blocked together")
    ap.add_argument("--plateau", action="store_true",
                    help="rank sweep points by the weakest objective of each and its gamma neighbours")
    ap.add_argument("--no-multi", action="store_true", help="skip the several-concepts runs")
    ap.add_argument("--oracle", action="store_true", help="add the per-token oracle bound per concept")
    ap.add_argument("--envelope", action="store_true",
                    help="also evaluate every grid point of one block on the evaluation images (the edit's best)")
    ap.add_argument("--gammas", action="append", default=[], metavar="KIND/METHOD=G1,G2,...",
                    help="replace the gammas of one grid of GRIDS (repeat), e.g. shape/assigned=-3,-4,-5,-6,-8")
    ap.add_argument("--assigned-gate", choices=ASSIGNED_GATE_RULES, default="paper",
                    help="the assigned method's gates: the paper's, or 0 (scaled wherever the latent fires)")
    ap.add_argument("--attack", action="store_true",
                    help="add UA under paraphrases and the white-box attack for each one-concept blocklist")
    ap.add_argument("--choices-from", type=Path, default=None, metavar="PREV.json",
                    help="take each concept's chosen points from an earlier run's --out instead of sweeping")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("unlearning.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    at = dict(item.split("=", 1) for item in args.at.split(",") if item)
    second = dict(item.split("=", 1) for item in args.second.split(",") if item)
    previous: dict[tuple[str, str], dict[str, Any]] = {}  # (method label, concept) -> its row
    prev: dict[str, Any] = {}
    if args.gammas and args.choices_from is not None and not args.envelope:
        # The points come from the earlier run: a grid given here would change nothing, silently.
        raise SystemExit("--gammas changes the sweep's grids; with --choices-from there is no sweep (only "
                         "--envelope uses them)")
    if args.choices_from is not None:
        try:
            prev = json.loads(args.choices_from.read_text())
            for r in prev["per_concept"]:
                previous[(r["method"], r["concept"])] = r
            saes_then = (prev["saes"], prev["saes_assigned"], prev["model"])
            blocks_then = (prev["at"], prev["second"], prev.get("assigned_gate", "paper"))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise SystemExit(f"--choices-from {args.choices_from}: not a benchmark output ({exc})") from None
        # A point is a (rule, value, gamma) of one SAE's statistics: on other SAEs it means nothing.
        # The same for other blocks, and for the other gate rule (its points must be swept for it).
        if saes_then != (args.sae, args.sae_assigned, args.model):
            raise SystemExit(f"--choices-from {args.choices_from}: that run used other SAEs or another model "
                             f"({saes_then[0]}, {saes_then[1]}, model {saes_then[2]})")
        if blocks_then != (at, second, args.assigned_gate):
            raise SystemExit(f"--choices-from {args.choices_from}: that run blocked at other hook points or with "
                             "another gate rule (--at {}, --second {}, --assigned-gate {})".format(*blocks_then))
        if not previous:
            raise SystemExit(f"--choices-from {args.choices_from}: it holds no chosen point")
    for item in args.gammas:
        key, _, values = item.partition("=")
        kind_method = tuple(key.split("/"))
        if kind_method not in GRIDS or not values:
            raise SystemExit(f"--gammas {item}: expected KIND/METHOD=G1,G2,... with KIND/METHOD one of "
                             + ", ".join("/".join(k) for k in GRIDS))
        try:
            GRIDS[kind_method] = (GRIDS[kind_method][0], [float(g) for g in values.split(",")])  # type: ignore[index]
        except ValueError:
            raise SystemExit(f"--gammas {item}: the gammas must be numbers") from None

    from governance.enforcement.intervention import EnforcedBlocklist, apply_blocklist, remove_blocklist
    from governance.evaluation.attack import attack_unlearning
    from governance.evaluation.metrics import eval_jobs, generate_jobs, judge, unlearning_metrics
    from governance.formats.blocklist import BlocklistSpec, SaeRef
    from governance.sae.model import TopKSAE
    from governance.scoring.selection import ScoringError, assigned_latents, choose
    from governance.scoring.statistics import ConceptPrompts, collect_concept_stats
    from governance.scoring.sweep import InForceBlocking, SweepRequest, blocklist_for, make_selector, rule_kwargs
    from governance.toyworld.grammar import ATTRIBUTES, all_prompts, attribute_of, registry_kind
    from governance.toyworld.loading import load_pipeline
    from governance.toyworld.quality import DEFAULT_GUIDANCE, DEFAULT_STEPS

    steps, guidance = DEFAULT_STEPS, DEFAULT_GUIDANCE
    t0 = time.monotonic()

    def log(line: str) -> None:
        print(f"[{time.monotonic() - t0:5.0f} s] {line}", flush=True)

    pipe = load_pipeline(args.model)

    def load_saes(folders: list[str]) -> list[Any]:
        out = []
        for folder in folders:
            sae = TopKSAE.load(folder).eval()
            if not sae.cfg.hookpoint:
                raise SystemExit(f"{folder}: cfg.json names no hookpoint")
            out.append(sae)
        return out

    saes = {s.cfg.hookpoint: s for s in load_saes(args.sae)}
    supervised = load_saes(args.sae_assigned)

    def sae_for(method: str, concept: str, hook: str) -> Any:
        """The paper's and the specific method read the --sae SAEs; "assigned" the supervised one
        at `hook` whose supervision names the concept (else the --sae one, which it skips)."""
        if method == "assigned":
            for s in supervised:
                if s.cfg.hookpoint == hook:
                    try:
                        assigned_latents(s, concept)
                        return s
                    except ScoringError:
                        pass
        return saes[hook]

    for kind, hook in second.items():
        if hook not in saes or hook == at.get(kind):
            raise SystemExit(f"--second {kind}={hook}: give an --sae at that hook point, other than the kind's block")
    kinds = [k for k in ATTRIBUTES if at.get(k) in saes]
    if not kinds:
        raise SystemExit(f"no SAE at any kind's hook point {at}")
    methods = [m for m in args.methods.split(",") if m]
    concepts = [c for c in args.concepts.split(",") if c] or [c for k in kinds for c in ATTRIBUTES[k]]
    seeds = tuple(int(x) for x in args.sweep_seeds.split(",") if x)
    jobs = eval_jobs()
    if previous:
        missing = [f"{m}/{c}" for c in concepts for m in methods if (m, c) not in previous]
        if missing:
            raise SystemExit(f"--choices-from {args.choices_from}: no chosen point for " + ", ".join(missing))

    def blocklist_of(held: list[tuple[Any, Any]]) -> Any:
        """`held`: (blocklist entry, its SAE) pairs; None when two of them need different SAEs
        at one hook point (a blocklist holds one SAE per hook point)."""
        by_hook: dict[str, Any] = {}
        for e, s in held:
            if by_hook.setdefault(e.hook_point, s) is not s:
                return None
        spec = BlocklistSpec(name="bench", saes=[SaeRef(hook_point=h) for h in sorted(by_hook)],
                             entries=[e for e, _ in held])
        return EnforcedBlocklist(spec=spec, saes=by_hook)

    def evaluate(held: list[tuple[Any, Any]], targets: list[str]) -> dict[str, Any] | None:
        blocklist = blocklist_of(held)
        if blocklist is None:
            return None
        apply_blocklist(pipe, blocklist)
        try:
            images = generate_jobs(pipe, jobs, steps, guidance)
        finally:
            remove_blocklist(pipe)
        return unlearning_metrics(judge(images, jobs), targets)

    def attacked(held: list[tuple[Any, Any]], concept: str) -> dict[str, Any]:
        """UA with no attack, under paraphrases and under the white-box attack, as `saegov eval
        --attack` measures it."""
        apply_blocklist(pipe, blocklist_of(held))
        try:
            a = attack_unlearning(pipe, [concept], max_prompts=4)[concept]
        finally:
            remove_blocklist(pipe)
        out = {k: a[k] for k in ("UA_no_attack", "UA_paraphrase", "UA_whitebox", "n_paraphrase", "n_whitebox")}
        # UA of the same attack prompts with the blocklist off: a paraphrase the model misreads
        # scores UA 1 there too, whatever the blocklist does.
        out.update({f"{k}_unprotected": (a[k] or {}).get("UA_unprotected") for k in ("paraphrase", "whitebox")})
        return out

    stats: dict[tuple[str, str, int], Any] = {}

    def stats_of(kind: str, hook: str, sae: Any) -> Any:
        if (kind, hook, id(sae)) not in stats:
            cps = [ConceptPrompts(n, tuple(p.text for p in all_prompts() if getattr(p, kind) == n))
                   for n in ATTRIBUTES[kind]]
            stats[(kind, hook, id(sae))] = collect_concept_stats(pipe, sae, hook, cps, steps=steps, guidance=guidance,
                                                                 seed=0, batch_size=32, peaks=True)
            log(f"statistics of the {kind}s at {hook}" + (" (supervised SAE)" if sae is not saes[hook] else ""))
        return stats[(kind, hook, id(sae))]

    def entry_for(c: str, hook: str, st: Any, rule: str, value: float, gamma: float, assigned: list[int]) -> Any:
        """The blocklist entry of one (rule, value, gamma) point, as the sweep builds it."""
        choices, _ = choose(st, gamma=gamma, **rule_kwargs(rule, value, assigned=assigned,
                                                           assigned_gate=args.assigned_gate))
        return blocklist_for(c, registry_kind(c), hook, gamma, choices, st.timesteps, type(pipe.scheduler).__name__,
                             steps).entries[-1]

    def sweep_at(c: str, kind: str, method: str, hook: str, in_force: list[tuple[Any, Any]],
                 label: str) -> tuple[Any, Any, dict]:
        """The concept's point at `hook` chosen by the sweep, with `in_force` (entry, SAE) pairs
        applied at every point: (entry, SAE, the chosen sweep point). With --choices-from, the
        point the earlier run's row `label` chose, unswept."""
        sae = sae_for(method, c, hook)
        st = stats_of(kind, hook, sae).with_target(c)
        top_ns, gammas = GRIDS[(kind, method)]
        assigned = assigned_latents(sae, c) if method == "assigned" else []  # what the sweep reads from the same cfg
        if previous:
            row = previous.get((label, c))
            if row is None:
                raise ScoringError(f"--choices-from has no row {label!r}")
            best = {**row["chosen"], "points": row.get("sweep_points", [])}
            return entry_for(c, hook, st, best["rule"], best["value"], best["gamma"], assigned), sae, best
        sweep = SweepRequest(top_ns=top_ns if method == "saeuron" else [],
                             specific_top_ns=top_ns if method == "specific" else [],
                             assigned=method == "assigned",
                             assigned_gate=args.assigned_gate if method == "assigned" else "paper",
                             multipliers=gammas, seeds=seeds, objective=args.objective, styled=args.styled_sweep,
                             plateau=args.plateau)
        held = InForceBlocking(entries=[e for e, _ in in_force], saes={e.hook_point: s for e, s in in_force})
        chosen = make_selector(sweep, steps=steps, guidance=guidance, in_force=held)(pipe, sae, hook, st, kind)
        table = json.loads(chosen.evidence[0]["ref"])
        best = {**table["chosen"], "points": table["points"]}
        return entry_for(c, hook, st, best["rule"], best["value"], best["gamma"], assigned), sae, best

    rows: list[dict[str, Any]] = []
    entries: dict[tuple[str, str], list[tuple[Any, Any]]] = {}  # (method label, concept) -> held pairs
    labels: list[str] = []
    for c in concepts:
        kind = attribute_of(c)
        for method in methods:
            plan = [at[kind]] + ([second[kind]] if kind in second else [])
            held: list[tuple[Any, Any]] = []
            for n_blocks, hook in enumerate(plan, start=1):
                label = method if n_blocks == 1 else f"{method}, 2 blocks"
                try:
                    entry, sae, best = sweep_at(c, kind, method, hook, held, label)
                except ScoringError as exc:
                    log(f"{c:9s} {method:8s} at {hook} skipped: {exc}")
                    break
                held = [*held, (entry, sae)]
                if label not in labels:
                    labels.append(label)
                entries[(label, c)] = held
                m = evaluate(held, [c])
                if m is None:
                    log(f"{c:9s} {label}: two SAEs at one hook point, skipped")
                    break
                m = m[c]
                row = {"concept": c, "kind": kind, "hook_point": " + ".join(e.hook_point for e, _ in held),
                       "method": label,
                       "chosen": {k: best[k] for k in ("rule", "value", "gamma", "UA", "IRA", "CRA")},
                       "sweep_points": best["points"],
                       "gammas": [e.gamma for e, _ in held],
                       "UA": m["UA"], "IRA": m["IRA"], "CRA": m["CRA"], "CRA_by_kind": m["CRA_by_kind"]}
                if args.attack:
                    row["attack"] = attacked(held, c)
                rows.append(row)
                log(f"{c:9s} {label:18s} {best['rule']}={best['value']:g} gammas={row['gammas']}  UA {pct(m['UA'])} "
                    f"IRA {pct(m['IRA'])} CRA {pct(m['CRA'])} "
                    + json.dumps({k: round(100 * v, 1) for k, v in m["CRA_by_kind"].items()})
                    + (f"  attack UA: paraphrases {pct(row['attack']['UA_paraphrase'])}, white-box "
                       f"{pct(row['attack']['UA_whitebox'])}" if args.attack else ""))

    envelope: list[dict[str, Any]] = []
    if args.envelope:
        for c in concepts:
            kind = attribute_of(c)
            hook = at[kind]
            for method in methods:
                sae = sae_for(method, c, hook)
                st = stats_of(kind, hook, sae).with_target(c)
                try:
                    assigned = assigned_latents(sae, c) if method == "assigned" else []
                except ScoringError:
                    continue
                top_ns, gammas = GRIDS[(kind, method)]
                rule = {"saeuron": "top_n", "specific": "specific", "assigned": "assigned"}[method]
                values = [len(assigned)] if method == "assigned" else top_ns
                points = []
                for value in values:
                    for gamma in gammas:
                        m = evaluate([(entry_for(c, hook, st, rule, value, gamma, assigned), sae)], [c])
                        assert m is not None  # one entry: one SAE
                        m = m[c]
                        by_kind = {k: v for k, v in m["CRA_by_kind"].items() if v is not None}
                        weakest = min(m["UA"], m["IRA"], m["CRA"])
                        points.append({"rule": rule, "value": value, "gamma": gamma, "UA": m["UA"], "IRA": m["IRA"],
                                       "CRA": m["CRA"], "CRA_by_kind": by_kind, "weakest": weakest,
                                       "meets_goal": weakest >= 0.95 and min(by_kind.values()) >= 0.90})
                best = max(points, key=lambda p: (p["meets_goal"], p["weakest"]))
                envelope.append({"concept": c, "method": method, "hook_point": hook, "points": points, "best": best})
                log(f"{c:9s} {method:8s} envelope: best {best['rule']}={best['value']:g} gamma {best['gamma']:g}  "
                    f"UA {pct(best['UA'])} IRA {pct(best['IRA'])} CRA {pct(best['CRA'])} "
                    + json.dumps({k: round(100 * v, 1) for k, v in best["CRA_by_kind"].items()})
                    + f"; goal met at {sum(p['meets_goal'] for p in points)} of {len(points)} points")

    oracle: dict[str, Any] = {}
    if args.oracle:
        from oracle_steering import bound_of, oracle_bound

        for c in concepts:
            hook = at[attribute_of(c)]
            found = oracle_bound(pipe, c, hook, [1.0, 2.0, 3.0, 4.0], "token", "neutral", log=lambda line: None)
            oracle[c] = {"hook_point": hook, "rows": found, "bound": bound_of(found)}
            b = oracle[c]["bound"]
            log(f"oracle {c} at {hook}: alpha {b['alpha']:g} removes {b['UA']:.1f} %, other kinds kept "
                f"{b['others_kept']:.1f} %")

    multi: list[dict[str, Any]] = []
    if not args.no_multi:
        for method in labels:
            for kind in kinds:
                names = ATTRIBUTES[kind]
                if not all((method, n) in entries for n in names):
                    continue
                for keep in names:
                    targets = [n for n in names if n != keep]
                    m = evaluate([p for n in targets for p in entries[(method, n)]], targets)
                    if m is None:
                        log(f"{method:8s} all {kind}s but {keep}: two SAEs at one hook point, skipped")
                        continue
                    run = {"method": method, "run": f"all {kind}s but {keep}",
                           "UA": {n: m[n]["UA"] for n in targets}, "kept_accuracy": m[targets[0]]["IRA"],
                           "CRA": {n: m[n]["CRA"] for n in targets}}
                    multi.append(run)
                    log(f"{method:8s} {run['run']:24s} UA " + " ".join(f"{n} {pct(v)}" for n, v in run["UA"].items())
                        + f"  kept {pct(run['kept_accuracy'])}  CRA {pct(min(run['CRA'].values()))}")
            trio = [c for c in args.trio.split(",") if c]
            if all((method, c) in entries for c in trio):
                m = evaluate([p for c in trio for p in entries[(method, c)]], trio)
                if m is None:
                    log(f"{method:8s} trio: two SAEs at one hook point, skipped")
                    continue
                run = {"method": method, "run": "trio " + "+".join(trio),
                       "per_concept": {c: {k: m[c][k] for k in ("UA", "IRA", "CRA")} for c in trio}}
                multi.append(run)
                log(f"{method:8s} {run['run']:24s} " + "  ".join(
                    f"{c} {pct(v['UA'])}/{pct(v['IRA'])}/{pct(v['CRA'])}" for c, v in run["per_concept"].items()))

    print("\n| concept | block | method | chosen | UA | IRA | CRA | CRA by kind | oracle: UA / other kinds kept |"
          + (" attack UA: paraphrases / white-box |" if args.attack else ""))
    print("|---|---|---|---|---|---|---|---|---|" + ("---|" if args.attack else ""))
    for r in rows:
        ch = r["chosen"]
        ob = oracle.get(r["concept"], {}).get("bound")
        at_ua = r.get("attack")
        print(f"| {r['concept']} | `{r['hook_point']}` | {r['method']} | {ch['rule']} {ch['value']:g}, "
              f"gamma {', '.join(f'{g:g}' for g in r['gammas'])} | {pct(r['UA'])} | {pct(r['IRA'])} | {pct(r['CRA'])} | "
              + ", ".join(f"{k} {pct(v)}" for k, v in r["CRA_by_kind"].items())
              + (f" | {ob['UA']:.0f} / {ob['others_kept']:.0f} (alpha {ob['alpha']:g})" if ob else " | -") + " |"
              + (f" {pct(at_ua['UA_paraphrase'])} / {pct(at_ua['UA_whitebox'])} |" if at_ua else ""))
    if envelope:
        print("\n| concept | method | best point on the evaluation images | UA | IRA | CRA | CRA by kind | points meeting the goal |")
        print("|---|---|---|---|---|---|---|---|")
        for e in envelope:
            b = e["best"]
            print(f"| {e['concept']} | {e['method']} | {b['rule']} {b['value']:g}, gamma {b['gamma']:g} | {pct(b['UA'])} | "
                  f"{pct(b['IRA'])} | {pct(b['CRA'])} | " + ", ".join(f"{k} {pct(v)}" for k, v in b["CRA_by_kind"].items())
                  + f" | {sum(p['meets_goal'] for p in e['points'])} of {len(e['points'])} |")
    # How the points were chosen: this run's sweep, or the earlier run's that --choices-from read.
    how = {"objective": args.objective, "styled_sweep": args.styled_sweep, "sweep_seeds": list(seeds),
           "plateau": args.plateau, "grids": {f"{k}/{m}": v for (k, m), v in GRIDS.items()}}
    if previous:
        how = {k: prev.get(k) for k in how}
    args.out.write_text(json.dumps({"saes": args.sae, "saes_assigned": args.sae_assigned, "at": at, "second": second,
                                    "model": args.model, **how, "assigned_gate": args.assigned_gate,
                                    "choices_from": str(args.choices_from) if args.choices_from else None,
                                    "per_concept": rows, "multi": multi, "oracle": oracle, "envelope": envelope},
                                   indent=2, default=str))
    log(f"wrote {args.out}")


if __name__ == "__main__":
    main()
