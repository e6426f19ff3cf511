"""Approvals gated by evidence (registry.policy): sanity rules always, minimum sweep evidence
under a versioned, admin-only, audited policy, admin overrides recorded; a policy table edited
behind the log's back fails closed. SQLite and PostgreSQL."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy import text

from governance.formats.mapping import MappingSpec
from governance.formats.sweep import SweepPoint, SweepTable
from registry.errors import PermissionDenied, ValidationFailed
from registry.store import Store
from tests.helpers.registry import make_sae_folder, mapping_spec


def sweep_evidence(ua: float, ira: float, cra: float) -> dict:
    p = SweepPoint(rule="top_n", value=4, gamma=-5.0, UA=ua, IRA=ira, CRA=cra, objective=min(ua, ira, cra),
                   n_entries=4, n_features=4)
    table = SweepTable(seeds=[100], prompts="style-free wording", objective="min(UA, IRA, CRA)",
                       images_per_point=16, chosen=p, points=[p])
    return {"kind": "sweep", "ref": table.evidence_text()}


def proposed(store: Store, tmp_path: Path, concept: str, *, scale: float = -0.3, evidence: list | None = None) -> int:
    if concept not in {c.name for c in store.list_concepts()}:
        store.add_concept(concept, "colour", "erin", prompts=[f"a {concept} square"])
    saes = store.list_saes()
    sae = saes[0] if saes else store.import_sae_folder(make_sae_folder(tmp_path, "sae"), "erin",
                                                        hook_point="up_blocks.1.attentions.1")
    raw = mapping_spec(concept)
    for entries in raw["timesteps"].values():
        for e in entries:
            e["scale"] = scale
    raw["evidence"] += evidence or []
    mid = store.create_mapping(sae.id, concept, MappingSpec.model_validate(raw), "erin").id
    store.propose(mid, "erin", "please")
    return mid


def test_sanity_rules_refuse_an_amplifying_mapping_unless_an_admin_overrides(store: Store, tmp_path: Path) -> None:
    mid = proposed(store, tmp_path, "red", scale=5.0)
    with pytest.raises(ValidationFailed, match="scale 5: only scales below 1 suppress"):
        store.approve(mid, "rob", "looks fine")
    with pytest.raises(PermissionDenied, match="may not override"):
        store.approve(mid, "rob", "looks fine", override="I insist")
    m = store.approve(mid, "alice", "tested by hand", override="amplification is the point of this test")
    assert m.state == "approved"
    event = [e for e in store.audit_events() if e.action == "mapping.approve"][-1]
    assert event.actor == "alice" and event.payload["override"]["justification"].startswith("amplification")
    assert "scale 5" in event.payload["override"]["shortfalls"][0]


def test_policy_minimums_are_checked_against_the_sweep_evidence(store: Store, tmp_path: Path) -> None:
    with pytest.raises(PermissionDenied, match="policy.set"):
        store.set_approval_policy("erin", min_ua=0.5)
    with pytest.raises(ValidationFailed, match="fractions"):
        store.set_approval_policy("alice", min_ua=50)
    assert store.approval_policy() is None
    p = store.set_approval_policy("alice", min_ua=0.5, min_cra=0.8)
    assert p.version == 1 and store.approval_policy() == p

    dotted = proposed(store, tmp_path, "dotted", evidence=[sweep_evidence(0.0, 1.0, 0.9)])
    with pytest.raises(ValidationFailed, match=r"UA 0.0 %, below the 50.0 % of approval policy v1"):
        store.approve(dotted, "rob", "heatmap looked right")
    bare = proposed(store, tmp_path, "plain")
    with pytest.raises(ValidationFailed, match="no sweep evidence"):
        store.approve(bare, "rob", "trust me")
    good = proposed(store, tmp_path, "red", evidence=[sweep_evidence(0.96, 0.97, 0.95)])
    with pytest.raises(ValidationFailed, match="nothing to override"):
        store.approve(good, "alice", "ok", override="not needed")
    assert store.approve(good, "rob", "sweep shows it works").state == "approved"
    assert [e.payload["policy_version"] for e in store.audit_events() if e.action == "mapping.approve"] == [1]

    # A looser policy is a new, audited version; the old evidence then passes.
    assert store.set_approval_policy("alice", min_ua=0.0).version == 2
    assert store.approve(dotted, "rob", "policy v2").state == "approved"
    assert [e.action for e in store.audit_events()].count("policy.set") == 2


def test_a_policy_edited_by_sql_refuses_approvals(store: Store, tmp_path: Path) -> None:
    store.set_approval_policy("alice", min_ua=0.9)
    dotted = proposed(store, tmp_path, "dotted", evidence=[sweep_evidence(0.0, 1.0, 1.0)])
    with store.engine.begin() as conn:
        conn.execute(text("UPDATE approval_policies SET min_ua = 0"))
    with pytest.raises(ValidationFailed, match="not the one its audit log records"):
        store.approve(dotted, "rob", "policy says 0 now")
    with store.engine.begin() as conn:
        conn.execute(text("DELETE FROM approval_policies"))
    with pytest.raises(ValidationFailed, match="not the one its audit log records"):
        store.approve(dotted, "rob", "no policy at all now")
    assert json.loads(json.dumps(store.list_mappings()[0].state)) == "proposed"


def test_loosening_a_blocklist_needs_a_reviewer(store: Store, tmp_path: Path) -> None:
    """Dropping a concept, or serving it by another mapping, waits for a reviewer other than the
    publisher; adding one publishes at once."""
    from registry.errors import InvalidTransition
    from tests.registry.test_store import approved_mapping

    red = approved_mapping(store, tmp_path, "red")
    blue = approved_mapping(store, tmp_path, "blue")
    store.create_blocklist("colours", [red], "erin")
    assert store.publish_blocklist("colours", "erin").state == "published"
    store.edit_blocklist("colours", "erin", add=[blue])
    assert store.publish_blocklist("colours", "erin").state == "published"  # v2 tightens: no review
    store.edit_blocklist("colours", "erin", remove=[red])
    v3 = store.publish_blocklist("colours", "erin")
    assert v3.state == "pending" and v3.version == 3
    event = [e for e in store.audit_events() if e.action == "blocklist.publish"][-1]
    assert event.payload["loosening"] == [{"concept": "red", "hook_point": "up_blocks.1.attentions.1",
                                           "removed_mapping_id": red}]
    with pytest.raises(ValidationFailed, match="pending"):
        store.record_deployment(blocklist="colours", version=3, path="/x", manifest_sha256="a" * 64,
                                base_model_hash="b" * 64, actor="erin")
    with pytest.raises(PermissionDenied, match="blocklist.approve"):
        store.approve_blocklist("colours", 3, "emil", "looks fine")
    with pytest.raises(PermissionDenied, match="blocklist.approve"):
        store.approve_blocklist("colours", 3, "erin", "mine")
    rec = store.approve_blocklist("colours", 3, "rob", "red is allowed again by policy decision 12")
    assert rec.state == "published" and rec.approved_by == "rob"
    with pytest.raises(InvalidTransition, match="only a pending version"):
        store.approve_blocklist("colours", 3, "rita", "again")
    # Replacing blue's mapping by another one is a change that may weaken it: reviewed too.
    blue2 = approved_mapping(store, tmp_path, "blue")
    store.edit_blocklist("colours", "erin", add=[blue2], remove=[blue])
    v4 = store.publish_blocklist("colours", "alice")
    assert v4.state == "pending"
    with pytest.raises(PermissionDenied, match="four-eyes rule: alice published colours@4"):
        store.approve_blocklist("colours", 4, "alice", "my own")
    assert [e for e in store.audit_events() if e.action == "blocklist.publish"][-1].payload["loosening"][0][
        "replaced_by_mapping_id"] == blue2
    assert store.verify_audit().size == len(store.audit_events())


def test_an_account_made_by_the_author_cannot_approve_the_authors_work(store: Store, tmp_path: Path) -> None:
    """alice (admin) writes and proposes a mapping, makes herself a reviewer account and tries
    to approve through it: refused. rob, whom alice also created, is someone else's account only
    if alice neither created nor proposed the mapping."""
    store.add_concept("red", "colour", "alice", prompts=["a red square"])
    sae = store.import_sae_folder(make_sae_folder(tmp_path, "sae"), "alice", hook_point="up_blocks.1.attentions.1")
    mid = store.create_mapping(sae.id, "red", MappingSpec.model_validate(mapping_spec("red")), "alice").id
    store.propose(mid, "alice", "mine")
    store.add_actor("alice2", "reviewer", "alice")
    with pytest.raises(PermissionDenied, match="alice2's account descends from alice's, who created mapping"):
        store.approve(mid, "alice2", "looks fine to me")
    with pytest.raises(PermissionDenied, match="account descends from alice's"):
        store.approve(mid, "rob", "rob's account is alice's too")  # the fixture's alice created rob
    erins = store.create_mapping(sae.id, "red", MappingSpec.model_validate(mapping_spec("red")), "erin").id
    store.propose(erins, "erin", "erin's")
    assert store.approve(erins, "alice2", "a different author").state == "approved"


def test_actor_lifecycle_is_admin_only_audited_and_replayed(store: Store, tmp_path: Path) -> None:
    from registry.errors import PermissionDenied

    with pytest.raises(PermissionDenied, match="actor.role"):
        store.set_actor_role("erin", "admin", "erin", "I deserve it")
    with pytest.raises(ValidationFailed, match="own role"):
        store.set_actor_role("alice", "reviewer", "alice", "stepping down")
    assert store.set_actor_role("rita", "engineer", "alice", "moved teams").role == "engineer"
    store.register_signing_key("emil", "ef" * 32, "alice")
    rec = store.disable_actor("emil", "alice", "left the company")
    assert rec.disabled_at is not None
    with pytest.raises(PermissionDenied, match="'emil' was disabled"):
        store.add_concept("x", "colour", "emil")
    assert "ef" * 32 in store.trusted_signing_keys()  # what emil recorded still verifies against the registry
    assert "ef" * 32 not in store.trusted_signing_keys(active_owners_only=True)  # offline trust stores drop it
    assert [e.action for e in store.audit_events() if e.action in ("actor.role", "actor.disable")] == [
        "actor.role", "actor.disable"]
    assert store.verify_state() == []
    with store.engine.begin() as conn:
        conn.execute(text("UPDATE actors SET disabled_at = NULL WHERE name = 'emil'"))
    assert "actor emil" in store.verify_state()[0]
