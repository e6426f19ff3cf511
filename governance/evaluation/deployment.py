"""`saegov eval --deployment DIR`: UA / IRA / CRA of a deployment on the toy world, with a report.

The deployment folder is itself a plain diffusers folder, so the "before" pipeline is that folder
loaded without enforcement: before and after differ only by the blocklist, never by weights.
"""
from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from governance.common.errors import GovernanceError, first_line
from governance.evaluation.firing import firing_rates
from governance.evaluation.metrics import EVAL_SEEDS, eval_jobs, generate_jobs, judge, unlearning_metrics
from governance.formats.sweep import sweep_header
from governance.toyworld.grammar import ToyPrompt, is_toy_concept

if TYPE_CHECKING:
    from governance.evaluation.attack import AttackSettings
    from governance.formats.trace import Trace

Progress = Callable[[str, int, int], None]
REPORT_NAME = "report.html"


class EvalError(GovernanceError):
    """An evaluation request that cannot be honoured; one line for the CLI."""


@dataclass
class DeploymentEval:
    deployment: str
    blocklist: str
    targets: list[str]
    seeds: tuple[int, ...]
    steps: int
    guidance: float
    jobs: list[tuple[ToyPrompt, int]]
    before: list[np.ndarray]
    after: list[np.ndarray]
    metrics: dict[str, dict[str, Any]]
    metrics_before: dict[str, dict[str, Any]]
    report: Path | None = None
    mlflow_run_id: str | None = None
    attack: dict[str, Any] | None = None
    registry_checked: bool = False
    notes: list[str] = field(default_factory=list)
    deployment_id: int | None = None
    evaluation_id: int | None = None  # the registry's record of it (what a promotion names)

    def summary(self) -> dict[str, Any]:
        keep = ("kind", "UA", "IRA", "CRA", "CRA_by_kind", "n_target_images", "misses", "fired")
        return {
            "deployment": self.deployment, "blocklist": self.blocklist, "targets": self.targets,
            "seeds": list(self.seeds), "steps": self.steps, "guidance": self.guidance, "images": len(self.jobs),
            "metrics": {c: {k: m[k] for k in keep} for c, m in self.metrics.items()},
            "before": {c: {k: m[k] for k in ("UA", "IRA", "CRA")} for c, m in self.metrics_before.items()},
            "mean": mean_metrics(self.metrics), "report": str(self.report) if self.report else None,
            "mlflow_run_id": self.mlflow_run_id, "attack": self.attack,
            "registry_checked": self.registry_checked, "notes": self.notes,
            "deployment_id": self.deployment_id, "evaluation_id": self.evaluation_id,
        }


def mean_metrics(metrics: dict[str, dict[str, Any]]) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for key in ("UA", "IRA", "CRA"):
        vals = [m[key] for m in metrics.values() if m.get(key) is not None]
        out[key] = float(np.mean(vals)) if vals else None
    return out


def toy_targets(concepts: list[str]) -> list[str]:
    """The blocked concepts, refused unless every one is a toy-world concept (the only world with
    exact classifiers)."""
    if not concepts:
        raise EvalError("the deployment blocks no concept: nothing to evaluate")
    unknown = [c for c in concepts if not is_toy_concept(c)]
    if unknown:
        raise EvalError(f"eval measures on the toy world, whose classifiers do not know {', '.join(map(repr, unknown))}")
    return list(dict.fromkeys(concepts))


def grids_for(targets: list[str], metrics: dict[str, dict[str, Any]], jobs: list[tuple[ToyPrompt, int]],
              before: list[np.ndarray], after: list[np.ndarray]) -> list[tuple[str, np.ndarray, np.ndarray]]:
    from governance.evaluation.report import grid

    out = []
    for c in targets:
        attr = metrics[c]["attribute"]
        idx = [i for i, (p, s) in enumerate(jobs) if getattr(p, attr) == c and s == jobs[0][1]]
        out.append((f"prompts with '{c}' (seed {jobs[0][1]})", grid([before[i] for i in idx], 8),
                    grid([after[i] for i in idx], 8)))
    return out


