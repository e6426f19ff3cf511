"""`saegov sae train` end to end: verify the dataset, train (data-parallel under torchrun), save
the SAE folder, track in MLflow, register the version in the registry with its lineage.

Rank 0 alone writes files, talks to MLflow and to the registry; other ranks only train.
"""
from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from governance.common.hashing import sha256_file
from governance.common.jsonio import pretty_json
from governance.common.timeutil import stamp
from governance.common.workspace import workspace_home
from governance.formats.sae_config import CFG_NAME, SaeConfig
from governance.formats.supervision import CFG_KEY as SUPERVISION_KEY
from governance.formats.validation import check_name
from governance.sae.data import open_dataset
from governance.sae.supervision import ConceptLabels, SupervisionRefused, plan_supervision
from governance.sae.trainer import (
    TrainConfig, TrainRefused, TrainResult, dist_info, init_distributed_from_env, train_sae,
)

TRAINING_NAME = "training.json"  # lineage + metrics next to the weights; ignored by SAE loaders
ARCHITECTURE = "batch-topk"


@dataclass
class TrainOutcome:
    folder: Path | None
    weights_sha256: str | None
    result: TrainResult
    dataset_sha256: str
    base_model_hash: str | None
    hookpoint: str
    mlflow_run_id: str | None = None
    mlflow_model_version: str | None = None
    mlflow_model_name: str | None = None
    registry_record: Any = None

    def summary(self) -> dict[str, Any]:
        rec = self.registry_record
        return {
            "folder": str(self.folder) if self.folder else None,
            "weights_sha256": self.weights_sha256,
            "hookpoint": self.hookpoint,
            "dataset_sha256": self.dataset_sha256,
            "base_model_hash": self.base_model_hash,
            "steps": self.result.steps,
            "tokens": self.result.tokens,
            "seconds": round(self.result.seconds, 3),
            "lr": self.result.lr,
            "metrics": self.result.final,
            "mlflow_run_id": self.mlflow_run_id,
            "mlflow_model_version": self.mlflow_model_version,
            "mlflow_model_name": self.mlflow_model_name,
            "sae_id": getattr(rec, "id", None),
            "sae_ref": getattr(rec, "ref", None),
        }


def default_name(hookpoint: str) -> str:
    """The registry name of an SAE version when `--name` is not given."""
    return f"sae-{hookpoint}"


def mlflow_model_name(base_model_hash: str | None, hookpoint: str) -> str:
    """The MLflow registered model of SAEs of one base model at one hook point: SAEs of other
    base models at the same block are other models, never versions of this one. The hash, not
    a registry name, so that the name is the same whether or not the base model is registered."""
    import re

    base = base_model_hash[:12] if base_model_hash else "unknown-base-model"
    # MLflow refuses '/' and ':' in names; '@' would read as an alias in models:/ URIs.
    return re.sub(r"[^A-Za-z0-9._-]", "-", f"sae-{base}-{hookpoint}")[:256]


def default_out(name: str) -> Path:
    base = workspace_home() / "saes" / f"{name}-{stamp()}"
    out, n = base, 1
    while out.exists():  # two trainings in the same second must not collide
        n += 1
        out = base.with_name(f"{base.name}-{n}")
    return out


