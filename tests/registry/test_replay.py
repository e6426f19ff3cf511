"""`audit verify` replays the log against the state tables (registry.replay): rows changed by
SQL behind the log's back are named even though the hash chain still verifies."""
from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import text

from registry.store import Store
from tests.registry.test_store import approved_mapping, setup_mapping


@pytest.fixture
def populated(store: Store, tmp_path: Path) -> Store:
    red = approved_mapping(store, tmp_path, "red")
    setup_mapping(store, tmp_path, "green")
    store.create_blocklist("colours", [red], "erin")
    store.publish_blocklist("colours", "erin")
    store.record_deployment(blocklist="colours", version=1, path="/d", manifest_sha256="a" * 64,
                            base_model_hash="b" * 64, actor="erin")
    store.register_signing_key("erin", "cd" * 32, "alice")
    store.set_approval_policy("alice", min_ua=0.5)
    return store


def test_an_untouched_registry_agrees_with_its_log(populated: Store) -> None:
    assert populated.verify_state() == []


@pytest.mark.parametrize(("sql", "named"), [
    ("UPDATE actors SET role = 'admin' WHERE name = 'erin'", "actor erin: the table says {\"disabled\": false, \"role\": \"admin\"}"),
    ("INSERT INTO actors (name, role, created_at) VALUES ('mallory', 'admin', '2026-01-01 00:00:00')",
     "actor mallory: in the table"),
    ("UPDATE feature_mappings SET state = 'approved' WHERE id = 2", "mapping 2: the table says"),
    ("UPDATE reviews SET justification = 'nothing to see' WHERE id = 2", "review 2: the table says"),
    ("UPDATE blocklist_versions SET state = 'published', content_sha256 = 'x'", "blocklist version colours@1"),
    ("DELETE FROM deployments", "deployment 1: recorded in the log"),
    ("UPDATE signing_keys SET actor_id = 1", "signing key " + "cd" * 32),
    ("UPDATE approval_policies SET min_ua = 0", "approval policy 1"),
])
def test_a_row_changed_behind_the_logs_back_is_named(populated: Store, sql: str, named: str) -> None:
    assert populated.verify_audit().size > 0  # the chain itself is intact
    with populated.engine.begin() as conn:
        if populated.engine.dialect.name == "sqlite":
            conn.execute(text("PRAGMA foreign_keys = OFF"))
        conn.execute(text(sql))
    wrong = populated.verify_state()
    assert wrong and named in wrong[0], wrong


def test_audit_verify_fails_on_state_the_log_does_not_support(populated: Store, monkeypatch) -> None:
    from cli.main import saegov

    monkeypatch.setenv("SAEGOV_DATABASE_URL", str(populated.engine.url.render_as_string(hide_password=False)))
    ok = CliRunner().invoke(saegov, ["audit", "verify"])
    assert ok.exit_code == 0 and "state tables agree" in ok.stdout, ok.output
    with populated.engine.begin() as conn:
        conn.execute(text("UPDATE actors SET role = 'admin' WHERE name = 'erin'"))
    r = CliRunner().invoke(saegov, ["audit", "verify"])
    assert r.exit_code == 5 and r.stderr.startswith("error: the chain verifies but the state does not agree")
    assert len(r.stderr.strip().splitlines()) == 1


def test_publish_and_deploy_refuse_state_the_log_does_not_support(store: Store, tmp_path: Path) -> None:
    from registry.errors import AuditVerificationError

    draft = setup_mapping(store, tmp_path, "red")
    store.create_blocklist("colours", [draft], "erin")
    with store.engine.begin() as conn:
        conn.execute(text(f"UPDATE feature_mappings SET state = 'approved' WHERE id = {draft}"))
    with pytest.raises(AuditVerificationError, match="approved in the table but draft in the audit log"):
        store.publish_blocklist("colours", "erin")

    red = approved_mapping(store, tmp_path, "blue")
    store.create_blocklist("blues", [red], "erin")
    store.publish_blocklist("blues", "erin")
    store.revoke(red, "rob", "bad")
    with store.engine.begin() as conn:
        conn.execute(text("UPDATE blocklist_versions SET state = 'published'"))
    with pytest.raises(AuditVerificationError, match="published in the table but revoked in the audit log"):
        store.record_deployment(blocklist="blues", version=1, path="/d", manifest_sha256="a" * 64,
                                base_model_hash="b" * 64, actor="erin")