def mapping_heatmaps(store: Any, mapping_ids: list[int]) -> list[tuple[str, bytes]]:
    """Each mapping's score heatmap from its MLflow evidence (verified against its recorded sha256)."""
    from governance.common.hashing import sha256_bytes
    from governance.tracking.artifacts import run_artifact_bytes
    from registry.errors import RegistryError

    out = []
    for mid in mapping_ids:
        try:
            m = store.get_mapping(mid)
        except RegistryError:  # not in this registry (an offline copy of the deployment): no heatmap
            continue
        for ev in m.evidence:
            if ev.get("kind") != "score_heatmap" or not str(ev.get("ref", "")).startswith("runs:/"):
                continue
            try:
                data = run_artifact_bytes(ev["ref"])
            except Exception:  # noqa: BLE001 - a missing artifact must not sink the report
                continue
            if not ev.get("sha256") or sha256_bytes(data) != ev["sha256"]:
                continue  # never show evidence that is not the recorded one
            out.append((f"mapping {m.id}: {m.concept} (SAE {m.sae_ref})", data))
    return out


def deployment_audit(store: Any, deployment_id: int | None, mapping_ids: list[int], blocklist: str) -> list[dict[str, Any]]:
    """The audit events that led to this deployment: its mappings' lifecycle and reviews, its
    blocklist, its build (subjects `mapping:ID`, `blocklist:NAME...`, `deployment:ID`)."""
    name = blocklist.partition("@")[0]
    subjects = [f"mapping:{m}" for m in mapping_ids] + [f"blocklist:{name}", f"blocklist:{name}@*"]
    if deployment_id is not None:
        subjects.append(f"deployment:{deployment_id}")
    events = [e for subject in subjects for e in store.audit_events(subject=subject)]
    return [e.to_json() for e in sorted({e.seq: e for e in events}.values(), key=lambda e: e.seq)]


def sweep_seed_clashes(evidence: dict[int, list[dict[str, Any]]], seeds: tuple[int, ...]) -> list[str]:
    """{mapping id: its evidence} -> the mappings whose operating point was swept on these very
    evaluation images (styled wording, same seeds): evaluating on them would grade the sweep on
    its own training data."""
    clashes: list[str] = []
    for mid, items in evidence.items():
        for ev in items:
            if ev.get("kind") != "sweep":
                continue
            header = sweep_header(ev.get("ref"))
            if header is None:
                continue
            shared = sorted(set(header.seeds) & set(seeds))
            if shared and header.styled:
                clashes.append(f"mapping {mid} (seeds {','.join(map(str, shared))})")
    return clashes


def evaluate_deployment(deployment: Path, *, store: Any | None, check_registry: bool = True,
                        trusted_keys_file: Path | None = None,
                        seeds: tuple[int, ...] = EVAL_SEEDS, report: Path | None = None, track: bool = True,
                        progress: Progress | None = None, attack: AttackSettings | None = None) -> DeploymentEval:
    """Generate the evaluation images without and with the blocklist, judge them, report;
    with `attack`, also the prompt attacks (governance.evaluation.attack) on the same seeds."""
    from governance.enforcement import EnforcedStableDiffusionPipeline
    from governance.enforcement.intervention import blocklist_suspended, enforcer_of

    enforced = EnforcedStableDiffusionPipeline.from_pretrained(deployment, store=store, check_registry=check_registry,
                                                               trusted_keys_file=trusted_keys_file)
    enforcer = enforcer_of(enforced)
    entries = enforcer.blocklist.spec.entries if enforcer else []
    targets = toy_targets([e.concept for e in entries])
    payload = enforced.saegov.manifest.payload
    d = payload.defaults
    mapping_ids = [e.mapping_id for e in entries if e.mapping_id is not None]
    if store is not None:
        clashes = sweep_seed_clashes({m: store.get_mapping(m, with_features=False).evidence for m in mapping_ids},
                                     seeds)
        if clashes:
            raise EvalError("the evaluation seeds were used to sweep the operating point of "
                            + "; ".join(clashes) + ": evaluate on other seeds")
    jobs = eval_jobs(seeds)
    tick = progress or (lambda stage, i, n: None)
    # "Before" is the same verified pipeline with its hooks off: only the blocklist differs.
    with blocklist_suspended(enforced):
        before = generate_jobs(enforced, jobs, d.num_inference_steps, d.guidance_scale,
                               progress=lambda i, n: tick("before", i, n))
    traces: list[Trace] = []
    after = generate_jobs(enforced, jobs, d.num_inference_steps, d.guidance_scale, progress=lambda i, n: tick("after", i, n),
                          traces=traces)
    metrics = unlearning_metrics(judge(after, jobs), targets)
    for c, fired in firing_rates(traces, [p for p, _ in jobs], targets).items():
        metrics[c]["fired"] = fired
    metrics_before = unlearning_metrics(judge(before, jobs), targets)
    result = DeploymentEval(deployment=str(deployment), blocklist=payload.blocklist, targets=targets, seeds=seeds,
                            steps=d.num_inference_steps, guidance=d.guidance_scale, jobs=jobs, before=before,
                            after=after, metrics=metrics, metrics_before=metrics_before,
                            registry_checked=enforced.saegov.registry_checked,
                            deployment_id=enforced.saegov.deployment_id,
                            notes=list(enforced.saegov.notes) + ([] if store is not None else [
                                "no registry: not checked whether a style sweep used these seeds"]))
    if attack is not None:
        from governance.evaluation.attack import attack_unlearning

        per_concept = attack_unlearning(enforced, targets, seeds=seeds, steps=d.num_inference_steps,
                                        guidance=d.guidance_scale, iterations=attack.iterations,
                                        n_tokens=attack.n_tokens, max_prompts=attack.max_prompts, lr=attack.lr,
                                        progress=lambda stage, i, n: tick(f"attack {stage}", i, n))
        summary = {c: {**{k: a.get(k) for k in ("UA_no_attack", "UA_paraphrase", "UA_whitebox", "n_paraphrase",
                                                "n_whitebox")},
                       # The same attack prompts without the blocklist: what the model itself misreads.
                       "UA_paraphrase_unprotected": (a.get("paraphrase") or {}).get("UA_unprotected"),
                       "UA_whitebox_unprotected": (a.get("whitebox") or {}).get("UA_unprotected")}
                   for c, a in per_concept.items()}
        result.attack = {"summary": summary, "per_concept": per_concept}
    if report is not None:
        result.report = write_eval_report(result, report, store, mapping_ids, enforced.saegov)
    if track:
        result.mlflow_run_id = _track(result, payload)
    return result


