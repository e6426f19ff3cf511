"""`concept sweep`: pick a concept's operating point (selection rule x gamma) from measured effect.

SAEURON.md section 3: objects were tuned per concept by a grid over tau x gamma maximising
(UA + IRA) / 2 on held-out sweep prompts. Here each grid point is applied to the base pipeline as
a one-concept blocklist, sweep images are generated and judged by the toy world's exact
classifiers, and the best point becomes the draft mapping; the whole table is its evidence.

A sweep may run with other mappings of the same concept in force at other hook points
(`--with-mapping`): every point is then measured with them, so the chosen point is one of a
blocking at several blocks; the table and the mapping's evidence name them, and the registry
publishes the new mapping only beside them.

Sweep images never overlap the evaluation images (`governance.evaluation.eval_jobs`: styled
prompts, seeds 0 and 1): colours and shapes are swept on the style-free wording ("a red circle"),
which evaluation never uses; styles, which only the styled wording can ask for, on other seeds.
`styled=True` sweeps colours and shapes on the styled wording too (other seeds than evaluation's),
the prompts a deployment will mostly see: three times the images per point.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from governance.evaluation.metrics import EVAL_SEEDS, generate_jobs, judge, unlearning_metrics
from governance.formats.blocklist import BlockedConcept, BlocklistSpec, SaeRef
from governance.formats.mapping import CHOSEN_WITH
from governance.formats.sweep import OBJECTIVES, SWEEP_NAME, InForce, SweepPoint, SweepTable
from governance.scoring.maths import AssignedGate, FeatureChoice
from governance.scoring.selection import (
    ChildRun, ScoringError, Selected, assigned_latents, choose, entries_by_timestep,
)
from governance.scoring.statistics import ConceptStats
from governance.toyworld.grammar import ToyPrompt, all_prompts, attribute_of, registry_kind
Progress = Callable[[int, int], None]  # (images done, images total)


class SweepRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    taus: list[float] = Field(default_factory=list)
    top_ns: list[int] = Field(default_factory=list)
    # Feature counts per timestep under specificity-aware selection (governance.scoring.specificity).
    specific_top_ns: list[int] = Field(default_factory=list)
    gate_quantile: float = Field(default=1.0, gt=0, le=1)
    # One more rule, "assigned": the concept's dedicated latents of a concept-supervised SAE
    # (its cfg.json's supervision), tried with every gamma.
    assigned: bool = False
    # How the assigned latents are gated (governance.formats.sweep.AssignedGate).
    assigned_gate: AssignedGate = "paper"
    multipliers: list[float] = Field(min_length=1)
    seeds: tuple[int, ...] = Field(default=(100,), min_length=1)
    batch_size: int = Field(default=32, gt=0)
    # "min_ua_ira_cra" (the default): the weakest of the three, so that a point which "removes"
    # the concept by wrecking the object, or keeps the image by removing nothing, cannot win;
    # "ua_ira" is the paper's (UA + IRA) / 2, "ua_ira_cra" the mean of the three.
    # "min_ua_ira_kinds": the weakest of UA, IRA and each other kind's CRA, so that a point
    # that wrecks the object's shape cannot hide it behind a style kept intact (the mean).
    objective: Literal["ua_ira", "ua_ira_cra", "min_ua_ira_cra", "min_ua_ira_kinds"] = "min_ua_ira_cra"
    # Colours and shapes on the styled wording too (styles always are).
    styled: bool = False
    # Rank each point by the weakest objective of it and its gamma neighbours (same rule and
    # value): a plateau, not a lucky peak between two failing points (docs/evaluation.md, stop 30).
    plateau: bool = False

    @model_validator(mode="after")
    def _check(self) -> SweepRequest:
        if not self.taus and not self.top_ns and not self.specific_top_ns and not self.assigned:
            raise ValueError("give at least one --taus, --top-ns or --specific-top-ns value, or --assigned")
        if self.assigned_gate != "paper" and not self.assigned:
            raise ValueError("--assigned-gate applies to --assigned points only")
        if any(not 0 < t < 100 for t in self.taus):
            raise ValueError("every tau must lie in (0, 100)")
        if any(n <= 0 for n in self.top_ns + self.specific_top_ns):
            raise ValueError("every top-n must be positive")
        self.seeds = tuple(dict.fromkeys(self.seeds))
        if set(self.seeds) & set(EVAL_SEEDS):
            raise ValueError(f"sweep seeds must differ from the evaluation seeds {EVAL_SEEDS}")
        return self

    def rules(self, n_assigned: int = 0) -> list[tuple[str, float]]:
        return ([("tau", t) for t in self.taus] + [("top_n", n) for n in self.top_ns]
                + [("specific", n) for n in self.specific_top_ns]
                + ([("assigned", n_assigned)] if self.assigned else []))

    def needs_peaks(self) -> bool:
        return bool(self.specific_top_ns)


@dataclass
class InForceBlocking:
    """Mappings of the swept concept at other hook points, applied at every sweep point: their
    blocklist entries (each naming its hook point), the SAE at each of those hook points, and
    what the table and the new mapping's evidence record of them."""

    entries: list[BlockedConcept] = field(default_factory=list)
    saes: dict[str, Any] = field(default_factory=dict)  # hook point -> TopKSAE
    refs: list[InForce] = field(default_factory=list)

    def evidence(self) -> list[dict[str, Any]]:
        return [{"kind": CHOSEN_WITH, "ref": f"mapping:{r.mapping_id}", "sha256": r.spec_sha256} for r in self.refs]


