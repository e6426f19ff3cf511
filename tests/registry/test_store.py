"""Store API: roles, workflow, four-eyes, blocklists, deployments, generations (SQLite + PostgreSQL)."""
from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from sqlalchemy import text

from registry.errors import (
    AlreadyExists,
    InvalidTransition,
    NotFound,
    PermissionDenied,
    ValidationFailed,
)
from governance.formats.mapping import MappingSpec
from registry.store import Store
from tests.helpers.registry import make_model_folder, make_sae_folder, mapping_spec

SHA = "ab" * 32


def audit_size(store: Store) -> int:
    with store.engine.connect() as conn:
        return conn.execute(text("SELECT seq FROM audit_head")).scalar_one()


def setup_mapping(store: Store, tmp_path: Path, concept: str = "red", sae_name: str = "sae",
                  hook_point: str = "up_blocks.1.attentions.1") -> int:
    if concept not in {c.name for c in store.list_concepts()}:
        store.add_concept(concept, "colour", "erin", prompts=["a red square"])
    saes = [s for s in store.list_saes() if s.name == sae_name]
    sae = saes[0] if saes else store.import_sae_folder(make_sae_folder(tmp_path, sae_name), "erin",
                                                        hook_point=hook_point)
    spec = MappingSpec.model_validate(mapping_spec(concept))
    return store.create_mapping(sae.id, concept, spec, "erin").id


def approved_mapping(store: Store, tmp_path: Path, concept: str = "red", sae_name: str = "sae",
                     hook_point: str = "up_blocks.1.attentions.1") -> int:
    mid = setup_mapping(store, tmp_path, concept, sae_name, hook_point)
    store.propose(mid, "erin", "scored on 40 prompts")
    store.approve(mid, "rob", "checked the image grid")
    return mid


def test_first_actor_is_admin_then_only_admins_add(db_url: str) -> None:
    s = Store.open(db_url)
    first = s.add_actor("zed", "auditor", None)
    assert first.role == "admin"
    with pytest.raises(PermissionDenied, match="no actor"):
        s.add_actor("y", "engineer", None)
    s.add_actor("eng", "engineer", "zed")
    with pytest.raises(PermissionDenied, match="eng .engineer. may not do actor.add"):
        s.add_actor("y", "engineer", "eng")
    with pytest.raises(PermissionDenied, match="unknown actor 'ghost'"):
        s.add_actor("y", "engineer", "ghost")
    with pytest.raises(AlreadyExists):
        s.add_actor("eng", "reviewer", "zed")
    with pytest.raises(ValidationFailed):
        s.add_actor("y", "king", "zed")
    assert [a.name for a in s.list_actors()] == ["zed", "eng"]
    s.close()


def test_sae_registration_and_lineage(store: Store, tmp_path: Path) -> None:
    store.register_base_model("toy-sd", str(make_model_folder(tmp_path, 8)), SHA, "erin")
    folder = make_sae_folder(tmp_path, "up_blocks.1.attentions.1", d_in=8, expansion=2, k=4)
    a = store.import_sae_folder(folder, "erin", base_model="toy-sd", activation_dataset_hash=SHA,
                                mlflow_run_id="r1")
    b = store.import_sae_folder(folder, "erin")
    assert (a.ref, b.ref) == ("up_blocks.1.attentions.1@1", "up_blocks.1.attentions.1@2")
    assert a.hook_point == "up_blocks.1.attentions.1" and a.n_latents == 16 and a.k == 4
    assert a.base_model_hash == SHA and a.mlflow_run_id == "r1"
    assert a.weights_sha256 == hashlib.sha256((folder / "sae.safetensors").read_bytes()).hexdigest()
    assert store.get_sae("up_blocks.1.attentions.1").id == b.id
    assert store.get_sae(f"{a.name}@1").id == a.id
    u = store.update_sae_lineage(a.id, "erin", metrics={"fvu": 0.2}, mlflow_model_version="3")
    assert u.metrics == {"fvu": 0.2} and u.mlflow_model_version == "3"
    with pytest.raises(ValidationFailed):
        store.update_sae_lineage(a.id, "erin", mlflow_run_id="other")
    with pytest.raises(NotFound):
        store.import_sae_folder(folder, "erin", base_model="nope")
    with pytest.raises(PermissionDenied):
        store.import_sae_folder(folder, "rob")
    with pytest.raises(PermissionDenied):
        store.import_sae_folder(folder, "aud")