def write_eval_report(result: DeploymentEval, path: Path, store: Any | None, mapping_ids: list[int],
                      verified: Any) -> Path:
    from governance.evaluation.report import write_report

    p = verified.manifest.payload
    heatmaps = mapping_heatmaps(store, mapping_ids) if store is not None else []
    audit = deployment_audit(store, verified.deployment_id, mapping_ids, p.blocklist) if store is not None else []
    facts: dict[str, Any] = {
        "deployment": result.deployment, "blocklist": p.blocklist, "built by": p.built_by, "built at": p.built_at,
        "defaults": json.dumps(p.defaults.model_dump()), "images per pass": len(result.jobs),
        "seeds": ", ".join(map(str, result.seeds)),
        "approvals re-checked in the registry": "yes" if result.registry_checked else "no",
        **({"notes": "; ".join(result.notes)} if result.notes else {}),
        "before (no blocklist)": json.dumps({c: {k: None if v is None else round(100 * v, 1) for k, v in m.items()
                                                  if k in ("UA", "IRA", "CRA")} for c, m in result.metrics_before.items()}),
    }
    if result.attack:
        facts["prompt attack (UA)"] = json.dumps(result.attack["summary"], default=str)
    grids = grids_for(result.targets, result.metrics, result.jobs, result.before, result.after)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_report(path, title=f"saegov evaluation: {p.blocklist}", metrics=result.metrics, grids=grids,
                        heatmaps=heatmaps, audit=audit, facts=facts)


def _track(result: DeploymentEval, payload: Any) -> str:
    from governance.tracking.runs import Tracker

    with Tracker("evaluation", payload.base_model_hash, run_name=f"eval {payload.blocklist}",
                 tags={"saegov.blocklist": payload.blocklist, "saegov.deployment": result.deployment,
                       "saegov.saes": ",".join(f"{s.hook_point}={s.ref or s.id}" for s in payload.saes)}) as tr:
        tr.log_params({"deployment": result.deployment, "blocklist": payload.blocklist, "seeds": list(result.seeds),
                       "steps": result.steps, "guidance": result.guidance, "images": len(result.jobs),
                       "targets": ",".join(result.targets)})
        metrics: dict[str, float] = {}
        for c, m in result.metrics.items():
            for k in ("UA", "IRA", "CRA"):
                if m[k] is not None:
                    metrics[f"{k}.{c}"] = 100 * m[k]
            for k, v in (m.get("fired") or {}).items():
                if v is not None and not k.startswith("n_"):
                    metrics[f"fired.{k}.{c}"] = 100 * v
        for k, v in mean_metrics(result.metrics).items():
            if v is not None:
                metrics[f"{k}.mean"] = 100 * v
        if result.attack:
            for c, a in result.attack["summary"].items():
                for k, v in a.items():
                    if isinstance(v, (int, float)) and k.startswith("UA"):
                        metrics[f"attack.{k}.{c}"] = 100 * float(v)
        tr.log_metrics(metrics)
        with tempfile.TemporaryDirectory() as tmp:
            from PIL import Image

            art = Path(tmp)
            if result.report is not None:
                (art / REPORT_NAME).write_bytes(result.report.read_bytes())
            (art / "metrics.json").write_text(json.dumps(result.summary(), indent=2, default=str))
            for c, (_, before, after) in zip(result.targets, grids_for(result.targets, result.metrics, result.jobs,
                                                                       result.before, result.after)):
                Image.fromarray(before).save(art / f"grid-{c}-before.png")
                Image.fromarray(after).save(art / f"grid-{c}-after.png")
            tr.log_artifacts(tmp, "evaluation")
        return tr.run_id