def objective_value(objective: str, ua: float, ira: float, cra: float,
                    cra_by_kind: dict[str, float] | None = None) -> float:
    if objective == "min_ua_ira_kinds":
        return min(ua, ira, *(cra_by_kind.values() if cra_by_kind else (cra,)))
    if objective == "ua_ira":
        return (ua + ira) / 2
    if objective == "ua_ira_cra":
        return (ua + ira + cra) / 3
    return min(ua, ira, cra)


def rule_kwargs(rule: str, value: float, gate_quantile: float = 1.0,
                assigned: list[int] | None = None, assigned_gate: str = "paper") -> dict[str, Any]:
    """A sweep point's rule as the keyword arguments of `selection.choose`."""
    if rule == "assigned":
        return {"method": "assigned", "assigned": list(assigned or []), "assigned_gate": assigned_gate}
    if rule == "tau":
        return {"method": "saeuron", "tau": value}
    if rule == "top_n":
        return {"method": "saeuron", "top_n": int(value)}
    return {"method": "specific", "top_n": int(value), "gate_quantile": gate_quantile}


def sweep_jobs(concept: str, seeds: tuple[int, ...], styled: bool = False) -> list[tuple[ToyPrompt, int]]:
    styled = styled or attribute_of(concept) == "style"
    prompts = [p for p in all_prompts() if (p.style is None) == (not styled)]
    return [(p, s) for p in prompts for s in seeds]


def plateau_objectives(points: list[SweepPoint]) -> list[float]:
    """Per point, the weakest objective of it and its neighbours along gamma among the points of
    the same rule and value (the grid's ends have one neighbour)."""
    out = [p.objective for p in points]
    lines: dict[tuple[str, float], list[int]] = {}
    for i, p in enumerate(points):
        lines.setdefault((p.rule, float(p.value)), []).append(i)
    for idx in lines.values():
        idx.sort(key=lambda i: points[i].gamma)
        for j, i in enumerate(idx):
            out[i] = min(points[k].objective for k in idx[max(0, j - 1):j + 2])
    return out


