"""The audit chain: append-only triggers, mutation tests (verify names the first bad event),
checkpoints (truncation and rewriting), RFC 6962 Merkle roots. SQLite and PostgreSQL."""
from __future__ import annotations

import hashlib
import json

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from registry import audit
from registry.errors import AuditVerificationError
from registry.store import Store
from tests.helpers.registry import drop_audit_triggers

N_CONCEPTS = 8  # 6 actor events + 8 concept events = 14 events


@pytest.fixture
def chain(store: Store) -> Store:
    for i in range(N_CONCEPTS):
        store.add_concept(f"c{i}", "style", "erin", description=f"concept {i} ✓", prompts=[f"p{i}"])
    assert store.verify_audit().size == 6 + N_CONCEPTS
    return store


def execute(store: Store, sql: str, **params: object) -> None:
    with store.engine.begin() as conn:
        conn.execute(text(sql), params)


def expect_bad(store: Store, seq: int | None, match: str | None = None) -> AuditVerificationError:
    with pytest.raises(AuditVerificationError, match=match) as info:
        store.verify_audit()
    assert info.value.seq == seq, str(info.value)
    assert f"event {seq}" in str(info.value)
    return info.value


# --- database-enforced append-only ------------------------------------------------------------

@pytest.mark.parametrize("sql", [
    "UPDATE audit_events SET actor = 'mallory' WHERE seq = 3",
    "DELETE FROM audit_events WHERE seq = 3",
    "DELETE FROM audit_events",
    "UPDATE audit_head SET seq = 2, hash = 'x'",
    "DELETE FROM audit_head",
])
def test_triggers_refuse_update_and_delete(chain: Store, sql: str) -> None:
    with pytest.raises(DBAPIError):
        execute(chain, sql)
    chain.verify_audit()


@pytest.mark.parametrize("sql", [
    # rewrite event 3 in place (REPLACE deletes the old row without firing DELETE triggers)
    "INSERT OR REPLACE INTO audit_events (seq, created_at, actor, action, subject, payload, prev_hash, hash) "
    "SELECT seq, created_at, 'mallory', action, subject, payload, prev_hash, hash FROM audit_events WHERE seq = 3",
    # move the chain head back
    "INSERT OR REPLACE INTO audit_head (id, seq, hash) VALUES (1, 2, (SELECT hash FROM audit_events WHERE seq = 2))",
])
def test_sqlite_replace_cannot_rewrite_audit_rows(chain: Store, sql: str) -> None:
    if chain.engine.dialect.name != "sqlite":
        pytest.skip("INSERT OR REPLACE is SQLite's (PostgreSQL's ON CONFLICT UPDATE fires the UPDATE trigger)")
    with pytest.raises(DBAPIError, match="refused"):
        execute(chain, sql)
    chain.verify_audit()
    assert {e.actor for e in chain.audit_events()} >= {"alice"} and "mallory" not in {e.actor for e in chain.audit_events()}


def test_truncate_refused_on_postgres(chain: Store) -> None:
    if chain.engine.dialect.name != "postgresql":
        pytest.skip("TRUNCATE is PostgreSQL only")
    with pytest.raises(DBAPIError):
        execute(chain, "TRUNCATE audit_events")


# --- mutations: any field of any row ----------------------------------------------------------

MUTATIONS = {
    "created_at": "created_at = '2001-01-01T00:00:00.000000Z'",
    "actor": "actor = actor || 'x'",
    "action": "action = 'concept.delete'",
    "subject": "subject = subject || 'x'",
    "payload": "payload = payload || ' '",
    "prev_hash": "prev_hash = '" + "1" * 64 + "'",
    "hash": "hash = '" + "2" * 64 + "'",
}


@pytest.mark.parametrize("target", [1, 7, 6 + N_CONCEPTS])
@pytest.mark.parametrize("field", sorted(MUTATIONS))
def test_changing_any_field_is_detected(chain: Store, field: str, target: int) -> None:
    drop_audit_triggers(chain.engine)
    execute(chain, f"UPDATE audit_events SET {MUTATIONS[field]} WHERE seq = :s", s=target)
    expect_bad(chain, target)


