"""`saegov deploy promote`: the one way a deployment becomes `production`.

A promotion needs a passing verification of exactly what the alias will serve (the MLflow Model
version's own copy of the deployment, not a local folder that may differ) against the registry,
and a recorded evaluation of that deployment; the registry records it (audited, signed like any
action), and only then does MLflow's alias move. An alias moved in MLflow by hand is visible:
`saegov deploy status` compares it with the registry's last promotion.
"""
from __future__ import annotations

import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from governance.enforcement.deployment import DeploymentError, verify_deployment
from governance.tracking.deployment_model import model_name
from governance.common.errors import UsageError


@dataclass
class Promotion:
    record: Any
    verified_manifest_sha256: str
    evaluation: Any
    mlflow_model: str | None


def _evaluation_for(store: Any, deployment_id: int, evaluation_id: int | None) -> Any:
    evaluations = store.list_evaluations(deployment_id)
    if evaluation_id is not None:
        match = [e for e in evaluations if e.id == evaluation_id]
        if not match:
            raise DeploymentError(f"evaluation {evaluation_id} is not a recorded evaluation of deployment "
                                  f"{deployment_id}")
        return match[0]
    if not evaluations:
        raise DeploymentError(f"deployment {deployment_id} has no recorded evaluation: run `saegov eval --deployment "
                              "FOLDER --actor NAME` first")
    return evaluations[-1]


_ALIAS = re.compile(r"[A-Za-z_][A-Za-z0-9_-]{0,254}")


def check_alias(alias: str) -> str:
    """An alias MLflow accepts and that cannot be read as a version (`v3`) or `latest`."""
    if not _ALIAS.fullmatch(alias) or re.fullmatch(r"[vV]\d+", alias) or alias.lower() == "latest":
        raise UsageError(f"alias {alias!r}: use letters, digits, '_' and '-', starting with a letter "
                               "(not 'latest' or v<number>)")
    return alias


def promote(store: Any, deployment_id: int, actor: str | None, alias: str = "production",
            evaluation_id: int | None = None) -> Promotion:
    check_alias(alias)
    store.check_actor(actor, "deployment.promote")  # role and key, before any download
    _require_intact(store)
    dep = store.get_deployment(deployment_id)
    evaluation = _evaluation_for(store, dep.id, evaluation_id)
    short = policy_shortfalls(store.approval_policy(), evaluation.metrics)
    if short:
        raise DeploymentError(f"evaluation {evaluation.id} of deployment {dep.id} does not meet the approval policy: "
                              f"{short[0]}" + (f" (and {len(short) - 1} more)" if len(short) > 1 else ""))
    model_uri = (dep.details or {}).get("mlflow_model")
    if model_uri and not model_uri.startswith(f"models:/{model_name(dep.blocklist)}/"):
        raise DeploymentError(f"deployment {dep.id} names {model_uri}, not a version of {model_name(dep.blocklist)}")
    tmp = Path(tempfile.mkdtemp(prefix="saegov-promote-"))
    try:
        if model_uri:
            from governance.tracking.deployment_model import fetch_deployment

            folder = fetch_deployment(model_uri, tmp)
        else:
            from governance.common.workspace import workspace_path

            folder = workspace_path(dep.path)
            if not folder.is_dir():
                raise DeploymentError(f"deployment {dep.id} has no MLflow Model and its folder {dep.path} is gone")
        verified = verify_deployment(folder, store=store, check_registry=True)
        if verified.manifest_sha256 != dep.manifest_sha256:
            raise DeploymentError(f"the deployment at {model_uri or dep.path} is not deployment {dep.id} "
                                  "(its manifest differs from the recorded one)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    name = version = None
    if model_uri:
        name, _, version = model_uri[len("models:/"):].rpartition("/")
        _client().get_model_version(name, version)  # reachable and still there, before the record
    record = store.promote_deployment(deployment_id=dep.id, evaluation_id=evaluation.id, alias=alias, actor=actor,
                                      mlflow_model=name, mlflow_version=version)
    if name and version:
        try:
            _client().set_registered_model_alias(name, alias, version)
        except Exception as exc:  # noqa: BLE001 - the registry already records it; say how to finish
            from governance.common.errors import first_line

            raise DeploymentError(f"promotion {record.id} is recorded, but MLflow's alias {alias!r} was not moved "
                                  f"({first_line(exc)}); run `saegov deploy status` and promote again") from None
    return Promotion(record=record, verified_manifest_sha256=verified.manifest_sha256, evaluation=evaluation,
                     mlflow_model=f"models:/{name}@{alias}" if name else None)


def policy_shortfalls(policy: Any, metrics: dict[str, Any]) -> list[str]:
    """Where the measured deployment falls below the approval policy's floors (the ones each
    mapping's sweep evidence had to meet): a deployment whose concepts together remove less, or
    keep less, than the policy asks of each alone does not go to production."""
    mins = policy.minimums() if policy is not None else {}
    out = []
    for concept, m in sorted(metrics.items()):
        for key, floor in mins.items():
            got = m.get(key) if isinstance(m, dict) else None
            if got is None or got < floor:
                shown = "not measured" if got is None else f"{100 * got:.1f} %"
                out.append(f"{concept} {key} {shown}, below the {100 * floor:.1f} % of approval policy v{policy.version}")
    return out


def _require_intact(store: Any) -> None:
    """The deployment, evaluation and promotion rows a promotion reads must be what the audit
    log says (a row inserted or edited in the database is refused, not trusted)."""
    wrong = store.verify_state()
    if wrong:
        raise DeploymentError(f"the registry's tables do not agree with its audit log ({wrong[0]}"
                              + (f", and {len(wrong) - 1} more" if len(wrong) > 1 else "")
                              + "); run `saegov audit verify`")


def _client() -> Any:
    from mlflow.tracking import MlflowClient

    from governance.tracking.runs import tracking_uri

    uri = tracking_uri()
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def alias_status(store: Any, alias: str = "production") -> list[dict[str, Any]]:
    """Per registered deployment model: the version the registry last promoted to `alias`, and
    the version MLflow's alias points at now (they differ when someone moved it by hand)."""
    from mlflow.exceptions import MlflowException

    check_alias(alias)
    _require_intact(store)
    latest: dict[str, Any] = {}
    for p in store.list_promotions(alias):
        if p.mlflow_model:
            latest[p.mlflow_model] = p
    client = _client()
    # Every deployment model in MLflow carrying the alias, promoted or not: an alias set by hand
    # on a model the registry never promoted is a mismatch too.
    prefix = model_name("")
    carrying: dict[str, str] = {}
    token = None
    while True:
        page = client.search_registered_models(filter_string=f"name LIKE '{prefix}%'", page_token=token)
        for rm in page:
            aliases = rm.aliases or {}
            if alias in aliases:
                carrying[rm.name] = str(aliases[alias])
        token = page.token
        if not token:
            break
    out = []
    for name in sorted(set(latest) | set(carrying)):
        p = latest.get(name)
        actual = carrying.get(name)
        if actual is None and p is not None:
            try:
                actual = str(client.get_model_version_by_alias(name, alias).version)
            except MlflowException:
                actual = None
        out.append({"model": name, "alias": alias, "promoted_version": p.mlflow_version if p else None,
                    "mlflow_version": actual, "deployment_id": p.deployment_id if p else None,
                    "promotion_id": p.id if p else None, "promoted_by": p.promoted_by if p else None,
                    "ok": p is not None and str(actual) == str(p.mlflow_version)})
    return out
