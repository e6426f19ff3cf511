"""Actors sign what they do (issue 15): a name is not an identity once a key is registered, the
log carries every signature, and an auditor checks four-eyes from an exported log and the public
keys alone. Each test plays the attack first and asserts it is refused."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from governance.formats.checkpoint import Checkpoint
from registry import audit, signatures
from registry.errors import AuditVerificationError, PermissionDenied
from registry.store import Store
from tests.registry.test_store import approved_mapping, setup_mapping

PEOPLE = ("alice", "erin", "emil", "rob", "rita", "aud")


@pytest.fixture
def keys() -> dict[str, Ed25519PrivateKey]:
    return {name: Ed25519PrivateKey.generate() for name in PEOPLE}


def as_person(store: Store, key: Ed25519PrivateKey | None) -> Store:
    """The same registry opened on one person's machine: whatever name is claimed, the process
    holds only that person's key."""
    return Store(store.engine, keyring=lambda _name: key)


def everyone(store: Store, keys: dict[str, Ed25519PrivateKey]) -> Store:
    """A store on which each actor holds their own key (the people of a team, each at their desk)."""
    return Store(store.engine, keyring=keys.get)


def register_all(store: Store, keys: dict[str, Ed25519PrivateKey], who: tuple[str, ...] = PEOPLE) -> Store:
    team = everyone(store, keys)
    for name in who:
        team.register_signing_key(name, signatures.public_hex(keys[name]), "alice")
    return team


def forge_event(store: Store, actor: str, action: str, subject: str, payload: dict,
                signer: Ed25519PrivateKey | None = None) -> None:
    """An insider with write access to the database appends a well-chained event directly."""
    from sqlalchemy.orm import Session

    with Session(store.engine) as s, s.begin():
        head = audit.lock_head(s)
        audit.append_event(s, head, actor, action, subject, payload, signer=signer)


def test_a_registered_key_makes_a_name_insufficient(store: Store, keys, tmp_path: Path) -> None:
    team = register_all(store, keys, ("alice", "erin", "rob"))
    erins_desk = as_person(store, keys["erin"])
    erins_desk.add_concept("green", "colour", "erin")  # erin as herself: signed
    mid = setup_mapping(team, tmp_path)
    erins_desk.propose(mid, "erin", "scored")
    with pytest.raises(PermissionDenied, match="only rob can act as rob"):
        erins_desk.approve(mid, "rob", "looks fine")  # SAEGOV_ACTOR=rob on erin's machine
    with pytest.raises(PermissionDenied, match="holds no key"):
        as_person(store, None).add_concept("blue", "colour", "erin")
    team.approve(mid, "rob", "checked")
    rep = store.verify_audit()
    signed = [e for e in store.audit_events() if e.actor in ("erin", "rob") and e.seq > 9]
    assert signed and rep.signed >= len(signed)
    with store.engine.connect() as conn:
        rows = list(audit.iter_event_rows(conn))
    assert all(r[8] == signatures.public_hex(keys[r[2]]) for r in rows if r[2] in ("erin", "rob") and r[0] > 9)


def test_required_signatures_refuse_keyless_actors_and_stay_on(store: Store, keys) -> None:
    team = register_all(store, keys, ("alice", "erin"))
    as_person(store, keys["erin"]).add_concept("c1", "colour", "emil")  # emil has no key yet: allowed
    policy = team.set_approval_policy("alice", min_ua=0.5, require_signatures=True)
    assert policy.require_signatures
    with pytest.raises(PermissionDenied, match="requires signed actions and 'emil' has no registered key"):
        as_person(store, keys["erin"]).add_concept("c2", "colour", "emil")
    later = team.set_approval_policy("alice", min_ua=0.6)  # inherits: cannot be switched off
    assert later.require_signatures and store.approval_policy().require_signatures
    store.verify_audit()
    # An insider appends an unsigned event for a keyless actor: verify names it.
    forge_event(store, "emil", "concept.add", "concept:c3", {"name": "c3", "kind": "colour"})
    with pytest.raises(AuditVerificationError, match="unsigned, but the approval policy in force requires"):
        store.verify_audit()