def test_signed_checkpoints_are_checked_by_key_and_several_are_accepted(populated: Store, tmp_path: Path,
                                                                         monkeypatch) -> None:
    import json

    from cli.main import saegov
    from governance.enforcement import signing

    monkeypatch.setenv("SAEGOV_DATABASE_URL", str(populated.engine.url.render_as_string(hide_password=False)))
    run = CliRunner().invoke
    r = run(saegov, ["audit", "checkpoint", "--out", str(tmp_path / "a.json"), "--sign"])
    assert r.exit_code == 1 and "not registered" in r.stderr, r.output  # nobody registered this person's key
    populated.register_signing_key("alice", signing.public_hex(signing.load_or_create_key()), "alice")
    assert run(saegov, ["audit", "checkpoint", "--out", str(tmp_path / "a.json"), "--sign"]).exit_code == 0
    populated.add_concept("late", "colour", "alice")
    assert run(saegov, ["audit", "checkpoint", "--out", str(tmp_path / "b.json")]).exit_code == 0
    r = run(saegov, ["audit", "verify", "--checkpoint", str(tmp_path / "a.json"), "--checkpoint", str(tmp_path / "b.json")])
    assert r.exit_code == 0 and "b.json is unsigned" in r.stderr, r.output
    # A forged tree head: the right size and a made-up root, re-signed by an unregistered key.
    cp = json.loads((tmp_path / "a.json").read_text())
    cp["merkle_root"] = "0" * 64
    key = signing.load_or_create_key(tmp_path / "mallory")
    from governance.formats.checkpoint import Checkpoint

    body = Checkpoint.model_validate({k: v for k, v in cp.items() if k != "signature"})
    cp["signature"] = {"algorithm": "ed25519", "public_key": signing.public_hex(key),
                       "value": signing.sign(key, body.signed_message())}
    (tmp_path / "forged.json").write_text(json.dumps(cp))
    r = run(saegov, ["audit", "verify", "--checkpoint", str(tmp_path / "forged.json")])
    assert r.exit_code == 5 and "not a trusted key" in r.stderr, r.output
    cp["signature"]["public_key"] = signing.public_hex(signing.load_or_create_key())
    (tmp_path / "forged.json").write_text(json.dumps(cp))
    r = run(saegov, ["audit", "verify", "--checkpoint", str(tmp_path / "forged.json")])
    assert r.exit_code == 5 and "signature does not match" in r.stderr, r.output


@pytest.mark.parametrize(("sql", "named"), [
    ("UPDATE mapping_features SET scale = 5 WHERE mapping_id = 1", "feature rows are not its spec's"),
    ("UPDATE feature_mappings SET evidence = '[]' WHERE id = 1", "evidence is not the evidence"),
    ("UPDATE feature_mappings SET spec_sha256 = '" + "0" * 64 + "' WHERE id = 1", "spec hash"),
])
def test_mapping_rows_edited_after_review_are_refused_downstream(store: Store, tmp_path: Path, sql: str,
                                                                  named: str) -> None:
    from registry.errors import AuditVerificationError

    red = approved_mapping(store, tmp_path, "red")
    store.create_blocklist("colours", [red], "erin")
    with store.engine.begin() as conn:
        conn.execute(text(sql))
    with pytest.raises(AuditVerificationError, match=named):
        store.publish_blocklist("colours", "erin")
    assert any(named in p for p in store.verify_state())