def test_workflow_four_eyes_and_roles(store: Store, tmp_path: Path) -> None:
    mid = setup_mapping(store, tmp_path)
    assert store.get_mapping(mid).state == "draft"
    with pytest.raises(InvalidTransition):
        store.approve(mid, "rob", "too early")
    with pytest.raises(PermissionDenied):
        store.propose(mid, "rob", "reviewers do not propose")
    with pytest.raises(ValidationFailed, match="justification"):
        store.propose(mid, "erin", "  ")
    store.propose(mid, "erin", "ok")
    with pytest.raises(PermissionDenied):
        store.approve(mid, "emil", "engineers do not approve")
    with pytest.raises(PermissionDenied):
        store.approve(mid, "aud", "auditors only read")
    m = store.approve(mid, "rob", "fine")
    assert m.state == "approved" and m.approval and m.approval.actor == "rob"
    with pytest.raises(InvalidTransition):
        store.reject(mid, "rita", "already approved")
    store.revoke(mid, "rita", "found a side effect")
    assert [r.action for r in store.get_mapping(mid).reviews] == ["propose", "approve", "revoke"]


def test_admin_cannot_approve_own_proposal(store: Store, tmp_path: Path) -> None:
    mid = setup_mapping(store, tmp_path)
    store.propose(mid, "alice", "admin proposes")
    with pytest.raises(PermissionDenied, match="four-eyes"):
        store.approve(mid, "alice", "and approves")
    store.add_actor("root2", "admin", "alice")  # alice's second account is still alice
    with pytest.raises(PermissionDenied, match="root2's account descends from alice's"):
        store.approve(mid, "root2", "second pair of eyes")
    store.add_actor("puppet", "reviewer", "root2")  # ... however many accounts deep
    with pytest.raises(PermissionDenied, match="puppet's account descends from alice's"):
        store.approve(mid, "puppet", "third pair of eyes")


def test_creator_cannot_approve(store: Store, tmp_path: Path) -> None:
    store.add_concept("blue", "colour", "alice")
    sae = store.import_sae_folder(make_sae_folder(tmp_path, "s"), "alice", hook_point="h")
    mid = store.create_mapping(sae.id, "blue", MappingSpec.model_validate(mapping_spec("blue")), "alice").id
    store.propose(mid, "erin", "erin proposes alice's mapping")
    with pytest.raises(PermissionDenied, match="created"):
        store.approve(mid, "alice", "creator approving")


def test_mapping_validation(store: Store, tmp_path: Path) -> None:
    setup_mapping(store, tmp_path)
    sae = store.list_saes()[0]
    with pytest.raises(ValidationFailed, match="outside SAE"):
        store.create_mapping(sae.id, "red", MappingSpec.model_validate(mapping_spec(features=(1, 32))), "erin")
    with pytest.raises(NotFound, match="unknown concept"):
        store.create_mapping(sae.id, "green", MappingSpec.model_validate(mapping_spec("green")), "erin")
    with pytest.raises(NotFound, match="unknown SAE"):
        store.create_mapping(999, "red", MappingSpec.model_validate(mapping_spec()), "erin")
    m = store.get_mapping(1)
    assert list(m.timesteps or {}) == [981, 961]
    assert m.n_features == 4 and m.evidence[0]["ref"] == "run-123"