def test_turning_on_requires_the_admin_to_sign(store: Store) -> None:
    with pytest.raises(PermissionDenied, match="register yours before requiring signed actions"):
        Store(store.engine, keyring=lambda _n: None).set_approval_policy("alice", require_signatures=True)
    assert store.approval_policy() is None


@pytest.mark.parametrize("attack", ["unsigned", "someone_elses_key", "bad_signature", "revoked_key"])
def test_forged_events_are_named_by_verify(store: Store, keys, attack: str) -> None:
    team = register_all(store, keys, ("alice", "erin", "rob"))
    store.verify_audit()
    if attack == "unsigned":
        forge_event(store, "rob", "mapping.reject", "mapping:1", {"mapping_id": 1})
        match = "unsigned although 'rob' has a registered key"
    elif attack == "someone_elses_key":
        forge_event(store, "rob", "mapping.reject", "mapping:1", {"mapping_id": 1}, signer=keys["erin"])
        match = "registered to 'erin'"
    elif attack == "bad_signature":
        forge_event(store, "rob", "mapping.reject", "mapping:1", {"mapping_id": 1}, signer=keys["rob"])
        from sqlalchemy import text

        from tests.helpers.registry import drop_audit_triggers

        drop_audit_triggers(store.engine)
        with store.engine.begin() as conn:
            seq = conn.execute(text("SELECT max(seq) FROM audit_events")).scalar()
            sig = keys["rob"].sign(b"something else").hex()
            conn.execute(text("UPDATE audit_events SET signature = :s WHERE seq = :q"), {"s": sig, "q": seq})
        match = "does not verify"
    else:
        team.revoke_signing_key(signatures.public_hex(keys["rob"]), "alice", "laptop lost")
        forge_event(store, "rob", "mapping.reject", "mapping:1", {"mapping_id": 1}, signer=keys["rob"])
        match = "which is revoked"
    with pytest.raises(AuditVerificationError, match=match):
        store.verify_audit()


def test_a_key_registered_by_the_author_cannot_approve(store: Store, keys, tmp_path: Path) -> None:
    """adam (an admin) registers rob's key, then authors a mapping: rob's approval is refused by
    the store and, for a log where it happened anyway, by verify."""
    store.add_actor("adam", "admin", "alice")
    keys["adam"] = Ed25519PrivateKey.generate()
    team = everyone(store, keys)
    team.register_signing_key("rob", signatures.public_hex(keys["rob"]), "adam")
    store.add_concept("red", "colour", "adam", prompts=["a red square"])
    mid = setup_mapping(store, tmp_path)
    store.propose(mid, "adam", "mine")
    with pytest.raises(PermissionDenied, match="rob signs with a key that comes from adam, who proposed"):
        team.approve(mid, "rob", "looks fine")
    forge_event(store, "rob", "mapping.approve", f"mapping:{mid}", {"mapping_id": mid}, signer=keys["rob"])
    with pytest.raises(AuditVerificationError, match="signs with a key registered by 'adam'"):
        store.verify_audit()


def test_export_is_verified_from_public_keys_alone(store: Store, keys, tmp_path: Path) -> None:
    team = register_all(store, keys, ("alice", "erin", "rob"))
    approved_mapping(team, tmp_path)
    out = tmp_path / "log.jsonl"
    n = store.export_audit(out)
    cp = store.audit_checkpoint()
    alice = frozenset({signatures.public_hex(keys["alice"])})
    rep = audit.verify_exported(out, [cp], anchors=alice)
    assert rep.size == n == cp.size and rep.signed > 0
    with pytest.raises(AuditVerificationError, match="root of trust .* but not one of the trusted keys"):
        audit.verify_exported(out, anchors=frozenset({signatures.public_hex(keys["erin"])}))
    lines = out.read_text().splitlines()
    for i, line in enumerate(lines[1:], start=1):  # rob's approval, re-signed by erin: four-eyes by key
        e = json.loads(line)
        if e["action"] == "mapping.approve":
            e["signer_key"], e["signature"] = signatures.sign_event(keys["erin"], e["hash"])
            lines[i] = json.dumps(e)
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join(lines) + "\n")
    with pytest.raises(AuditVerificationError, match="registered to 'erin'"):
        audit.verify_exported(bad, anchors=alice)
    cut = tmp_path / "cut.jsonl"
    cut.write_text("\n".join(out.read_text().splitlines()[:-1]) + "\n")
    with pytest.raises(AuditVerificationError, match="does not match the chain's last event|missing"):
        audit.verify_exported(cut, [cp], anchors=alice)