def _check_out(out: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise TrainRefused(f"output folder {out} exists and is not empty; refusing to overwrite")


class SuperviseRequest(BaseModel):
    """`sae train --supervise`: the registry concepts whose prompts label the rows, and the
    supervision's settings (governance.sae.supervision)."""

    model_config = ConfigDict(extra="forbid")

    concepts: list[str] = Field(min_length=1)
    latents_per_concept: int = Field(default=1, gt=0)
    # Measured on the toy world (docs/evaluation.md): 1 / 10 did better than 10 / 100 on 5 of the
    # 7 shapes and styles.
    assign_weight: float = Field(default=1.0, ge=0, le=1e6, allow_inf_nan=False)
    decorrelation_weight: float = Field(default=10.0, ge=0, le=1e6, allow_inf_nan=False)


def train_and_record(activations: str | Path, cfg: TrainConfig, *, out: str | Path | None = None,
                     name: str | None = None, actor: str | None = None, use_mlflow: bool = True,
                     register: bool = True, store: Any = None,
                     on_step: Callable[[int, int, dict[str, float]], None] | None = None,
                     supervise: SuperviseRequest | None = None) -> TrainOutcome:
    created_pg = init_distributed_from_env()
    try:
        outcome = _train_and_record(activations, cfg, out, name, actor, use_mlflow, register, store, on_step,
                                    supervise)
        if created_pg:
            import torch.distributed as dist

            # Rank 0 still saves, measures and registers: the other ranks wait for it rather than
            # tear the process group down under it (gloo aborts a process whose peer left early).
            dist.barrier()
        return outcome
    finally:
        if created_pg:
            import torch.distributed as dist

            dist.destroy_process_group()


def _train_and_record(activations: str | Path, cfg: TrainConfig, out: str | Path | None, name: str | None,
                      actor: str | None, use_mlflow: bool, register: bool, store: Any,
                      on_step: Callable[[int, int, dict[str, float]], None] | None,
                      supervise: SuperviseRequest | None) -> TrainOutcome:
    rank, _world = dist_info()
    if rank == 0 and use_mlflow:
        from governance.tracking.runs import check_tracking

        check_tracking()  # an unreachable server is refused before hashing the shards, not after training
    ds = open_dataset(activations)  # every rank verifies what it is about to read
    name = check_name(name or default_name(ds.hookpoint), "SAE")  # refused before training, not after
    lead = rank == 0
    out_path = Path(out) if out else default_out(name)
    model_name = mlflow_model_name(ds.base_model_hash, ds.hookpoint)
    if lead:
        _check_out(out_path)
        if register:
            store = store or _open_store()
            _check_may_register(store, actor)  # fail before hours of training, not after
    spec = targets = None
    if supervise is not None:
        # Every rank labels its rows from the same registry prompts; refused before training.
        spec, targets = _plan_supervision(store or _open_store(), ds, cfg, supervise)
    tracker = None
    if lead and use_mlflow:
        from governance.tracking.runs import Tracker, activation_dataset_ref

        tracker = Tracker("sae-train", ds.base_model_hash, run_name=f"train {name}", actor=actor, tags={
            "saegov.hookpoint": ds.hookpoint, "saegov.activation_dataset_sha256": ds.manifest_sha256,
            **({"saegov.supervised_by": ",".join(c.name for c in spec.concepts)} if spec else {}),
        })
        # The same dataset identity as its collection run's: the UI links the two runs.
        tracker.log_dataset_input(activation_dataset_ref(ds.folder, ds.manifest, ds.manifest_sha256), "training")
        tracker.log_params({"train": cfg.model_dump(mode="json"), "hookpoint": ds.hookpoint,
                            "activation_dataset_sha256": ds.manifest_sha256,
                            "activation_dataset": str(Path(activations).resolve()),
                            "base_model_hash": ds.base_model_hash, "dataset_rows": ds.total_rows,
                            "world_size": _world,
                            **({"supervision": spec.model_dump(mode="json")} if spec else {})})

    def step_cb(step: int, total: int, m: dict[str, float]) -> None:
        if tracker is not None:
            tracker.log_metrics(m, step)
        if on_step is not None:
            on_step(step, total, m)

    try:
        result = train_sae(ds, cfg, on_step=step_cb, supervision=targets)
        if spec is not None:
            # The assignment travels in cfg.json (hashed, signed into deployments), beside the
            # reference keys that reference loaders read.
            result.sae.cfg = SaeConfig(**{**result.sae.cfg.model_dump(), SUPERVISION_KEY: spec.model_dump(mode="json")})
        outcome = TrainOutcome(folder=None, weights_sha256=None, result=result,
                               dataset_sha256=ds.manifest_sha256, base_model_hash=ds.base_model_hash,
                               hookpoint=ds.hookpoint)
        if not lead:
            return outcome
        sha = result.sae.save(out_path)
        outcome.folder, outcome.weights_sha256 = out_path.resolve(), sha
        lineage = {
            "hookpoint": ds.hookpoint, "base_model_hash": ds.base_model_hash,
            "activation_dataset_sha256": ds.manifest_sha256, "weights_sha256": sha,
            "train": cfg.model_dump(mode="json"), "resolved": {"lr": result.lr, "dead_tokens": result.dead_tokens},
            "steps": result.steps, "tokens": result.tokens, "seconds": result.seconds, "metrics": result.final,
            "mlflow_run_id": tracker.run_id if tracker else None,
            "supervised_by": [c.name for c in spec.concepts] if spec else [],
        }
        (out_path / TRAINING_NAME).write_text(pretty_json(lineage))
        if tracker is not None:
            tracker.log_params({"resolved.lr": result.lr, "resolved.dead_tokens": result.dead_tokens,
                                "sae.n_latents": result.sae.n_latents})
            tracker.log_metrics({f"final_{k}": v for k, v in result.final.items()}, result.steps)
            tracker.flush()
            tracker.log_artifacts(out_path, "sae")
            outcome.mlflow_run_id = tracker.run_id
            if register:  # an unregistered experiment must not become the `candidate`
                outcome.mlflow_model_version = tracker.register_model_version(
                    model_name, "sae", alias="candidate",
                    tags={"weights_sha256": sha, "activation_dataset_sha256": ds.manifest_sha256},
                    model_tags={"saegov.base_model_hash": ds.base_model_hash or "", "saegov.hookpoint": ds.hookpoint},
                    description=f"SAEs at {ds.hookpoint} of base model {ds.base_model_hash or '(unknown)'}")
                outcome.mlflow_model_name = model_name
        if register:
            outcome.registry_record = register_trained_sae(store, outcome, name, actor, cfg)
            if tracker is not None:
                rec = outcome.registry_record
                ids = {"saegov.sae_id": rec.id, "saegov.sae_ref": rec.ref}
                tracker.set_tags(ids)
                if outcome.mlflow_model_version:
                    tracker.set_model_version_tags(model_name, outcome.mlflow_model_version, ids)
        if tracker is not None:
            tracker.finish("FINISHED")
        return outcome
    except BaseException:
        if tracker is not None:
            tracker.finish("FAILED")
        raise


def _plan_supervision(store: Any, ds: Any, cfg: TrainConfig, req: SuperviseRequest) -> tuple[Any, Any]:
    from registry.errors import NotFound

    concepts = []
    for cname in dict.fromkeys(req.concepts):
        try:
            rec = store.get_concept(cname)
        except NotFound:
            raise SupervisionRefused(f"unknown concept {cname!r}; register it with `concept add --prompts`") from None
        if not rec.prompts:
            raise SupervisionRefused(f"concept {cname!r} has no prompts; register it with `concept add --prompts`")
        concepts.append(ConceptLabels(rec.name, rec.kind, tuple(rec.prompts)))
    n_latents = cfg.sae_config(ds.d_in, ds.hookpoint).n_latents
    return plan_supervision(ds.manifest.prompts, concepts, n_latents=n_latents, k=cfg.k,
                            latents_per_concept=req.latents_per_concept, assign_weight=req.assign_weight,
                            decorrelation_weight=req.decorrelation_weight)


def _check_may_register(store: Any, actor: str | None) -> None:
    store.check_actor(actor, "sae.register")


def _open_store() -> Any:
    from registry.store import Store

    return Store.open()


def register_trained_sae(store: Any, outcome: TrainOutcome, name: str, actor: str | None,
                         cfg: TrainConfig) -> Any:
    """Registry integration: a new SAE version with sha256, metrics and lineage; the store
    writes the audit event (`sae.register`) in the same transaction."""
    assert outcome.folder is not None and outcome.weights_sha256 is not None
    sae = outcome.result.sae
    base_model = None
    if outcome.base_model_hash:
        # The registry links base models by name; find the one with this content hash.
        for bm in store.list_base_models():
            if bm.content_hash == outcome.base_model_hash:
                base_model = bm.name
                break
    config = json.loads((outcome.folder / CFG_NAME).read_text())
    # Kept with the version even when the base model is not (yet) registered by name.
    config["saegov"] = {"base_model_hash": outcome.base_model_hash, "train": cfg.model_dump(mode="json"),
                        "resolved_lr": outcome.result.lr, "dead_tokens": outcome.result.dead_tokens}
    return store.register_sae_version(
        name=name, hook_point=outcome.hookpoint, d_in=sae.d_in, n_latents=sae.n_latents, k=sae.k,
        architecture=ARCHITECTURE, config=config,
        # By content: the MLflow copy (any machine with the tracking URL can fetch and hash-check it);
        # a local folder only when nothing was tracked.
        weights_uri=f"runs:/{outcome.mlflow_run_id}/sae" if outcome.mlflow_run_id else outcome.folder.as_uri(),
        weights_sha256=outcome.weights_sha256, cfg_sha256=sha256_file(outcome.folder / CFG_NAME),
        actor=actor, metrics={k: float(v) for k, v in outcome.result.final.items()},
        base_model=base_model, activation_dataset_hash=outcome.dataset_sha256,
        mlflow_run_id=outcome.mlflow_run_id, mlflow_model_version=outcome.mlflow_model_version,
    )