def best_point(points: list[SweepPoint], plateau: bool = False) -> SweepPoint:
    """Highest objective (with `plateau`, the weakest of each point and its gamma neighbours);
    ties go to the higher mean of UA, IRA and CRA, then to higher CRA, then to the fewest
    features touched, then to the smaller |gamma|."""
    ranks = plateau_objectives(points) if plateau else [p.objective for p in points]
    _, best = max(zip(ranks, points), key=lambda rp: (round(rp[0], 9), round((rp[1].UA + rp[1].IRA + rp[1].CRA) / 3, 9),
                                                       round(rp[1].CRA, 9), -rp[1].n_entries, -abs(rp[1].gamma)))
    return best


def blocklist_for(concept: str, kind: str, hook: str, gamma: float, choices: list[FeatureChoice],
                  timesteps: list[int], scheduler: str, steps: int,
                  in_force: list[BlockedConcept] | None = None) -> BlocklistSpec:
    """An unapproved blocklist spec: what a sweep point applies to the base pipeline, its one
    entry at `hook` beside the `in_force` entries at other hook points."""
    entry = BlockedConcept(concept=concept, kind=kind, hook_point=hook, gamma=gamma, scheduler=scheduler,
                           num_steps=steps, timesteps=entries_by_timestep(choices, timesteps))
    others = list(in_force or [])
    hooks = sorted({hook, *(e.hook_point for e in others if e.hook_point)})
    return BlocklistSpec(name="sweep", saes=[SaeRef(hook_point=h) for h in hooks], entries=[*others, entry])


def point_run(p: SweepPoint, sweep: SweepRequest, chosen: bool = False) -> ChildRun:
    """A sweep point as a child run of the scoring run. The rule's value is also a param named
    after the rule (`top_n`, `tau`, `specific_top_n`), so the compare view can plot it."""
    key = {"tau": "tau", "top_n": "top_n", "specific": "specific_top_n", "assigned": "n_assigned_latents"}[p.rule]
    return ChildRun(
        name=f"{p.rule} {p.value:g} gamma {p.gamma:g}", kind="sweep-point",
        params={"rule": p.rule, "value": p.value, key: p.value, "gamma": p.gamma, "objective": sweep.objective,
                **({"gate_quantile": sweep.gate_quantile} if p.rule == "specific" else {}),
                **({"assigned_gate": sweep.assigned_gate} if p.rule == "assigned" else {})},
        metrics={"UA": 100 * p.UA, "IRA": 100 * p.IRA, "CRA": 100 * p.CRA, "objective": 100 * p.objective,
                 **{f"CRA.{k}": 100 * v for k, v in (p.CRA_by_kind or {}).items()},
                 "n_entries": float(p.n_entries), "n_features": float(p.n_features)},
        tags={"saegov.sweep.chosen": "true" if chosen else "false"})