def default_report_path(deployment: Path) -> Path:
    from governance.common.workspace import workspace_home
    from governance.formats.deployment import read_deployment_manifest

    name = read_deployment_manifest(deployment)[0].payload.blocklist.replace("@", "-v")
    return workspace_home() / "reports" / f"eval-{name}.html"


def run_evaluation(deployment: Path | str, *, offline: bool = False, trusted_keys_file: Path | None = None,
                   seeds: tuple[int, ...] = EVAL_SEEDS,
                   report: Path | None = None, track: bool = True, progress: Progress | None = None,
                   attack: AttackSettings | None = None, actor: str | None = None) -> DeploymentEval:
    """`saegov eval`: everything is checked (folder, report path, the actor's right to record it)
    before minutes of generation; the workspace's registry is consulted unless `offline`; with an
    `actor`, the evaluation is recorded there (the evidence `saegov deploy promote` needs).
    `deployment`: a folder, or an MLflow deployment model URI (its own copy is evaluated: what
    an alias pointing at it serves)."""
    from governance.tracking.artifacts import is_model_uri

    if is_model_uri(str(deployment)):
        from governance.tracking.deployment_model import fetched_deployment

        with fetched_deployment(str(deployment)) as folder:
            return _run_evaluation(folder, offline=offline, trusted_keys_file=trusted_keys_file, seeds=seeds,
                                   report=report, track=track, progress=progress, attack=attack, actor=actor)
    return _run_evaluation(Path(deployment), offline=offline, trusted_keys_file=trusted_keys_file, seeds=seeds,
                           report=report, track=track, progress=progress, attack=attack, actor=actor)


def _run_evaluation(deployment: Path, *, offline: bool, trusted_keys_file: Path | None, seeds: tuple[int, ...],
                    report: Path | None, track: bool, progress: Progress | None, attack: AttackSettings | None,
                    actor: str | None) -> DeploymentEval:
    from registry.store import Store

    if not Path(deployment).is_dir():
        raise EvalError(f"no deployment folder at {deployment}")
    store = None if offline else Store.open_if_present()
    if actor is not None:
        if store is None:
            raise EvalError("--actor records the evaluation in the registry, which needs one (not --offline)")
        store.check_actor(actor, "deployment.evaluate")  # refused before minutes of generation
    out = report or default_report_path(deployment)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise EvalError(f"cannot write the report to {out}: {exc.strerror or exc}") from None
    if track:
        from governance.tracking.runs import check_tracking

        check_tracking()  # an unreachable MLflow server is refused before minutes of generation
    try:
        result = evaluate_deployment(deployment, store=store, check_registry=not offline,
                                     trusted_keys_file=trusted_keys_file, seeds=seeds, report=out,
                                     track=track, progress=progress, attack=attack)
    except Exception as exc:
        if type(exc).__module__.startswith("mlflow."):  # the run failed after the report was written
            raise EvalError(f"MLflow: {first_line(exc)} (the report was written to {out})") from None
        raise
    if actor is not None and store is not None and result.deployment_id is not None:
        from governance.common.hashing import sha256_file

        metrics = {c: {k: m[k] for k in ("kind", "UA", "IRA", "CRA")} for c, m in result.metrics.items()}
        rec = store.record_evaluation(deployment_id=result.deployment_id, metrics=metrics, actor=actor,
                                      report_sha256=sha256_file(result.report) if result.report else None,
                                      mlflow_run_id=result.mlflow_run_id)
        result.evaluation_id = rec.id
    return result
