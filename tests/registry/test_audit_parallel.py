"""The parallel verifier (registry.audit_parallel) says exactly what the serial one says: the
same report on an intact log, the same first bad event on a tampered one, wherever in the ranges
(and at their joins) the tampering is."""
from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import text

from registry import audit, signatures
from registry.audit_parallel import verify_parallel
from registry.errors import AuditVerificationError
from registry.store import Store
from tests.helpers.registry import drop_audit_triggers


@pytest.fixture
def long_log(store: Store) -> tuple[Store, dict[str, Ed25519PrivateKey]]:
    keys = {n: Ed25519PrivateKey.generate() for n in ("alice", "erin")}
    team = Store(store.engine, keyring=keys.get)
    for n in keys:
        team.register_signing_key(n, signatures.public_hex(keys[n]), "alice")
    for i in range(120):
        team.add_concept(f"c{i}", "colour", "erin")
    return team, keys


def serial(store: Store, cps=(), anchors=None) -> audit.VerifyReport:  # noqa: ANN001
    from contextlib import closing

    with store.engine.connect() as conn, closing(audit.iter_event_rows(conn)) as rows:
        return audit.verify_rows(rows, head=audit.read_head(conn), checkpoint=list(cps),
                                 signatures=signatures.SignatureCheck(anchors=anchors))


def both(store: Store, workers: int = 3, cps=(), anchors=None):  # noqa: ANN001, ANN201
    size = store.audit_events()[-1].seq
    results = []
    for fn in (lambda: serial(store, cps, anchors), lambda: verify_parallel(store.engine, list(cps), anchors, size,
                                                                          workers).report):
        try:
            results.append(fn())
        except AuditVerificationError as exc:
            results.append((str(exc), exc.seq))
    return results


def test_an_intact_log_gives_the_same_report(long_log) -> None:  # noqa: ANN001
    store, keys = long_log
    cp = store.audit_checkpoint()
    anchors = frozenset({signatures.public_hex(keys["alice"])})
    s, p = both(store, cps=[cp], anchors=anchors)
    assert s == p and s.signed > 100 and s.merkle_root == cp.merkle_root


@pytest.mark.parametrize("where", [8, 40, 41, 42, 90, 125])
@pytest.mark.parametrize("how", ["payload", "delete", "unsign"])
def test_tampering_anywhere_is_named_alike(long_log, where: int, how: str) -> None:  # noqa: ANN001
    store, _ = long_log
    size = store.audit_events()[-1].seq
    assert size > 125
    drop_audit_triggers(store.engine)
    sql = {"payload": "UPDATE audit_events SET payload = '[]' WHERE seq = :n",
           "delete": "DELETE FROM audit_events WHERE seq = :n",
           "unsign": "UPDATE audit_events SET signer_key = NULL, signature = NULL WHERE seq = :n"}[how]
    with store.engine.begin() as conn:
        conn.execute(text(sql), {"n": where})
    s, p = both(store, workers=3)
    assert isinstance(s, tuple) and s == p


def test_a_parallel_checkpoint_is_the_serial_one(long_log, monkeypatch) -> None:  # noqa: ANN001
    import registry.audit_parallel as par

    store, _ = long_log
    with store.engine.connect() as conn:
        serial_cp = audit.make_checkpoint(conn)
    monkeypatch.setattr(par, "workers_for", lambda engine, size: 3)
    parallel_cp = store.audit_checkpoint()
    same = ("size", "head_hash", "merkle_root", "state_sha256")
    assert [getattr(parallel_cp, f) for f in same] == [getattr(serial_cp, f) for f in same]
    assert store.verify_audit_since(parallel_cp).size == serial_cp.size
    assert store.verify_audit([parallel_cp]).signed > 100


def test_a_stripped_log_fails_the_anchors_in_parallel_too(long_log) -> None:  # noqa: ANN001
    store, keys = long_log
    stranger = frozenset({signatures.public_hex(keys["alice"]), "ab" * 32})
    s, p = both(store, anchors=stranger)
    assert s == p and "registered nowhere" in s[0]