def _naive_proof_check(leaves: list[bytes], m: int, proof: list[str]) -> bool:
    n = len(leaves)
    return audit.consistency_holds(m, n, audit.merkle_root(leaves[:m]), audit.merkle_root(leaves), proof)


def test_consistency_proofs_hold_for_prefixes_and_fail_for_rewrites() -> None:
    import hashlib

    leaves = [hashlib.sha256(str(i).encode()).digest() for i in range(70)]
    for n in range(1, 70):
        for m in range(1, n + 1):
            proof = audit.consistency_proof(leaves[:n], m)
            assert _naive_proof_check(leaves[:n], m, proof), (m, n)
            if m < n:
                forged = leaves[:n].copy()
                forged[m - 1] = b"\0" * 32  # the old tree's last event rewritten
                assert not audit.consistency_holds(m, n, audit.merkle_root(leaves[:m]),
                                                   audit.merkle_root(forged), audit.consistency_proof(forged, m))
                assert not audit.consistency_holds(m, n, audit.merkle_root(leaves[:m]), audit.merkle_root(leaves[:n]),
                                                   proof[:-1] or ["00" * 32])


def test_consistency_between_registry_checkpoints(store: Store, tmp_path: Path) -> None:
    old = store.audit_checkpoint()
    store.add_concept("later", "colour", "erin")
    new = store.audit_checkpoint()
    proof = store.consistency_proof(old, new)
    assert audit.consistency_holds(old.size, new.size, old.merkle_root, new.merkle_root, proof)
    fake_old = Checkpoint(size=old.size, head_hash=old.head_hash, merkle_root="0" * 64, time=old.time)
    with pytest.raises(AuditVerificationError, match="history rewritten"):
        store.consistency_proof(fake_old, new)


def test_a_role_raised_by_sql_for_one_action_is_named(store: Store, tmp_path: Path) -> None:
    """erin (engineer) is made reviewer by SQL, approves emil's mapping and is set back: the
    tables agree with the log again, but the approval by a non-reviewer is in the log."""
    from sqlalchemy import text

    store.add_concept("red", "colour", "emil", prompts=["a red square"])
    mid = setup_mapping(store, tmp_path)
    with store.engine.begin() as conn:
        conn.execute(text("UPDATE feature_mappings SET created_by_id = (SELECT id FROM actors WHERE name = 'emil')"))
    store.propose(mid, "emil", "mine")
    with store.engine.begin() as conn:
        conn.execute(text("UPDATE actors SET role = 'reviewer' WHERE name = 'erin'"))
    store.approve(mid, "erin", "looks fine")
    with store.engine.begin() as conn:
        conn.execute(text("UPDATE actors SET role = 'engineer' WHERE name = 'erin'"))
    with pytest.raises(AuditVerificationError, match="mapping.approve by 'erin', whose role at that point was "
                                                      "engineer"):
        store.verify_audit()


def test_an_actor_the_log_never_added_is_named(store: Store) -> None:
    forge_event(store, "mallory", "concept.add", "concept:x", {"name": "x"})
    with pytest.raises(AuditVerificationError, match="by 'mallory', whom no earlier actor.add"):
        store.verify_audit()


