"""The state must agree with the log (issue 15): replay the audit events into the state they
imply, and compare it with the state tables, naming the first disagreement.

The hash chain (registry.audit) proves the log was not edited; this proves the tables that
decisions are read from (who is admin, which mapping is approved, which blocklist version is in
force, which deployment and key exist, which policy applies) were not edited behind the log's
back. A row changed by SQL is found even though the chain still verifies.

Compared: actors and roles; mappings (state, spec hash, creator); reviews (every field);
blocklist versions (state, content hash, entries); deployments (blocklist version, manifest
hash, builder); evaluations and promotions; signing keys (owner, revocation); approval policies (every version).
"""
from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from governance.common.hashing import sha256_text
from governance.common.jsonio import canonical_json
from registry.models import (
    Actor,
    ApprovalPolicyRow,
    BlocklistVersion,
    Deployment,
    DeploymentEvaluation,
    DeploymentPromotion,
    FeatureMapping,
    Review,
    SigningKey,
)


@dataclass
class Replayed:
    """The state the log implies."""

    actors: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> role, disabled
    mappings: dict[int, dict[str, Any]] = field(default_factory=dict)  # id -> state, spec_sha256, created_by
    reviews: dict[int, dict[str, Any]] = field(default_factory=dict)  # review id -> fields
    versions: dict[str, dict[str, Any]] = field(default_factory=dict)  # "name@v" -> state, content, entries
    deployments: dict[int, dict[str, Any]] = field(default_factory=dict)
    keys: dict[str, dict[str, Any]] = field(default_factory=dict)  # public key -> owner, revoked
    policies: dict[int, dict[str, Any]] = field(default_factory=dict)
    evaluations: dict[int, dict[str, Any]] = field(default_factory=dict)
    promotions: dict[int, dict[str, Any]] = field(default_factory=dict)


def replay(events: Iterable[tuple[int, str, str, str, str]]) -> Replayed:
    """(seq, actor, action, subject, payload JSON) in chain order -> the implied state."""
    r = Replayed()
    for _seq, actor, action, subject, payload in events:
        p = json.loads(payload)
        if action == "actor.add":
            r.actors[p["name"]] = {"role": p["role"], "disabled": False}
        elif action == "actor.role":
            r.actors.setdefault(p["name"], {"disabled": False})["role"] = p["role"]
        elif action == "actor.disable":
            r.actors.setdefault(p["name"], {})["disabled"] = True
        elif action == "mapping.create":
            r.mappings[int(p["id"])] = {"state": "draft", "spec_sha256": p["spec_sha256"], "created_by": actor}
        elif action.startswith("mapping.") and "review_id" in p:
            m = r.mappings.setdefault(int(p["mapping_id"]), {})
            m["state"] = p["to"]
            r.reviews[int(p["review_id"])] = {"mapping_id": int(p["mapping_id"]), "action": action.split(".", 1)[1],
                                              "actor": actor, "from": p["from"], "to": p["to"],
                                              "justification": p["justification"]}
            for ref in p.get("revoked_blocklists", []):
                r.versions.setdefault(ref, {})["state"] = "revoked"
        elif action == "blocklist.publish":
            ref = subject.split(":", 1)[1]
            r.versions[ref] = {"state": p.get("state", "published"), "content_sha256": p["content_sha256"],
                               "entries": sorted(int(e["mapping_id"]) for e in p["entries"])}
        elif action == "blocklist.approve":
            r.versions.setdefault(subject.split(":", 1)[1], {})["state"] = "published"
        elif action == "deployment.record":
            r.deployments[int(p["id"])] = {"blocklist": f"{p['blocklist']}@{p['blocklist_version']}",
                                           "manifest_sha256": p["manifest_sha256"], "built_by": actor}
        elif action == "deployment.evaluate":
            r.evaluations[int(p["id"])] = {"deployment_id": int(p["deployment_id"]),
                                           "metrics_sha256": p["metrics_sha256"], "by": actor}
        elif action == "deployment.promote":
            r.promotions[int(p["id"])] = {"deployment_id": int(p["deployment_id"]),
                                          "evaluation_id": int(p["evaluation_id"]), "alias": p["alias"],
                                          "mlflow_version": p.get("mlflow_version"), "by": actor}
        elif action == "key.register":
            r.keys[p["public_key"]] = {"owner": p["owner"], "revoked": False}
        elif action == "key.revoke":
            r.keys.setdefault(p["public_key"], {})["revoked"] = True
        elif action == "policy.set":
            r.policies[int(p["version"])] = {**{k: p[k] for k in ("min_ua", "min_ira", "min_cra")},
                                             "require_signatures": bool(p.get("require_signatures", False))}
    return r


def disagreements(s: Session, expected: Replayed, limit: int = 20) -> list[str]:
    """Where the state tables differ from the replayed log (at most `limit`, in table order)."""
    out: list[str] = []

    def diff(what: str, table: dict[Any, Any], logged: dict[Any, Any]) -> None:
        for key in sorted(set(table) | set(logged), key=str):
            if key not in logged:
                out.append(f"{what} {key}: in the table ({_short(table[key])}) but no event records it")
            elif key not in table:
                out.append(f"{what} {key}: recorded in the log ({_short(logged[key])}) but missing from the table")
            elif table[key] != logged[key]:
                out.append(f"{what} {key}: the table says {_short(table[key])}, the log {_short(logged[key])}")

    diff("actor", {a.name: {"role": a.role, "disabled": a.disabled_at is not None} for a in s.scalars(select(Actor))},
         expected.actors)
    diff("mapping", {m.id: {"state": m.state, "spec_sha256": m.spec_sha256, "created_by": m.created_by.name}
                     for m in s.scalars(select(FeatureMapping))}, expected.mappings)
    diff("review", {r.id: {"mapping_id": r.mapping_id, "action": r.action, "actor": r.actor.name,
                           "from": r.from_state, "to": r.to_state, "justification": r.justification}
                    for r in s.scalars(select(Review))}, expected.reviews)
    diff("blocklist version", {f"{v.blocklist.name}@{v.version}": {
        "state": v.state, "content_sha256": v.content_sha256, "entries": sorted(e.mapping_id for e in v.entries)}
        for v in s.scalars(select(BlocklistVersion))}, expected.versions)
    diff("deployment", {d.id: {"blocklist": f"{d.blocklist_version.blocklist.name}@{d.blocklist_version.version}",
                               "manifest_sha256": d.manifest_sha256, "built_by": d.built_by.name}
                        for d in s.scalars(select(Deployment))}, expected.deployments)
    diff("evaluation", {e.id: {"deployment_id": e.deployment_id, "metrics_sha256": sha256_text(canonical_json(e.metrics)),
                               "by": e.created_by.name} for e in s.scalars(select(DeploymentEvaluation))},
         expected.evaluations)
    diff("promotion", {p.id: {"deployment_id": p.deployment_id, "evaluation_id": p.evaluation_id, "alias": p.alias,
                              "mlflow_version": p.mlflow_version, "by": p.promoted_by.name}
                       for p in s.scalars(select(DeploymentPromotion))}, expected.promotions)
    diff("signing key", {k.public_key: {"owner": k.actor.name, "revoked": k.revoked_at is not None}
                         for k in s.scalars(select(SigningKey))}, expected.keys)
    diff("approval policy", {p.version: {"min_ua": p.min_ua, "min_ira": p.min_ira, "min_cra": p.min_cra,
                                         "require_signatures": bool(p.require_signatures)}
                             for p in s.scalars(select(ApprovalPolicyRow))}, expected.policies)
    return out[:limit]


def _short(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= 120 else text[:117] + "..."
