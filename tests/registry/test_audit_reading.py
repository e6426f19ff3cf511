"""Reading the chain for verification (registry.audit.iter_event_rows, audit.reading): the rows
come out the same whatever the page size, a gap is named where it is, and on PostgreSQL an
event appended while the verifier reads does not make an intact log read as a broken one."""
from __future__ import annotations

import itertools
from collections.abc import Iterator
from contextlib import closing, contextmanager

import pytest
from sqlalchemy import text

from registry import audit, signatures
from registry.errors import AuditVerificationError
from registry.store import Store
from tests.helpers.registry import ACTORS, drop_audit_triggers


def _fill(store: Store, n: int) -> None:
    for i in range(n):
        store.add_concept(f"c{i}", "colour", "erin")


@contextmanager
def _log(url: str) -> Iterator[Store]:
    """A store at `url` with ACTORS added and 12 concepts (their events) after them."""
    store = Store.open(url)
    try:
        store.add_actor("alice", "admin", None)
        for name, role in ACTORS[1:]:
            store.add_actor(name, role, "alice")
        _fill(store, 12)
        yield store
    finally:
        store.close()


def _rows(store: Store, batch: int, after: int = 0, until: int | None = None) -> list[tuple]:
    with audit.reading(store.engine) as conn, closing(audit.iter_event_rows(conn, batch, after, until)) as rows:
        return list(rows)


def test_pages_give_the_same_rows_as_one_read(store: Store) -> None:
    _fill(store, 23)
    whole = _rows(store, batch=10_000)
    assert [r[0] for r in whole] == list(range(1, len(whole) + 1)) and len(whole) > 23
    for batch in (1, 5, 7, len(whole), len(whole) + 1):
        assert _rows(store, batch) == whole
    # a range, as the parallel verifier's workers read it
    assert _rows(store, batch=4, after=6, until=17) == whole[6:17]


def test_a_gap_is_named_the_same_with_small_pages(store: Store) -> None:
    _fill(store, 20)
    drop_audit_triggers(store.engine)
    with store.engine.begin() as conn:
        conn.execute(text("DELETE FROM audit_events WHERE seq = 12"))
    for batch in (3, 11, 12, 10_000):
        with audit.reading(store.engine) as conn, closing(audit.iter_event_rows(conn, batch=batch)) as rows:
            with pytest.raises(AuditVerificationError, match="event 12 is missing") as info:
                audit.verify_rows(rows, head=audit.read_head(conn), signatures=signatures.SignatureCheck())
        assert info.value.seq == 12


@pytest.mark.postgres
def test_an_append_while_reading_is_not_a_broken_log(postgres_url: str) -> None:
    with _log(postgres_url) as store:
        with audit.reading(store.engine) as conn, closing(audit.iter_event_rows(conn, batch=5)) as rows:
            head = audit.read_head(conn)
            first = list(itertools.islice(rows, 7))  # into the second page
            store.add_concept("late", "colour", "erin")  # another connection, committed
            report = audit.verify_rows(itertools.chain(first, rows), head=head, signatures=signatures.SignatureCheck())
        assert report.size == head[0]
        assert store.verify_audit().size == head[0] + 1


@pytest.mark.postgres
@pytest.mark.parametrize("batch", [5, 6, 10_000])
def test_a_second_row_with_a_read_seq_is_refused_at_a_page_edge(postgres_url: str, batch: int) -> None:
    """Someone who can drop the primary key adds a second event 10 (a page ends there with
    batch 5): every reader of the log would show it, so the walk must read it and refuse."""
    with _log(postgres_url) as store:
        drop_audit_triggers(store.engine)
        with store.engine.begin() as conn:
            conn.execute(text("ALTER TABLE audit_events DROP CONSTRAINT pk_audit_events"))
            conn.execute(text("INSERT INTO audit_events SELECT * FROM audit_events WHERE seq = 10"))
            conn.execute(text("UPDATE audit_events SET payload = '{}' WHERE ctid = (SELECT max(ctid) FROM "
                              "audit_events WHERE seq = 10)"))
        with audit.reading(store.engine) as conn, closing(audit.iter_event_rows(conn, batch=batch)) as rows:
            assert sum(1 for r in rows if r[0] == 10) == 2
        with pytest.raises(AuditVerificationError, match="event 10"):
            store.verify_audit()


@pytest.mark.parametrize("seq", ["1e20", "'x'", "NULL", "5.5"])
def test_a_row_outside_the_chains_sequence_numbers_is_refused(db_url: str, seq: str, monkeypatch) -> None:
    """A row the walk never reads (its seq NULL, fractional, text or past the largest integer,
    once the column's type or constraints are changed) would still be read by the store's other
    readers, e.g. the policy in force: every verifier counts the table's rows."""
    import registry.audit_parallel as par

    if seq == "NULL" and db_url.startswith("sqlite"):
        pytest.skip("SQLite keeps the column NOT NULL (changing it means rebuilding the table)")
    with _log(db_url) as store:
        cp = store.audit_checkpoint()
        drop_audit_triggers(store.engine)
        with store.engine.begin() as conn:
            if conn.dialect.name == "postgresql":  # the column has to be changed first
                conn.execute(text("ALTER TABLE audit_events DROP CONSTRAINT pk_audit_events"))
                conn.execute(text("ALTER TABLE audit_events ALTER COLUMN seq DROP NOT NULL"))
                conn.execute(text("ALTER TABLE audit_events ALTER COLUMN seq TYPE "
                                  + ("text" if seq == "'x'" else "numeric")))
            three = "'3'" if seq == "'x'" and conn.dialect.name == "postgresql" else "3"
            conn.execute(text(f"INSERT INTO audit_events (seq, created_at, actor, action, subject, payload, prev_hash, "
                              f"hash) SELECT {seq}, created_at, actor, action, subject, payload, prev_hash, hash "
                              f"FROM audit_events WHERE seq = {three}"))
        checks = [store.verify_audit, store.audit_checkpoint, lambda: store.verify_audit_since(cp)]
        monkeypatch.setattr(par, "workers_for", lambda engine, size: 3)  # the parallel verifier's last range too
        checks.append(store.verify_audit)
        for check in checks:
            with pytest.raises(Exception) as info:
                check()
            assert isinstance(info.value, AuditVerificationError) or "database error" in str(info.value), info.value