def test_a_mapping_measured_with_another_is_published_only_beside_it(store: Store, tmp_path: Path) -> None:
    """`concept sweep --with-mapping`: the new mapping's evidence names the mapping it was measured
    with (id and spec hash). The registry refuses a reference it cannot honour, and a version
    holding the mapping without the one it was measured with."""
    from governance.formats.mapping import CHOSEN_WITH, EvidenceRef

    upstream, downstream = "up_blocks.1.attentions.1", "up_blocks.1.attentions.2"
    a = approved_mapping(store, tmp_path, "red", "sae-a", upstream)
    sha_a = store.get_mapping(a).spec_sha256
    sae_b = store.import_sae_folder(make_sae_folder(tmp_path, "sae-b"), "erin", hook_point=downstream)
    base = MappingSpec.model_validate(mapping_spec("red"))

    def chosen_with(ref: str, sha: str | None = sha_a, concept: str = "red") -> MappingSpec:
        spec = MappingSpec.model_validate(mapping_spec(concept))
        return spec.model_copy(update={"evidence": [EvidenceRef(kind=CHOSEN_WITH, ref=ref, sha256=sha)]})

    store.add_concept("green", "colour", "erin", prompts=["a green square"])
    for spec, needle in [(chosen_with("mapping:999"), "mapping 999, which does not exist"),
                         (chosen_with(f"mapping:{a}", "cd" * 32), f"but mapping {a} is {sha_a[:12]}"),
                         (chosen_with(f"run:{a}"), "is not 'mapping:<id>'"),
                         (chosen_with(f"mapping:{a}", None), "is not 'mapping:<id>'"),
                         (chosen_with(f"mapping:0{a}"), "is not 'mapping:<id>'"),
                         (chosen_with("mapping:\u0661"), "is not 'mapping:<id>'"),  # an Arabic-Indic 1
                         (chosen_with("mapping:" + "9" * 30), "is not 'mapping:<id>'"),
                         (chosen_with(f"mapping:{a}", concept="green"), f"mapping {a} is of 'red', not 'green'")]:
        with pytest.raises(ValidationFailed, match=needle):
            store.create_mapping(sae_b.id, spec.concept, spec, "erin")
    twice = chosen_with(f"mapping:{a}")
    twice = twice.model_copy(update={"evidence": [EvidenceRef(kind=CHOSEN_WITH, ref=f"mapping:{a}", sha256="cd" * 32),
                                                  *twice.evidence]})
    with pytest.raises(ValidationFailed, match=f"names mapping {a} twice"):
        store.create_mapping(sae_b.id, "red", twice, "erin")
    with pytest.raises(ValidationFailed, match="belongs in the mapping spec"):
        store.create_mapping(sae_b.id, "red", base, "erin",
                             evidence=[{"kind": CHOSEN_WITH, "ref": f"mapping:{a}", "sha256": sha_a}])
    with pytest.raises(ValidationFailed, match="where another mapping of the sweep already is"):
        store.create_mapping("sae-a", "red", chosen_with(f"mapping:{a}"), "erin")  # both at `upstream`
    # The sweep's own check, before any sampling, says the same.
    with pytest.raises(ValidationFailed, match="where another mapping"):
        store.check_in_force([a], "red", upstream)
    with pytest.raises(ValidationFailed, match="is of 'red', not 'green'"):
        store.check_in_force([a], "green", downstream)
    assert [m.id for m in store.check_in_force([a, a], "red", downstream)] == [a]

    b = store.create_mapping(sae_b.id, "red", chosen_with(f"mapping:{a}"), "erin").id
    assert store.get_mapping(b).evidence == [{"kind": CHOSEN_WITH, "ref": f"mapping:{a}", "sha256": sha_a}]
    store.propose(b, "erin", "swept with mapping a in force")
    store.approve(b, "rob", "ok")
    store.create_blocklist("red-two-blocks", [b], "erin")
    with pytest.raises(ValidationFailed, match=rf"mapping {b} \(red at {downstream}\) was chosen with mapping {a} "
                                               rf"in force; add mapping {a}"):
        store.publish_blocklist("red-two-blocks", "erin")
    store.edit_blocklist("red-two-blocks", "erin", add=[a])
    v1 = store.publish_blocklist("red-two-blocks", "erin")
    assert sorted((e.mapping_id, e.hook_point) for e in v1.entries) == [(a, upstream), (b, downstream)]
    assert [s.hook_point for s in v1.saes] == [upstream, downstream]
    # Dropping the upstream mapping later is refused outright, not merely reviewed as a loosening.
    store.edit_blocklist("red-two-blocks", "erin", remove=[a])
    with pytest.raises(ValidationFailed, match=f"chosen with mapping {a} in force"):
        store.publish_blocklist("red-two-blocks", "erin")
    # A mapping measured alone publishes alone, as before.
    assert base.chosen_with() == {}

    # The partners are closed under "measured with": c at `upstream` measured with b alone would
    # be measured without a (b's partner) and at a's hook point; a third block must hold both.
    third = "up_blocks.1.attentions.0"
    sae_c = store.import_sae_folder(make_sae_folder(tmp_path, "sae-c"), "erin", hook_point=third)
    sha_b = store.get_mapping(b).spec_sha256
    with pytest.raises(ValidationFailed, match=f"mapping {b} was itself measured with mapping {a}; hold mapping {a}"):
        store.check_in_force([b], "red", third)
    with pytest.raises(ValidationFailed, match=f"was itself measured with mapping {a}"):
        store.create_mapping(sae_c.id, "red", chosen_with(f"mapping:{b}", sha_b), "erin")
    assert [m.id for m in store.check_in_force([a, b], "red", third)] == [a, b]
    # Once a is revoked, nothing is measured with it, and b cannot be published without it.
    store.revoke(a, "rob", "side effects")
    with pytest.raises(ValidationFailed, match=f"mapping {a} is revoked; nothing can be measured"):
        store.check_in_force([a], "red", downstream)
    store.create_blocklist("red-b-only", [b], "erin")
    with pytest.raises(ValidationFailed, match=f"mapping {a} is revoked, so mapping {b} needs a new sweep"):
        store.publish_blocklist("red-b-only", "erin")