def test_a_log_stripped_of_its_key_registrations_fails_against_the_trust_store(store: Store, keys,
                                                                               tmp_path: Path) -> None:
    register_all(store, keys, ("alice", "erin"))
    out = tmp_path / "log.jsonl"
    store.export_audit(out)
    lines = out.read_text().splitlines()
    header, events = json.loads(lines[0]), [json.loads(x) for x in lines[1:]]
    kept, prev = [], audit.GENESIS_HASH  # the attacker drops the key events and re-chains the rest, unsigned
    for e in events:
        if e["action"] == "key.register":
            continue
        seq = len(kept) + 1
        h = audit.event_hash(seq, prev, e["created_at"], e["actor"], e["action"], e["subject"], e["payload"])
        kept.append({**e, "seq": seq, "prev_hash": prev, "hash": h, "signer_key": None, "signature": None})
        prev = h
    header.update(size=len(kept), head_hash=prev)
    stripped = tmp_path / "stripped.jsonl"
    stripped.write_text("\n".join(json.dumps(x) for x in [header, *kept]) + "\n")
    assert audit.verify_exported(stripped).size == len(kept)  # without anchors, a bare chain verifies
    trusted = frozenset(signatures.public_hex(keys[n]) for n in ("alice", "erin"))
    with pytest.raises(AuditVerificationError, match="is registered nowhere in this log"):
        audit.verify_exported(stripped, anchors=trusted)
    assert audit.verify_exported(out, anchors=trusted).signed > 0


def test_verify_since_refuses_state_edited_before_the_checkpoint(store: Store, keys, tmp_path: Path) -> None:
    """An insider edits a key registration before a signed checkpoint (erin's key made rob's):
    `--since` does not re-hash those rows, but their state must be the one the checkpoint signed."""
    from sqlalchemy import text

    from tests.helpers.registry import drop_audit_triggers

    team = register_all(store, keys, ("alice", "erin", "rob"))
    cp = store.audit_checkpoint()
    assert cp.state_sha256 is not None
    team.add_concept("late", "colour", "erin")
    assert store.verify_audit_since(cp).size == cp.size + 1
    drop_audit_triggers(store.engine)
    erin = signatures.public_hex(keys["erin"])
    with store.engine.begin() as conn:
        conn.execute(text("UPDATE audit_events SET payload = replace(payload, '\"owner\":\"erin\"', '\"owner\":\"rob\"') "
                          "WHERE action = 'key.register' AND subject = :s"), {"s": f"key:{erin}"})
    with pytest.raises(AuditVerificationError, match="no longer give the keys, roles and approvals"):
        store.verify_audit_since(cp)
    with pytest.raises(AuditVerificationError, match="hash mismatch"):
        store.verify_audit()
    old = cp.model_copy(update={"state_sha256": None})
    with pytest.raises(AuditVerificationError, match="records no state digest"):
        store.verify_audit_since(old)


@pytest.mark.parametrize("payload", ["[]", "not json", '{"name": "x"}', '{"mapping_id": "abc"}', "[" * 5000])
def test_unreadable_payloads_of_tracked_events_are_one_line_refusals(store: Store, payload: str) -> None:
    from sqlalchemy.orm import Session

    action = "mapping.create" if "name" in payload else "mapping.propose"
    with Session(store.engine) as s, s.begin():  # a well-chained event whose payload text is not ours
        head = audit.lock_head(s)
        seq = head.seq + 1
        created = "2026-01-01T00:00:00.000000Z"
        h = audit.event_hash(seq, head.hash, created, "erin", action, "mapping:1", payload)
        s.add(audit.AuditEvent(seq=seq, created_at=created, actor="erin", action=action, subject="mapping:1",
                               payload=payload, prev_hash=head.hash, hash=h))
        head.seq, head.hash = seq, h
    with pytest.raises(AuditVerificationError, match=f"audit event {seq}: the payload of this {action} cannot be read"):
        store.verify_audit()


@pytest.mark.parametrize(("actor", "action", "payload", "named"), [
    ("alice", "actor.add", {"name": "sock", "role": "reviewer", "first": True}, "claims to be the first actor"),
    ("alice", "actor.add", {"name": "rob", "role": "admin", "first": False}, "added a second time"),
    ("alice", "actor.role", {"name": "sock", "from": "engineer", "role": "reviewer"}, "unknown account"),
    ("alice", "actor.role", {"name": "alice", "from": "admin", "role": "admin"}, "one's own role"),
    ("alice", "actor.disable", {"name": "alice"}, "or one's own"),
])
def test_events_no_store_writes_are_named(store: Store, actor: str, action: str, payload: dict, named: str) -> None:
    """Account events that would give an author an approver outside their lineage (a second
    'first' actor, a role for an account never added) are refused from the log alone."""
    forge_event(store, actor, action, f"actor:{payload['name']}", payload)
    with pytest.raises(AuditVerificationError, match=named):
        store.verify_audit()