def test_changing_seq_is_detected(chain: Store) -> None:
    drop_audit_triggers(chain.engine)
    execute(chain, "UPDATE audit_events SET seq = 1000 WHERE seq = 5")
    expect_bad(chain, 5, "missing")


def test_deleting_a_middle_row_is_detected(chain: Store) -> None:
    drop_audit_triggers(chain.engine)
    execute(chain, "DELETE FROM audit_events WHERE seq = 9")
    expect_bad(chain, 9, "missing")


def test_swapping_two_rows_is_detected(chain: Store) -> None:
    drop_audit_triggers(chain.engine)
    cols = "created_at, actor, action, subject, payload, prev_hash, hash"
    with chain.engine.begin() as conn:
        a = conn.execute(text(f"SELECT {cols} FROM audit_events WHERE seq = 8")).one()
        b = conn.execute(text(f"SELECT {cols} FROM audit_events WHERE seq = 11")).one()
        for seq, row in ((8, b), (11, a)):
            conn.execute(text("UPDATE audit_events SET created_at=:c, actor=:a, action=:ac, subject=:s, "
                              "payload=:p, prev_hash=:ph, hash=:h WHERE seq=:seq"),
                         dict(c=row[0], a=row[1], ac=row[2], s=row[3], p=row[4], ph=row[5], h=row[6], seq=seq))
    expect_bad(chain, 8)


def test_truncating_the_tail_is_detected(chain: Store) -> None:
    drop_audit_triggers(chain.engine)
    size = 6 + N_CONCEPTS
    execute(chain, "DELETE FROM audit_events WHERE seq > :s", s=size - 3)
    expect_bad(chain, size - 2, "truncated")


def _rewrite_chain(store: Store, keep: int, tamper_seq: int | None = None) -> None:
    """An attacker with full table rights: keep the first `keep` events (optionally altering one)
    and recompute every hash and the head so that plain `verify` passes."""
    drop_audit_triggers(store.engine)
    with store.engine.begin() as conn:
        rows = conn.execute(text("SELECT seq, created_at, actor, action, subject, payload "
                                 "FROM audit_events ORDER BY seq")).all()
        conn.execute(text("DELETE FROM audit_events"))
        prev = audit.GENESIS_HASH
        for seq, created_at, actor, action, subject, payload in rows[:keep]:
            if seq == tamper_seq:
                payload = payload.replace("concept", "CONCEPT")
            h = audit.event_hash(seq, prev, created_at, actor, action, subject, payload)
            conn.execute(text("INSERT INTO audit_events (seq, created_at, actor, action, subject, payload,"
                              " prev_hash, hash) VALUES (:a,:b,:c,:d,:e,:f,:g,:h)"),
                         dict(a=seq, b=created_at, c=actor, d=action, e=subject, f=payload, g=prev, h=h))
            prev = h
        conn.execute(text("UPDATE audit_head SET seq = :s, hash = :h"), dict(s=keep, h=prev))


def test_checkpoint_detects_truncation_before_it(chain: Store) -> None:
    cp = chain.audit_checkpoint()
    assert cp.size == 6 + N_CONCEPTS
    chain.add_concept("later", "object", "erin")
    chain.verify_audit(cp)  # growth after a checkpoint is fine
    _rewrite_chain(chain, keep=10)
    chain.verify_audit()  # internally consistent again ...
    with pytest.raises(AuditVerificationError, match="event 11 is missing.*truncated") as info:
        chain.verify_audit(cp)  # ... but not with the checkpoint
    assert info.value.seq == 11


def test_checkpoint_detects_rewriting_before_it(chain: Store) -> None:
    cp = chain.audit_checkpoint()
    _rewrite_chain(chain, keep=6 + N_CONCEPTS, tamper_seq=8)
    chain.verify_audit()
    with pytest.raises(AuditVerificationError, match="rewritten"):
        chain.verify_audit(cp)


def test_checkpoint_matches_recomputed_merkle_root(chain: Store) -> None:
    cp = chain.audit_checkpoint()
    leaves = [bytes.fromhex(e.hash) for e in chain.audit_events()]
    assert cp.merkle_root == reference_mth(leaves)
    assert cp.head_hash == leaves[-1].hex()


# --- hashing ----------------------------------------------------------------------------------

