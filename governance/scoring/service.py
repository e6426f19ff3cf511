"""`concept score`: registry concepts -> statistics run -> selection -> draft mapping + MLflow run.

The maths lives in governance.scoring.maths, the pipeline run in governance.scoring.statistics; this module
only wires them to the registry (through its Store API) and to MLflow, and refuses early (before
any minutes of sampling) on requests that cannot give a meaningful mapping.
"""
from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

from governance.common.hashing import sha256_file
from governance.common.jsonio import pretty_json
from governance.formats.mapping import EvidenceRef, MappingSpec, Selection
from governance.scoring.heatmap import HEATMAP_NAME, render_heatmap
from governance.scoring.maths import AssignedGate, FeatureChoice
from governance.scoring.selection import (
    ChildRun, ScoringError, Selected, Selector, assigned_latents, choose, entries_by_timestep,
)
from governance.scoring.statistics import ConceptPrompts, ConceptStats, collect_concept_stats


class ScoreRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    concept: str
    sae: str
    tau: float | None = Field(default=None, gt=0, lt=100)
    top_n: int | None = Field(default=None, gt=0)
    # "saeuron": the paper's score and gates; "specific": governance.scoring.specificity;
    # "assigned": a concept-supervised SAE's latents of the concept (governance.sae.supervision).
    method: Literal["saeuron", "specific", "assigned"] = "saeuron"
    gate_quantile: float = Field(default=1.0, gt=0, le=1)
    # "assigned": the paper's gates, or gate 0 ("fired": wherever the latent fires).
    assigned_gate: AssignedGate = "paper"
    gamma: float = -1.0
    steps: int = Field(default=50, gt=0)
    guidance: float = 9.0
    seed: int = 0
    model: str | None = None
    batch_size: int = Field(default=8, gt=0)
    device: str = "cpu"
    track: bool = True

    @model_validator(mode="after")
    def _one_rule(self) -> ScoreRequest:
        if self.tau is not None and self.top_n is not None:
            raise ValueError("give --tau or --top-n, not both")
        if self.assigned_gate != "paper" and self.method != "assigned":
            raise ValueError("--assigned-gate applies to --method assigned only")
        if self.method == "specific" and self.tau is not None:
            raise ValueError("--method specific takes --top-n, not --tau")
        if self.method == "assigned":
            if self.tau is not None or self.top_n is not None:
                raise ValueError("--method assigned takes the SAE's latents of the concept, not --tau or --top-n")
            return self
        if self.tau is None and self.top_n is None:
            if self.method == "specific":
                raise ValueError("--method specific needs --top-n")
            self.tau = 99.99
        return self


@dataclass
class ScoreOutcome:
    mapping: Any  # registry.records.MappingRecord
    spec: MappingSpec
    choices: list[FeatureChoice]
    scores: torch.Tensor  # [n, T]
    stats: ConceptStats
    mlflow_run_id: str | None
    heatmap_sha256: str | None
    skipped_concepts: list[str]


def sae_base_model_hash(sae_rec: Any) -> str | None:
    cfg = sae_rec.config or {}
    return sae_rec.base_model_hash or (cfg.get("saegov") or {}).get("base_model_hash")


def default_model_for(store: Any, sae_rec: Any) -> str | None:
    """The SAE's registered base model source, else the trained toy world."""
    if sae_rec.base_model:
        from registry.errors import NotFound

        try:
            return store.get_base_model(sae_rec.base_model).source
        except NotFound:  # fall through to the toy world
            pass
    from governance.toyworld.paths import embedded_model

    return embedded_model()


def load_in_force(store: Any, mapping_ids: list[int], concept: str, sae_ref: str, steps: int,
                  device: str = "cpu") -> Any:
    """The mappings a sweep holds in force (`concept sweep --with-mapping`), checked by the
    registry and with their SAEs loaded (weights hash-checked): a
    governance.scoring.sweep.InForceBlocking, or a refusal before any sampling."""
    from governance.formats.blocklist import BlockedConcept
    from governance.formats.sweep import InForce
    from governance.sae.model import TopKSAE
    from governance.scoring.sweep import InForceBlocking
    from governance.tracking.artifacts import sae_folder

    held = InForceBlocking()
    if not mapping_ids:
        return held
    sae_rec = store.get_sae(sae_ref)
    base = sae_base_model_hash(sae_rec)
    for rec in store.check_in_force(mapping_ids, concept, sae_rec.hook_point):
        other = store.get_sae(rec.sae_id)
        theirs = sae_base_model_hash(other)
        if base != theirs:  # also when only one of them records its base model: fail closed
            raise ScoringError(f"mapping {rec.id} is on SAE {other.ref}, trained on base model "
                               f"{(theirs or 'unrecorded')[:12]}, SAE {sae_rec.ref} on {(base or 'unrecorded')[:12]}")
        if rec.num_steps != steps:
            raise ScoringError(f"mapping {rec.id} was scored for {rec.num_steps} steps and the sweep runs {steps}: "
                               f"give --steps {rec.num_steps}")
        held.saes[other.hook_point] = TopKSAE.load(sae_folder(other), expected_sha256=other.weights_sha256,
                                                   device=device)
        held.entries.append(BlockedConcept(concept=rec.concept, kind=rec.concept_kind, mapping_id=rec.id,
                                           hook_point=other.hook_point, gamma=rec.gamma, scheduler=rec.scheduler,
                                           num_steps=rec.num_steps, timesteps=rec.timesteps or {}))
        held.refs.append(InForce(mapping_id=rec.id, hook_point=other.hook_point, spec_sha256=rec.spec_sha256))
    return held