def test_a_key_registered_twice_is_named(store: Store, keys) -> None:
    register_all(store, keys, ("alice", "erin"))
    erin = signatures.public_hex(keys["erin"])
    forge_event(store, "alice", "key.register", f"key:{erin}", {"id": 9, "public_key": erin, "purpose": "deployment",
                                                                 "owner": "rob"}, signer=keys["alice"])
    with pytest.raises(AuditVerificationError, match="registered a second time"):
        store.verify_audit()


def test_a_row_before_event_1_is_named_and_not_read(store: Store) -> None:
    """A key registration slipped in at seq 0 (which the walk from event 1 would never read)."""
    from sqlalchemy import text

    key = "ab" * 32
    with store.engine.begin() as conn:
        conn.execute(text("INSERT INTO audit_events (seq, created_at, actor, action, subject, payload, prev_hash, hash) "
                          "VALUES (0, '2026-01-01T00:00:00Z', 'alice', 'key.register', :s, :p, :h, :h)"),
                     {"s": f"key:{key}", "p": json.dumps({"public_key": key, "owner": "erin"}), "h": "0" * 64})
    assert key not in store.trusted_signing_keys() and key not in store.checkpoint_signers()
    with pytest.raises(AuditVerificationError, match="sequence numbers start at 1"):
        store.verify_audit()
    with pytest.raises(AuditVerificationError, match="sequence numbers start at 1"):
        store.audit_checkpoint()


def test_checkpoint_signers_come_from_the_log_not_the_tables(store: Store, keys) -> None:
    from sqlalchemy import text

    register_all(store, keys, ("alice", "erin"))
    erin = signatures.public_hex(keys["erin"])
    assert set(store.checkpoint_signers()) == {signatures.public_hex(keys["alice"])}
    with store.engine.begin() as conn:  # erin's key row moved to alice, erin made admin
        conn.execute(text("UPDATE signing_keys SET actor_id = (SELECT id FROM actors WHERE name = 'alice') "
                          "WHERE public_key = :k"), {"k": erin})
        conn.execute(text("UPDATE actors SET role = 'admin' WHERE name = 'erin'"))
    assert erin not in store.checkpoint_signers()


def test_since_refuses_roots_outside_the_trust_store(store: Store, keys) -> None:
    register_all(store, keys, ("alice", "erin"))
    cp = store.audit_checkpoint()
    assert store.verify_audit_since(cp, anchors=frozenset({signatures.public_hex(keys["alice"])})).size == cp.size
    with pytest.raises(AuditVerificationError, match="root of trust before the checkpoint"):
        store.verify_audit_since(cp, anchors=frozenset({signatures.public_hex(keys["erin"])}))


def test_a_promotion_by_the_evaluator_written_around_the_store_is_named(store: Store) -> None:
    """The store refuses to promote on one's own evaluation; an insider who writes the events
    directly is named by `audit verify`, which replays the rule from the log."""
    forge_event(store, "rob", "deployment.evaluate", "deployment:1", {"id": 6, "deployment_id": 1})
    forge_event(store, "erin", "deployment.evaluate", "deployment:1", {"id": 7, "deployment_id": 1})
    forge_event(store, "erin", "deployment.promote", "deployment:1", {"id": 1, "deployment_id": 1, "evaluation_id": 6})
    store.verify_audit()  # rob evaluated, erin promoted: fine
    forge_event(store, "erin", "deployment.promote", "deployment:1", {"id": 2, "deployment_id": 1, "evaluation_id": 7})
    with pytest.raises(AuditVerificationError, match="promoted by 'erin' on evaluation 7, which they recorded"):
        store.verify_audit()