def test_event_hash_covers_every_field() -> None:
    args = (3, "a" * 64, "2025-01-01T00:00:00.000000Z", "rob", "mapping.approve", "mapping:1", '{"x":1}')
    base = audit.event_hash(*args)
    for i in range(len(args)):
        changed = list(args)
        changed[i] = changed[i] + 1 if isinstance(changed[i], int) else changed[i] + "!"
        assert audit.event_hash(*changed) != base
    # field boundaries are unambiguous
    assert audit.event_hash(1, "p", "t", "ab", "c", "s", "{}") != audit.event_hash(1, "p", "t", "a", "bc", "s", "{}")


def test_canonical_json_is_stable() -> None:
    assert audit.canonical_json({"b": [1, 2], "a": "é"}) == '{"a":"é","b":[1,2]}'
    with pytest.raises(ValueError):
        audit.canonical_json({"x": float("nan")})


def reference_mth(leaves: list[bytes]) -> str:
    """RFC 6962 section 2.1, literally (recursive, largest power of two < n)."""
    def mth(d: list[bytes]) -> bytes:
        n = len(d)
        if n == 0:
            return hashlib.sha256(b"").digest()
        if n == 1:
            return hashlib.sha256(b"\x00" + d[0]).digest()
        k = 1
        while k * 2 < n:
            k *= 2
        return hashlib.sha256(b"\x01" + mth(d[:k]) + mth(d[k:])).digest()
    return mth(leaves).hex()


def test_merkle_root_matches_rfc6962_definition() -> None:
    for n in range(0, 40):
        leaves = [bytes([i]) * (i % 5) for i in range(n)]
        assert audit.merkle_root(leaves) == reference_mth(leaves), n


def test_merkle_root_known_vectors() -> None:
    # Test vectors of the certificate-transparency reference implementation.
    data = [bytes.fromhex(x) for x in ["", "00", "10", "2021", "3031", "40414243",
                                        "5051525354555657", "606162636465666768696a6b6c6d6e6f"]]
    assert audit.merkle_root([]) == hashlib.sha256(b"").hexdigest()
    assert audit.merkle_root(data[:1]) == "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"
    assert audit.merkle_root(data) == "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328"


def test_payload_is_stored_as_hashed_text(chain: Store) -> None:
    with chain.engine.connect() as conn:
        payload = conn.execute(text("SELECT payload FROM audit_events WHERE seq = 7")).scalar_one()
    assert payload == audit.canonical_json(json.loads(payload))


@pytest.mark.parametrize("odd", ['quote " and \\\\ backslash', "newline\nand\ttab\x01", "ünïcødé ✓ \u2028", ""])
def test_verify_recomputes_exactly_what_append_hashed(odd: str) -> None:
    rows, prev = [], audit.GENESIS_HASH
    for seq in (1, 2):
        args = (seq, prev, "2025-01-01T00:00:00.000000Z" + odd, "a" + odd, odd, "s" + odd, '{"x":"' + odd + '"}')
        h = audit.event_hash(*args)
        rows.append((*args, h))
        prev = h
    rows = [(seq, t, a, ac, s, p, ph, h, None, None) for seq, ph, t, a, ac, s, p, h in rows]
    assert audit.verify_rows(rows).size == 2


def test_verify_refuses_columns_that_are_no_longer_text() -> None:
    """A column whose type was changed reads back as something else than the text that was
    hashed: a jsonb payload as a dict (whose str() could even equal the hashed text), a NULL as
    None. Each is refused in the verifier's own words, never passed, never a raw TypeError."""
    created, payload = "2025-01-01T00:00:00.000000Z", "{}"
    h = audit.event_hash(1, audit.GENESIS_HASH, created, "rob", "x.y", "s", payload)
    good = (1, created, "rob", "x.y", "s", payload, audit.GENESIS_HASH, h, None, None)
    assert audit.verify_rows([good]).size == 1
    for column, value in ((5, {}), (5, None), (5, b"{}"), (1, None), (2, 7)):
        row = list(good)
        row[column] = value
        with pytest.raises(AuditVerificationError, match="audit event 1: a hashed column is not text"):
            audit.verify_rows([tuple(row)])