def test_verify_since_a_signed_checkpoint_reads_only_what_came_after(populated: Store, tmp_path: Path,
                                                                      monkeypatch) -> None:
    from cli.main import saegov
    from governance.enforcement import signing
    from tests.helpers.registry import drop_audit_triggers

    monkeypatch.setenv("SAEGOV_DATABASE_URL", str(populated.engine.url.render_as_string(hide_password=False)))
    run = CliRunner().invoke
    populated.register_signing_key("alice", signing.public_hex(signing.load_or_create_key()), "alice")
    assert run(saegov, ["audit", "checkpoint", "--out", str(tmp_path / "s.json"), "--sign"]).exit_code == 0
    assert run(saegov, ["audit", "checkpoint", "--out", str(tmp_path / "u.json")]).exit_code == 0
    r = run(saegov, ["audit", "verify", "--since", str(tmp_path / "s.json")])
    assert r.exit_code == 2 and "--since needs --trusted-keys" in r.stderr, r.output  # not the registry's word
    assert run(saegov, ["key", "export", "--out", str(tmp_path / "trusted.json")]).exit_code == 0
    monkeypatch.setenv("SAEGOV_TRUSTED_KEYS", str(tmp_path / "trusted.json"))
    r = run(saegov, ["audit", "verify", "--since", str(tmp_path / "u.json")])
    assert r.exit_code == 5 and "unsigned" in r.stderr
    size = len(populated.audit_events())
    populated.add_concept("after1", "colour", "alice")
    populated.add_concept("after2", "colour", "alice")
    r = run(saegov, ["audit", "verify", "--since", str(tmp_path / "s.json"), "--json"])
    assert r.exit_code == 0, r.output
    import json

    assert json.loads(r.stdout)["size"] == size + 2
    drop_audit_triggers(populated.engine)
    with populated.engine.begin() as conn:
        conn.execute(text(f"UPDATE audit_events SET payload = '{{}}' WHERE seq = {size + 2}"))
    r = run(saegov, ["audit", "verify", "--since", str(tmp_path / "s.json")])
    assert r.exit_code == 5 and f"audit event {size + 2}: hash mismatch" in r.stderr, r.output
    with populated.engine.begin() as conn:
        conn.execute(text(f"DELETE FROM audit_events WHERE seq > {size}"))
    r = run(saegov, ["audit", "verify", "--since", str(tmp_path / "s.json")])
    assert r.exit_code == 5 and "truncated" in r.stderr, r.output
    with populated.engine.begin() as conn:
        conn.execute(text(f"UPDATE audit_events SET hash = '{'e' * 64}' WHERE seq = {size}"))
    r = run(saegov, ["audit", "verify", "--since", str(tmp_path / "s.json")])
    assert r.exit_code == 5 and "the log was cut or rewritten" in r.stderr, r.output