def test_blocklist_publish_rules_and_revocation(store: Store, tmp_path: Path) -> None:
    m1 = approved_mapping(store, tmp_path, "red")
    m2 = setup_mapping(store, tmp_path, "green")
    store.create_blocklist("colours", [m1, m2], "erin")
    with pytest.raises(ValidationFailed, match="not approved"):
        store.publish_blocklist("colours", "erin")
    store.propose(m2, "emil", "ok")
    store.approve(m2, "rita", "ok")
    with pytest.raises(PermissionDenied):
        store.publish_blocklist("colours", "rob")
    v1 = store.publish_blocklist("colours", "erin")
    assert (v1.version, v1.state, [e.mapping_id for e in v1.entries]) == (1, "published", [m1, m2])
    assert v1.entries[0].approved_by == "rob" and v1.entries[0].timesteps[981][0].feature == 1
    with pytest.raises(ValidationFailed, match="nothing changed"):
        store.publish_blocklist("colours", "erin")
    store.edit_blocklist("colours", "erin", remove=[m2])
    v2 = store.publish_blocklist("colours", "erin")
    assert v2.version == 2 and len(v2.entries) == 1 and v2.state == "pending"  # dropping green is reviewed
    assert store.approve_blocklist("colours", 2, "rob", "green is no longer blocked by policy").state == "published"
    # a mapping of another SAE at the same hook point cannot join (one SAE per hook point)
    m3 = approved_mapping(store, tmp_path, "blue", sae_name="other")
    store.edit_blocklist("colours", "erin", add=[m3])
    with pytest.raises(ValidationFailed, match=r"two SAE versions at hook point up_blocks.1.attentions.1: sae@1 and other@1"):
        store.publish_blocklist("colours", "erin")
    store.edit_blocklist("colours", "erin", remove=[m3])
    with pytest.raises(AlreadyExists):
        store.create_blocklist("colours", [m1], "erin")
    # revoking m2 revokes version 1 only; m1 revokes both
    store.revoke(m2, "rob", "leaks into purple")
    assert store.get_blocklist("colours", 1).state == "revoked"
    assert store.get_blocklist("colours", 2).state == "published"
    store.revoke(m1, "rob", "bad")
    d = store.describe_blocklist("colours")
    assert [(v.version, v.state, v.revoked_by_mapping_id) for v in d.versions] == [(1, "revoked", m2), (2, "revoked", m1)]
    with pytest.raises(NotFound):
        store.get_blocklist("colours", 9)


def test_deployments_and_generations(store: Store, tmp_path: Path) -> None:
    m1 = approved_mapping(store, tmp_path)
    store.create_blocklist("bl", [m1], "erin")
    store.publish_blocklist("bl", "erin")
    d = store.record_deployment(blocklist="bl", version=1, path="/tmp/dep", manifest_sha256=SHA,
                                base_model_hash=SHA, actor="erin", mlflow_model_version="2",
                                details={"scheduler": "DDIM", "steps": 50})
    assert d.blocklist == "bl" and d.blocklist_version == 1 and d.details["steps"] == 50
    g = store.record_generation(deployment_id=d.id, prompt_sha256=SHA, seed=188,
                                trace={"calls": [{"t": 981, "suppressed": [1]}]}, actor="erin")
    assert store.list_generations(d.id)[0].trace == {"calls": [{"t": 981, "suppressed": [1]}]}
    assert store.get_generation(g.id).seed == 188 and store.get_deployment(d.id).path == "/tmp/dep"
    with pytest.raises(NotFound):
        store.get_generation(999)
    assert g.trace_sha256 == hashlib.sha256(b'{"calls":[{"suppressed":[1],"t":981}]}').hexdigest()
    with pytest.raises(NotFound):
        store.record_generation(deployment_id=99, prompt_sha256=SHA, seed=1, trace={}, actor="erin")
    # Many images in one transaction: the same rows and events as one by one, all or nothing.
    from registry.store import NewGeneration

    before = len(store.audit_events())
    batch = [NewGeneration(d.id, SHA, seed, {"calls": [{"t": 981, "suppressed": [seed]}]}) for seed in range(5)]
    with pytest.raises(NotFound):
        store.record_generations(batch + [NewGeneration(99, SHA, 1, {})], "erin")
    with pytest.raises(ValidationFailed, match="seed"):
        store.record_generations([NewGeneration(d.id, SHA, 2**64, {})], "erin")
    assert len(store.audit_events()) == before and len(store.list_generations(d.id)) == 1
    recs = store.record_generations(batch, "erin")
    assert [r.seed for r in recs] == list(range(5)) and [r.id for r in recs] == list(range(g.id + 1, g.id + 6))
    events = store.audit_events()[before:]
    assert [e.subject for e in events] == [f"generation:{r.id}" for r in recs]
    assert [e.payload["trace_sha256"] for e in events] == [store.get_generation(r.id).trace_sha256 for r in recs]
    assert store.verify_audit().size == before + 5 and store.verify_state() == []
    store.revoke(m1, "rob", "bad")
    with pytest.raises(ValidationFailed, match="revoked"):
        store.record_deployment(blocklist="bl", version=1, path="/x", manifest_sha256=SHA,
                                base_model_hash=SHA, actor="erin")
    assert [e.action for e in store.audit_events(subject="deployment:*")] == ["deployment.record"]