def plan(store: Any, req: ScoreRequest) -> tuple[Any, list[ConceptPrompts], list[str]]:
    """(target record, [target, peers...] prompts, skipped peer names) or a one-line refusal."""
    target = store.get_concept(req.concept)
    if not target.prompts:
        raise ScoringError(f"concept {target.name!r} has no prompts; register it with `concept add --prompts`")
    same_kind = [c for c in store.list_concepts(kind=target.kind) if c.name != target.name]
    if not same_kind:
        raise ScoringError(f"concept {target.name!r} is the only concept of kind {target.kind!r}; "
                           "scoring contrasts it with the other concepts of its kind")
    peers = [c for c in same_kind if c.prompts]
    skipped = [c.name for c in same_kind if not c.prompts]
    if not peers:
        raise ScoringError(f"no other concept of kind {target.kind!r} has prompts ({', '.join(skipped)}); "
                           "register them with `concept add --prompts`")
    concepts = [ConceptPrompts(target.name, tuple(target.prompts))]
    concepts += [ConceptPrompts(c.name, tuple(c.prompts)) for c in peers]
    return target, concepts, skipped


def build_spec(req: ScoreRequest, scheduler: str, choices: list[FeatureChoice], timesteps: list[int],
               evidence: list[dict[str, Any]]) -> MappingSpec:
    per_t = entries_by_timestep(choices, timesteps)
    if req.method == "specific":
        selection = Selection(rule="specific", top_n=req.top_n)
    elif req.method == "assigned":
        selection = Selection(rule="assigned", top_n=len({c.feature for c in choices}))
    elif req.top_n is None:
        selection = Selection(rule="tau", tau=req.tau)
    else:
        selection = Selection(rule="top_n", top_n=req.top_n)
    return MappingSpec(concept=req.concept, selection=selection, gamma=req.gamma, scheduler=scheduler,
                       num_steps=req.steps, timesteps=per_t, evidence=[EvidenceRef(**e) for e in evidence])


def log_child_runs(tracker: Any, children: list[ChildRun]) -> None:
    """One nested run per point of an operating-point search, each with its own params and
    metrics, so that MLflow's compare view charts the search."""
    for c in children:
        child = tracker.child(c.kind, run_name=c.name, tags=c.tags)
        try:
            child.log_params(c.params)
            child.log_metrics(c.metrics)
        except BaseException:
            child.finish("FAILED")
            raise
        child.finish("FINISHED")