def make_selector(sweep: SweepRequest, *, steps: int, guidance: float, progress: Progress | None = None,
                  in_force: InForceBlocking | None = None) -> Callable[[Any, Any, str, ConceptStats, str], Selected]:
    held = in_force or InForceBlocking()

    def select(pipe: Any, sae: Any, hook: str, stats: ConceptStats, kind: str) -> Selected:
        from governance.enforcement.intervention import EnforcedBlocklist, apply_blocklist, remove_blocklist

        concept = stats.names[0]
        try:
            attribute_of(concept)
        except KeyError:
            raise ScoringError(f"sweep measures on the toy world, whose classifiers do not know {concept!r}") from None
        if hook in held.saes:
            raise ScoringError(f"a mapping in force is at {hook}, the hook point being swept; "
                               "a blocklist holds one SAE per hook point")
        if any(e.concept != concept for e in held.entries):
            raise ScoringError(f"the mappings in force must be of {concept!r}, the concept being swept")
        assigned = assigned_latents(sae, concept) if sweep.assigned else []
        jobs = sweep_jobs(concept, sweep.seeds, sweep.styled)
        grid = [(r, v, g) for r, v in sweep.rules(len(assigned)) for g in sweep.multipliers]
        total, done = len(grid) * len(jobs), 0
        scheduler = type(pipe.scheduler).__name__
        points: list[SweepPoint] = []
        for rule, value, gamma in grid:
            try:
                choices, _ = choose(stats, gamma=gamma,
                                    **rule_kwargs(rule, value, sweep.gate_quantile, assigned, sweep.assigned_gate))
            except ScoringError as exc:
                raise ScoringError(f"sweep point {rule}={value}: {exc}") from None
            spec = blocklist_for(concept, registry_kind(concept), hook, gamma, choices, stats.timesteps, scheduler,
                                 steps, in_force=held.entries)
            apply_blocklist(pipe, EnforcedBlocklist(spec=spec, saes={**held.saes, hook: sae}))
            try:
                base = done
                images = generate_jobs(pipe, jobs, steps, guidance, batch=sweep.batch_size,
                                       progress=(lambda i, n: progress(base + i, total)) if progress else None)
            finally:
                remove_blocklist(pipe)
            done += len(jobs)
            m = unlearning_metrics(judge(images, jobs), [concept])[concept]
            ua, ira, cra = (float(m[k]) if m[k] is not None else 0.0 for k in ("UA", "IRA", "CRA"))
            by_kind = {k: float(v) for k, v in m["CRA_by_kind"].items() if v is not None}
            score = objective_value(sweep.objective, ua, ira, cra, by_kind)
            points.append(SweepPoint(rule=rule, value=value, gamma=gamma, UA=ua, IRA=ira, CRA=cra,
                                     CRA_by_kind=by_kind, objective=score,
                                     n_entries=len(choices), n_features=len({c.feature for c in choices})))
        best = best_point(points, plateau=sweep.plateau)
        styled = sweep.styled or attribute_of(concept) == "style"
        children = [point_run(p, sweep, chosen=p == best) for p in points]
        table = SweepTable(objective=OBJECTIVES[sweep.objective] + (", over each point and its gamma neighbours"
                                                                     if sweep.plateau else ""),
                           seeds=list(sweep.seeds), images_per_point=len(jobs),
                           prompts="styled wording, sweep seeds" if styled else "style-free wording",
                           chosen=best, points=points, with_mappings=list(held.refs) or None,
                           assigned_gate=sweep.assigned_gate if sweep.assigned else None)
        return Selected(
            tau=best.value if best.rule == "tau" else None,
            top_n=int(best.value) if best.rule != "tau" else None,
            gamma=best.gamma,
            method=best.rule if best.rule in ("specific", "assigned") else "saeuron",
            evidence=[{"kind": "sweep", "ref": table.evidence_text()}, *held.evidence()],
            artifacts={SWEEP_NAME: table.file_text().encode()},
            # Percent, as every UA / IRA / CRA saegov shows (the sweep table keeps fractions).
            metrics={"sweep.UA": 100 * best.UA, "sweep.IRA": 100 * best.IRA, "sweep.CRA": 100 * best.CRA,
                     "sweep.objective": 100 * best.objective, "sweep.points": float(len(points))},
            children=children,
            params={"sweep": {"taus": sweep.taus, "top_ns": sweep.top_ns, "specific_top_ns": sweep.specific_top_ns,
                              "gate_quantile": sweep.gate_quantile, "assigned": sweep.assigned,
                              "assigned_gate": sweep.assigned_gate,
                              "multipliers": sweep.multipliers,
                              "seeds": list(sweep.seeds), "objective": sweep.objective, "styled": sweep.styled,
                              "plateau": sweep.plateau,
                              **({"with_mappings": [r.model_dump() for r in held.refs]} if held.refs else {})}},
        )

    select.needs_peaks = sweep.needs_peaks()  # type: ignore[attr-defined]
    select.needs_assigned = sweep.assigned  # type: ignore[attr-defined]
    return select