def test_refusals_leave_database_unchanged(store: Store, tmp_path: Path) -> None:
    mid = setup_mapping(store, tmp_path)
    before = audit_size(store)
    for call in (
        lambda: store.approve(mid, "rob", "not proposed"),
        lambda: store.add_concept("red", "colour", "erin"),
        lambda: store.add_concept("x", "colour", "aud"),
        lambda: store.add_concept("x", "shape", "erin"),
        lambda: store.create_blocklist("b", [mid, 999], "erin"),
        lambda: store.publish_blocklist("nope", "erin"),
    ):
        with pytest.raises(Exception):
            call()
    assert audit_size(store) == before
    assert [c.name for c in store.list_concepts()] == ["red"]
    assert store.list_blocklists() == []


def test_every_write_is_audited_and_chain_verifies(store: Store, tmp_path: Path) -> None:
    approved_mapping(store, tmp_path)
    actions = [e.action for e in store.audit_events()]
    assert actions[:7] == ["actor.add"] * 6 + ["concept.add"]
    assert actions[7:] == ["sae.register", "mapping.create", "mapping.propose", "mapping.approve"]
    rep = store.verify_audit()
    assert rep.size == len(actions)
    assert [e.actor for e in store.audit_events(action="mapping.approve")] == ["rob"]
    assert len(store.audit_events(actor="erin")) == 4


def test_blocklist_holds_one_sae_per_hook_point(store: Store, tmp_path: Path) -> None:
    """Mappings of SAEs at two hook points publish together; one concept may be blocked at both;
    the content digest covers every (hook point, SAE weights)."""
    red_a = approved_mapping(store, tmp_path, "red", sae_name="sae-a", hook_point="up_blocks.1.attentions.2")
    dotted = approved_mapping(store, tmp_path, "dotted", sae_name="sae-b", hook_point="up_blocks.1.attentions.1")
    red_b = approved_mapping(store, tmp_path, "red", sae_name="sae-b")
    store.create_blocklist("mixed", [red_a, dotted, red_b], "erin")
    v = store.publish_blocklist("mixed", "erin")
    assert [(x.hook_point, x.sae_ref) for x in v.saes] == [
        ("up_blocks.1.attentions.1", "sae-b@1"), ("up_blocks.1.attentions.2", "sae-a@1")]
    assert {(e.concept, e.hook_point) for e in v.entries} == {
        ("red", "up_blocks.1.attentions.2"), ("dotted", "up_blocks.1.attentions.1"), ("red", "up_blocks.1.attentions.1")}
    assert store.get_blocklist("mixed", 1) == v
    event = store.audit_events(subject="blocklist:mixed@1")[-1]
    assert [x["hook_point"] for x in event.payload["saes"]] == ["up_blocks.1.attentions.1", "up_blocks.1.attentions.2"]
    # the same mappings at the other SAE only differ in the digest
    store.create_blocklist("single", [red_b, dotted], "erin")
    assert store.publish_blocklist("single", "erin").content_sha256 != v.content_sha256


@pytest.mark.parametrize("name", ["rob\u200b", "r\u043eb", "x" * 65, "rob\nalice", "rob\x1b[2J", "1rob", "rob smith"])
def test_actor_names_that_could_pass_for_another_are_refused(store: Store, name: str) -> None:
    with pytest.raises(ValidationFailed, match="must be 1-64 ASCII letters"):
        store.add_actor(name, "reviewer", "alice")
    assert name not in {a.name for a in store.list_actors()}