def score_concept(store: Any, req: ScoreRequest, actor: str | None,
                  progress: Callable[[int, int], None] | None = None,
                  selector: Selector | None = None) -> ScoreOutcome:
    """Score `req.concept` against the other concepts of its kind and store a draft mapping."""
    from governance.basemodel.loading import load_pipeline, model_folder_hash
    from governance.sae.model import TopKSAE
    from governance.tracking.artifacts import sae_folder

    store.check_actor(actor, "mapping.create")  # role and key: refused before minutes of sampling, not after
    target, concepts, skipped = plan(store, req)
    if req.track:
        from governance.tracking.runs import check_tracking

        check_tracking()  # an unreachable MLflow server is refused before loading anything
    sae_rec = store.get_sae(req.sae)
    sae = TopKSAE.load(sae_folder(sae_rec), expected_sha256=sae_rec.weights_sha256,
                       device=req.device)
    supervision = None
    if req.method == "assigned" or getattr(selector, "needs_assigned", False):
        if not sae_rec.cfg_sha256:
            raise ScoringError(f"SAE {sae_rec.ref} has no recorded cfg.json hash: its assignment cannot be trusted")
        supervision = {"latents": assigned_latents(sae, target.name),  # refused before minutes of sampling
                       "cfg_sha256": sae_rec.cfg_sha256}
    model = req.model or default_model_for(store, sae_rec)
    if model is None:
        raise ScoringError("give --model (the SAE names no registered base model and no toy world is installed)")
    pipe, folder = load_pipeline(model, device=req.device)
    model_hash = model_folder_hash(folder)
    expected = sae_base_model_hash(sae_rec)
    if expected and expected != model_hash:
        raise ScoringError(f"model {model!r} (sha256 {model_hash[:12]}) is not the base model SAE "
                           f"{sae_rec.ref} was trained on ({expected[:12]})")

    tracker = None
    if req.track:
        from governance.tracking.runs import Tracker

        # Started before the statistics: the run is where to watch minutes of sampling, and a
        # sweep's points become its child runs.
        tracker = Tracker("concept-score", model_hash, run_name=f"score {target.name} on {sae_rec.ref}",
                          actor=actor, tags={"saegov.concept": target.name, "saegov.sae_id": str(sae_rec.id),
                                             "saegov.sae_ref": sae_rec.ref})
    try:
        need_peaks = req.method == "specific" or bool(getattr(selector, "needs_peaks", False))
        stats = collect_concept_stats(pipe, sae, sae_rec.hook_point, concepts, steps=req.steps,
                                      guidance=req.guidance, seed=req.seed, batch_size=req.batch_size,
                                      progress=progress, peaks=need_peaks)
        extra = Selected()
        if selector is not None:
            # An operating-point search (concept sweep): it picks the rule and gamma from evidence.
            extra = selector(pipe, sae, sae_rec.hook_point, stats, target.kind)
            req = req.model_copy(update={"tau": extra.tau,
                                         "top_n": extra.top_n if extra.method != "assigned" else None,
                                         "gamma": extra.gamma, "method": extra.method,
                                         "gate_quantile": (extra.params.get("sweep") or {}).get("gate_quantile", 1.0),
                                         "assigned_gate": (extra.params.get("sweep") or {}).get("assigned_gate", "paper")
                                         if extra.method == "assigned" else "paper"})
        choices, scores = choose(stats, gamma=req.gamma, method=req.method, tau=req.tau, top_n=req.top_n,
                                 gate_quantile=req.gate_quantile, assigned_gate=req.assigned_gate,
                                 assigned=supervision["latents"] if supervision and req.method == "assigned" else None)
    except BaseException:
        if tracker is not None:
            tracker.finish("FAILED")
        raise
    scheduler = type(pipe.scheduler).__name__
    params = {
        "request": req.model_dump(mode="json"), "base_model": model, "base_model_hash": model_hash,
        "sae": {"id": sae_rec.id, "ref": sae_rec.ref, "weights_sha256": sae_rec.weights_sha256,
                "hook_point": sae_rec.hook_point, "n_latents": sae_rec.n_latents, "k": sae_rec.k},
        "concept": {"name": target.name, "kind": target.kind, "prompts": len(target.prompts)},
        "contrast_concepts": ",".join(c.name for c in concepts[1:]), "skipped_concepts": ",".join(skipped),
        "scheduler": scheduler, "scheduler_config": json.dumps(dict(pipe.scheduler.config), default=str),
        "timesteps": len(stats.timesteps),
        **({"assigned": supervision} if supervision else {}),
        **extra.params,
    }
    evidence: list[dict[str, Any]] = []
    run_id = heat_sha = None
    try:
        with tempfile.TemporaryDirectory() as tmp:
            art = Path(tmp)
            render_heatmap(art / HEATMAP_NAME, scores, stats.timesteps, choices,
                           f"{target.name} vs {len(concepts) - 1} {target.kind} concepts, SAE {sae_rec.ref}")
            heat_sha = sha256_file(art / HEATMAP_NAME)
            if tracker is not None:
                run_id = tracker.run_id
                tracker.log_params(params)
                per_t = [sum(1 for c in choices if c.timestep == t) for t in stats.timesteps]
                tracker.log_metrics({"n_selected": len(choices), "n_unique_features": len({c.feature for c in choices}),
                                     "max_score": float(scores.max()), "mean_selected_per_timestep": sum(per_t) / len(per_t),
                                     **extra.metrics})
                log_child_runs(tracker, extra.children)
                evidence = [{"kind": "mlflow_run", "ref": run_id},
                            {"kind": "score_heatmap", "ref": f"runs:/{run_id}/scoring/{HEATMAP_NAME}", "sha256": heat_sha}]
            for name, data in extra.artifacts.items():
                (art / name).write_bytes(data)
            evidence += extra.evidence
            # The generation settings the statistics were made with: a deployment defaults to them.
            evidence.append({"kind": "scoring_params", "ref": json.dumps(
                {"guidance": req.guidance, "steps": req.steps, "seed": req.seed, "scheduler": scheduler,
                 # the gate rule, named beside the gate values it produced (0 with "fired")
                 **({"assigned_gate": req.assigned_gate} if req.method == "assigned" else {})},
                sort_keys=True)})
            spec = build_spec(req, scheduler, choices, stats.timesteps, evidence)
            (art / "mapping.json").write_text(pretty_json(spec.to_json_dict()))
            if tracker is not None:
                tracker.log_artifacts(art, "scoring")
        mapping = store.create_mapping(sae_rec.id, target.name, spec, actor)
        if tracker is not None:
            tracker.set_tags({"saegov.mapping_id": mapping.id})
            tracker.finish("FINISHED")
    except BaseException:
        if tracker is not None:
            tracker.finish("FAILED")
        raise
    return ScoreOutcome(mapping=mapping, spec=spec, choices=choices, scores=scores, stats=stats,
                        mlflow_run_id=run_id, heatmap_sha256=heat_sha, skipped_concepts=skipped)