def test_cli_export_verify_log_and_consistency(populated: Store, tmp_path: Path, monkeypatch) -> None:
    """An auditor's round trip: export, verify the file with the trust store only (no registry),
    and an RFC 6962 proof between two signed checkpoints, computed by the registry and checked
    offline."""
    import json

    from cli.main import saegov
    from governance.enforcement import signing

    monkeypatch.setenv("SAEGOV_DATABASE_URL", str(populated.engine.url.render_as_string(hide_password=False)))
    run = CliRunner().invoke
    populated.register_signing_key("alice", signing.public_hex(signing.load_or_create_key()), "alice")
    r = run(saegov, ["policy", "set", "--min-ua", "50", "--require-signatures", "--actor", "alice"])
    assert r.exit_code == 0 and "every action signed" in r.stdout, r.output
    assert run(saegov, ["audit", "checkpoint", "--out", str(tmp_path / "old.json"), "--sign"]).exit_code == 0
    populated.add_concept("late", "colour", "alice")
    assert run(saegov, ["audit", "checkpoint", "--out", str(tmp_path / "new.json"), "--sign"]).exit_code == 0
    assert run(saegov, ["key", "export", "--out", str(tmp_path / "trusted.json")]).exit_code == 0
    r = run(saegov, ["audit", "export", "--out", str(tmp_path / "log.jsonl")])
    assert r.exit_code == 0, r.output
    r = run(saegov, ["audit", "consistency", str(tmp_path / "old.json"), str(tmp_path / "new.json"),
                     "--out", str(tmp_path / "proof.json")])
    assert r.exit_code == 0 and "consistent" in r.stdout, r.output

    monkeypatch.setenv("SAEGOV_DATABASE_URL", "postgresql+psycopg://u@127.0.0.1:1/unreachable")  # no registry
    trusted = ["--trusted-keys", str(tmp_path / "trusted.json")]
    r = run(saegov, ["audit", "verify", "--log", str(tmp_path / "log.jsonl"), "--checkpoint",
                     str(tmp_path / "new.json"), *trusted, "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["size"] == json.loads((tmp_path / "new.json").read_text())["size"] and out["signed"] == 2
    r = run(saegov, ["audit", "consistency", str(tmp_path / "old.json"), str(tmp_path / "new.json"),
                     "--proof", str(tmp_path / "proof.json"), *trusted])
    assert r.exit_code == 0, r.output
    proof = json.loads((tmp_path / "proof.json").read_text())
    proof["hashes"][0] = "ab" * 32
    (tmp_path / "bad-proof.json").write_text(json.dumps(proof))
    r = run(saegov, ["audit", "consistency", str(tmp_path / "old.json"), str(tmp_path / "new.json"),
                     "--proof", str(tmp_path / "bad-proof.json"), *trusted])
    assert r.exit_code == 5 and "not a prefix" in r.stderr, r.output
    # An exported log with one event's payload edited.
    lines = (tmp_path / "log.jsonl").read_text().splitlines()
    i = next(i for i, line in enumerate(lines[1:], start=1) if '\\"red\\"' in line)
    event = json.loads(lines[i])
    event["payload"] = event["payload"].replace('"red"', '"blue"')
    lines[i] = json.dumps(event)
    (tmp_path / "edited.jsonl").write_text("\n".join(lines) + "\n")
    r = run(saegov, ["audit", "verify", "--log", str(tmp_path / "edited.jsonl"), *trusted])
    assert r.exit_code == 5 and f"audit event {event['seq']}: hash mismatch" in r.stderr, r.output


def test_checkpoints_are_signed_by_admins_or_auditors_and_not_postdated(populated: Store, tmp_path: Path,
                                                                        monkeypatch) -> None:
    import json

    from cli.main import saegov
    from governance.enforcement import signing
    from governance.formats.checkpoint import Checkpoint, CheckpointSignature

    monkeypatch.setenv("SAEGOV_DATABASE_URL", str(populated.engine.url.render_as_string(hide_password=False)))
    run = CliRunner().invoke
    mine = signing.load_or_create_key()
    populated.register_signing_key("emil", signing.public_hex(mine), "alice")  # an engineer's registered key
    r = run(saegov, ["audit", "checkpoint", "--out", str(tmp_path / "e.json"), "--sign"])
    assert r.exit_code == 4 and "may not sign checkpoints" in r.stderr, r.output
    cp = populated.audit_checkpoint()
    for name, time in (("engineer.json", cp.time), ("future.json", "2099-01-01T00:00:00.000000Z")):
        body = cp.model_copy(update={"time": time})
        signed = body.model_copy(update={"signature": CheckpointSignature(
            public_key=signing.public_hex(mine), value=signing.sign(mine, body.signed_message()))})
        (tmp_path / name).write_text(json.dumps(signed.model_dump(exclude_none=True)))
    r = run(saegov, ["audit", "verify", "--checkpoint", str(tmp_path / "engineer.json")])
    assert r.exit_code == 5 and "not a trusted key of an admin or auditor" in r.stderr, r.output
    populated.set_actor_role("emil", "auditor", "alice", "now audits")
    r = run(saegov, ["audit", "verify", "--checkpoint", str(tmp_path / "engineer.json")])
    assert r.exit_code == 0, r.output
    r = run(saegov, ["audit", "verify", "--checkpoint", str(tmp_path / "future.json")])
    assert r.exit_code == 5 and "in the future" in r.stderr, r.output
    assert Checkpoint.model_validate(json.loads((tmp_path / "future.json").read_text())).state_sha256
