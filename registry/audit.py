"""The tamper-evident audit log: a sha256 hash chain over append-only rows, verified by
streaming, plus RFC 6962 Merkle-tree checkpoints that detect truncation and rewriting.

Event hash = sha256(header + "\\n" + payload), where header is the canonical JSON array
[seq, prev_hash, created_at, actor, action, subject] and payload the canonical JSON text of the
event's payload exactly as stored. Sequence numbers start at 1; the first prev_hash is 64 zeros.
"""
from __future__ import annotations

import hashlib
import json
from contextlib import closing, contextmanager
from pathlib import Path
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator, Sequence

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import Connection, Engine, select, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from governance.common.jsonio import canonical_json
from governance.common.timeutil import iso_utc, utcnow
from governance.formats.checkpoint import Checkpoint
from registry.errors import AuditVerificationError
from registry.signatures import TRACKED_ACTIONS, SignatureCheck, sign_event
from registry.models import GENESIS_HASH, AuditEvent, AuditHead

_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), sort_keys=True).encode
# What that encoder uses for each string (the C implementation when available).
_encode_str = getattr(json.encoder, "c_encode_basestring", None) or json.encoder.py_encode_basestring



def event_hash(seq: int, prev_hash: str, created_at: str, actor: str, action: str,
               subject: str, payload: str) -> str:
    header = _dumps([seq, prev_hash, created_at, actor, action, subject])
    return hashlib.sha256(f"{header}\n{payload}".encode()).hexdigest()


def lock_head(session: Session) -> AuditHead:
    """Lock the chain head for the rest of the transaction (FOR UPDATE on PostgreSQL;
    SQLite transactions are BEGIN IMMEDIATE, so already exclusive)."""
    return session.execute(select(AuditHead).where(AuditHead.id == 1).with_for_update()).scalar_one()


def append_event(session: Session, head: AuditHead, actor: str, action: str, subject: str,
                 payload: dict[str, Any], signer: Ed25519PrivateKey | None = None) -> None:
    """Append one event in the caller's transaction; `head` must come from `lock_head`.
    With `signer` (the actor's own key), the event carries their signature over its hash
    (registry.signatures)."""
    append_events(session, head, actor, [(action, subject, payload)], signer=signer)


# --- Merkle tree (RFC 6962 section 2.1) -------------------------------------------------------

def merkle_leaf(data: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + data).digest()


def merkle_root(leaves: Iterable[bytes]) -> str:
    """MTH over the given leaf *data* (here: each event's 32-byte hash). Pairing bottom-up and
    carrying an odd last node up unchanged gives the same tree as RFC 6962's
    largest-power-of-two split. The empty tree's root is sha256("")."""
    level = [merkle_leaf(x) for x in leaves]
    if not level:
        return hashlib.sha256(b"").hexdigest()
    sha = hashlib.sha256
    while len(level) > 1:
        nxt = [sha(b"\x01" + level[i] + level[i + 1]).digest() for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            nxt.append(level[-1])
        level = nxt
    return level[0].hex()


def _node(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def _subtree_root(leaves: list[bytes], lo: int, hi: int) -> bytes:
    return bytes.fromhex(merkle_root(leaves[lo:hi]))


def consistency_proof(leaves: list[bytes], old_size: int) -> list[str]:
    """RFC 6962 2.1.2 PROOF(m, D[n]) for m = `old_size`, n = len(leaves) (leaf *data*: the event
    hashes): the hashes that show the tree of the first m events is a prefix of the tree of all n.
    Cost: one pass over the n leaves."""
    n = len(leaves)
    if not 0 < old_size <= n:
        raise ValueError(f"a consistency proof needs 0 < old size <= new size (got {old_size}, {n})")
    proof: list[bytes] = []

    def sub(m: int, lo: int, hi: int, whole: bool) -> None:
        size = hi - lo
        if m == size:
            if not whole:
                proof.append(_subtree_root(leaves, lo, hi))
            return
        k = 1 << ((size - 1).bit_length() - 1)  # the largest power of two below size
        if m <= k:
            sub(m, lo, lo + k, whole)
            proof.append(_subtree_root(leaves, lo + k, hi))
        else:
            sub(m - k, lo + k, hi, False)
            proof.append(_subtree_root(leaves, lo, lo + k))

    sub(old_size, 0, n, True)
    return [h.hex() for h in proof]


def consistency_holds(old_size: int, new_size: int, old_root: str, new_root: str, proof: list[str]) -> bool:
    """RFC 9162 2.1.4.2: does `proof` show that the tree (old_size, old_root) is a prefix of the
    tree (new_size, new_root)? Needs nothing but the two tree heads and the proof."""
    try:
        first, second, path = bytes.fromhex(old_root), bytes.fromhex(new_root), [bytes.fromhex(h) for h in proof]
    except ValueError:
        return False
    if not 0 < old_size <= new_size:
        return False
    if old_size == new_size:
        return not path and first == second
    if old_size & (old_size - 1) == 0:  # a power of two: the old root is itself a node of the path
        path = [first, *path]
    if not path:
        return False
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn, sn = fn >> 1, sn >> 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr, sr = _node(c, fr), _node(c, sr)
            while not fn & 1 and fn != 0:
                fn, sn = fn >> 1, sn >> 1
        else:
            sr = _node(sr, c)
        fn, sn = fn >> 1, sn >> 1
    return fr == first and sr == second and sn == 0


def append_events(session: Session, head: AuditHead, actor: str, events: Sequence[tuple[str, str, dict[str, Any]]],
                  signer: Ed25519PrivateKey | None = None) -> None:
    """Append many events (action, subject, payload) in the caller's transaction with one
    multi-row INSERT: the same chain, hashes and signatures as `append_event` one by one (a
    batch shares one timestamp), at a fraction of the per-event cost."""
    created_at = iso_utc(utcnow())
    seq, prev = head.seq, head.hash
    rows: list[dict[str, Any]] = []
    for action, subject, payload in events:
        seq += 1
        payload_text = canonical_json(payload)
        digest = event_hash(seq, prev, created_at, actor, action, subject, payload_text)
        signer_key, signature = sign_event(signer, digest) if signer is not None else (None, None)
        rows.append({"seq": seq, "created_at": created_at, "actor": actor, "action": action, "subject": subject,
                     "payload": payload_text, "prev_hash": prev, "hash": digest, "signer_key": signer_key,
                     "signature": signature})
        prev = digest
    if rows:
        insert_rows(session, AuditEvent.__table__, rows)
        head.seq, head.hash = seq, prev
        session.flush()


def insert_rows(session: Session, table: Any, rows: list[dict[str, Any]], returning: str | None = None) -> list[Any]:
    """INSERT many rows in the session's transaction (returning that column of each, in order).

    On PostgreSQL through psycopg's own executemany (one prepared statement, pipelined): the
    single multi-row statement SQLAlchemy would build costs more to parse, client and server side,
    than the inserts themselves. Elsewhere SQLAlchemy's multi-row INSERT."""
    from sqlalchemy import insert

    if not rows:
        return []
    conn = session.connection()
    if conn.dialect.name != "postgresql":
        stmt = insert(table)
        if returning is None:
            session.execute(stmt, rows)
            return []
        return list(session.scalars(stmt.returning(table.c[returning], sort_by_parameter_order=True), rows))
    cols = list(rows[0])
    sql = (f"INSERT INTO {table.name} ({', '.join(cols)}) VALUES ({', '.join(['%s'] * len(cols))})"
           + (f" RETURNING {returning}" if returning else ""))
    cur = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
    try:
        cur.executemany(sql, [tuple(r[c] for c in cols) for r in rows], returning=returning is not None)
        out: list[Any] = []
        if returning is not None:
            while True:
                out.append(cur.fetchone()[0])
                if not cur.nextset():
                    break
        return out
    finally:
        cur.close()


# --- verification -----------------------------------------------------------------------------

_COLUMNS = "seq, created_at, actor, action, subject, payload, prev_hash, hash, signer_key, signature"


@contextmanager
def reading(engine: Engine) -> Iterator[Connection]:
    """A connection reading one snapshot for every statement until its transaction ends
    (PostgreSQL: REPEATABLE READ; SQLite's transaction already is one): the verifier reads the
    head and then the rows in several statements, and an event appended between them must not
    read as a chain longer than its head."""
    with engine.connect() as conn:
        if conn.dialect.name == "postgresql":
            conn.execution_options(isolation_level="REPEATABLE READ")
        yield conn


def iter_event_rows(conn: Connection, batch: int = 50000, after: int = 0,
                    until: int | None = None) -> Iterator[tuple]:
    """Stream (seq, created_at, actor, action, subject, payload, prev_hash, hash, signer_key,
    signature) by seq, from the event after `after` (up to `until` when given)."""
    after = int(after)
    upper = 2**63 - 1 if until is None else int(until)
    cur = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
    try:
        if conn.dialect.name == "sqlite":
            cur.execute(f"SELECT {_COLUMNS} FROM audit_events WHERE seq > ? AND seq <= ? ORDER BY seq", (after, upper))
            # Iterating the cursor streams like fetchmany without building lists: ~30 % less time
            # reading a long log (benchmarks/audit.py).
            yield from cur
            return
        # PostgreSQL: pages of `batch` sequence numbers on a client-side cursor, each an index
        # range scan. A server-side cursor (SQLAlchemy's stream_results) costs a round trip per few
        # dozen rows: 4.1 s against 1.9 s for 1,000,000 rows (benchmarks/audit.py --url). Pages
        # are ranges of seq, not LIMITs after the last row read: a second row with a seq already
        # read (possible once someone drops the primary key) is always in its range, hence read
        # and refused by the walk, where a LIMIT could end a page between the two.
        sql = f"SELECT {_COLUMNS} FROM audit_events WHERE seq > %s AND seq <= %s ORDER BY seq"
        while after < upper:
            top = min(upper, after + batch)
            cur.execute(sql, (after, top))
            rows = cur.fetchall()
            if rows:
                yield from rows
                after = top
                continue
            # An empty page: jump the gap (a chain has none; a tampered one may have a huge one).
            cur.execute("SELECT min(seq) FROM audit_events WHERE seq > %s AND seq <= %s", (top, upper))
            nxt = cur.fetchone()[0]
            if nxt is None:
                return
            after = max(top, int(nxt) - 1)  # forward even past a fractional seq (a changed column)
    except conn.dialect.loaded_dbapi.Error as exc:
        # The raw cursor's errors, as SQLAlchemy's: the store reports them in one line.
        raise DBAPIError.instance(None, None, exc, conn.dialect.loaded_dbapi.Error) from None
    finally:
        cur.close()


@dataclass(frozen=True)
class VerifyReport:
    size: int
    head_hash: str
    merkle_root: str | None = None
    signed: int = 0  # events whose actor signature was checked
    # The hashes kept (`keep_leaves`, checkpoints): working data, not part of what a report says.
    leaves: list[bytes] = field(default_factory=list, compare=False, repr=False)


def verify_rows(rows: Iterable[tuple], head: tuple[int, str] | None = None,
                checkpoint: Checkpoint | Sequence[Checkpoint] | None = None, start: tuple[int, str] | None = None,
                signatures: SignatureCheck | None = None, keep_leaves: int = 0) -> VerifyReport:
    """Recompute the chain. Raises `AuditVerificationError` naming the first bad event.

    `head` is the (seq, hash) recorded in `audit_head`; a chain shorter than it was truncated.
    With a checkpoint (or several, in the same single pass), the first `checkpoint.size` events
    must reproduce its head hash and Merkle root (detects a chain rebuilt or cut back before it). With `start`
    (size, head hash of a trusted checkpoint), `rows` are the events after it, linked from that
    head: the cost is the events after it (`audit verify --since`). With `signatures`, every
    event also passes its rules (registry.signatures). Rows are the 10 columns of
    `iter_event_rows`. The hashes of the events up to `keep_leaves` (and up to the largest
    checkpoint) come back in the report's `leaves`.
    """
    sha256 = hashlib.sha256
    q = _encode_str  # same bytes as the canonical JSON array of event_hash, built faster
    expected_seq, prev = (start[0] + 1, start[1]) if start else (1, GENESIS_HASH)
    cps = [checkpoint] if isinstance(checkpoint, Checkpoint) else list(checkpoint or [])
    cp_size = max([c.size for c in cps] + [keep_leaves])
    leaves: list[bytes] = []
    plain_ok = signatures.plain_passed if signatures is not None else frozenset()
    # Unpacked in the loop header: slicing each row first took about a tenth of the loop's time.
    for seq, created_at, actor, action, subject, payload, prev_hash, stored, signer_key, signature in rows:
        if seq != expected_seq:
            if seq > expected_seq:
                raise AuditVerificationError(
                    f"audit event {expected_seq} is missing (next stored event is {seq})",
                    expected_seq)
            raise AuditVerificationError(f"audit event {seq} is out of order", seq)
        if prev_hash != prev:
            raise AuditVerificationError(
                f"audit event {seq}: previous-hash link broken (chain rewritten at or before it)",
                seq)
        # prev_hash equals the previous (hex) hash here, so its JSON string is just its quotes.
        try:  # `+ payload`, not `{payload}` in the f-string: a payload that is no longer text must fail
            digest = sha256((f'[{seq},"{prev_hash}",{q(created_at)},{q(actor)},{q(action)},{q(subject)}]\n'
                             + payload).encode()).hexdigest()
        except TypeError:  # a column's type was changed (a jsonb payload reads back as a dict, NULLs)
            raise AuditVerificationError(f"audit event {seq}: a hashed column is not text (its type was changed)",
                                         seq) from None
        if digest != stored:
            raise AuditVerificationError(f"audit event {seq}: hash mismatch (event altered)", seq)
        if signatures is not None and (signer_key or signature or (actor, action) not in plain_ok):
            # (the check itself would return at once for an unsigned action its actor already
            # passed since the last tracked event: most of a long log, so not even called)
            signatures.check(seq, actor, action, subject, payload, stored, signer_key, signature)
        if seq <= cp_size:
            leaves.append(bytes.fromhex(stored))
        prev = stored
        expected_seq += 1
    size = expected_seq - 1
    if signatures is not None:
        signatures.finish()
    if head is not None:
        head_seq, head_hash = head
        if head_seq > size:
            raise AuditVerificationError(
                f"audit event {size + 1} is missing: chain ends at {size} but its head records "
                f"{head_seq} (truncated)", size + 1)
        if head_seq < size or head_hash != prev:
            raise AuditVerificationError(
                f"audit head ({head_seq}) does not match the chain's last event ({size})", size)
    root = check_checkpoints(size, leaves, cps)
    return VerifyReport(size=size, head_hash=prev, merkle_root=root,
                        signed=signatures.signed if signatures is not None else 0, leaves=leaves)


def check_checkpoints(size: int, leaves: list[bytes], cps: Sequence[Checkpoint]) -> str | None:
    """Each checkpoint's first `size` events (their hashes: `leaves`, from event 1) must give its
    head hash and Merkle root; returns the last root computed."""
    root = None
    for cp in sorted(cps, key=lambda c: c.size):
        if size < cp.size:
            raise AuditVerificationError(
                f"audit event {size + 1} is missing: chain has {size} events, checkpoint of "
                f"{cp.time} recorded {cp.size} (truncated)", size + 1)
        root = merkle_root(leaves[:cp.size])
        last = leaves[cp.size - 1].hex() if cp.size else GENESIS_HASH
        if last != cp.head_hash or root != cp.merkle_root:
            raise AuditVerificationError(
                f"audit events 1..{cp.size} differ from the checkpoint of "
                f"{cp.time} (history rewritten)", None)
    return root


def check_bounds(conn: Connection) -> None:
    """Sequence numbers start at 1: a row at 0 or below (which the walk from event 1 never
    reads, while the store's readers of the log would) was put there behind the log's back.
    Rows beyond the head are the walk's to name (it reads them and compares with the head)."""
    lo = conn.execute(text("SELECT min(seq) FROM audit_events")).scalar()
    if lo is not None and (isinstance(lo, (str, bytes)) or lo < 1):  # text: the column's type was changed
        raise AuditVerificationError(f"audit event {lo!r}: sequence numbers start at 1 (a row inserted behind the "
                                     "log's back)", None)


def check_all_walked(conn: Connection, size: int) -> None:
    """Every row of the table is one the walk verified (events 1..`size`, read in this
    connection's snapshot). The walk reads integer sequence numbers in order; a row whose seq is
    NULL, fractional, text or past the largest integer (once someone changes the column) is never
    read by it, while the store's other readers of the log (the policy in force, `audit log`)
    would read it: count(*) counts every row, whatever its seq."""
    n = conn.execute(text("SELECT count(*) FROM audit_events")).scalar()
    if n != size:
        raise AuditVerificationError(
            f"audit_events holds {n} rows but the chain has {size} events: {n - size} rows outside the "
            f"chain's sequence numbers 1..{size} (put there behind the log's back)", None)


def verify_stored(conn: Connection, *, after: int = 0, until: int | None = None, to_head: bool = True,
                  **kwargs: Any) -> VerifyReport:
    """`verify_rows` over the stored events after `after` (up to `until`), read in `conn`'s
    snapshot (`reading`). With `to_head` (the walk reaches the end of the log) the chain must end
    at the recorded head and every row of the table must be one the walk read
    (`check_all_walked`). `kwargs` go to `verify_rows`."""
    with closing(iter_event_rows(conn, after=after, until=until)) as rows:
        report = verify_rows(rows, head=read_head(conn) if to_head else None, **kwargs)
    if to_head:
        check_all_walked(conn, report.size)
    return report


def read_head(conn: Connection) -> tuple[int, str]:
    row = conn.execute(text("SELECT seq, hash FROM audit_head WHERE id = 1")).one()
    return int(row[0]), str(row[1])


def make_checkpoint(conn: Connection) -> Checkpoint:
    """Verify the whole chain and every signature rule, then describe it: size, head hash, Merkle
    root, time, and the digest of the signature rules' state at its head (for `--since`)."""
    check_bounds(conn)
    check = SignatureCheck()
    report = verify_stored(conn, signatures=check, keep_leaves=2**63 - 1)
    return Checkpoint(size=report.size, head_hash=report.head_hash, merkle_root=merkle_root(report.leaves),
                      time=iso_utc(utcnow()), state_sha256=check.state_digest())


def replayed_state(conn: Connection, upto: int | None = None, anchors: frozenset[str] | None = None) -> SignatureCheck:
    """The signature rules' state after event `upto` (all events when None), replayed from the
    tracked events alone without checking them (the caller vouches for them another way: a
    checkpoint's state digest, an earlier range's verification)."""
    check = SignatureCheck(anchors=anchors)
    rows = conn.execute(select(AuditEvent.actor, AuditEvent.action, AuditEvent.subject, AuditEvent.payload,
                               AuditEvent.signer_key)
                        .where(AuditEvent.seq >= 1, AuditEvent.seq <= (2**63 - 1 if upto is None else upto),
                               AuditEvent.action.in_(TRACKED_ACTIONS))
                        .order_by(AuditEvent.seq))
    for row in rows:
        check.prime(*row)
    return check


def verify_exported(path: Path, checkpoints: Sequence[Checkpoint] = (),
                    anchors: frozenset[str] | None = None) -> VerifyReport:
    """Verify an exported log (governance.formats.audit_log) with no registry: the chain up to
    its stated head, every signature and key rule of registry.signatures (roots of the key
    history among `anchors` when given), and the checkpoints."""
    from governance.formats.audit_log import read_audit_log

    header, rows = read_audit_log(path)
    with closing(rows):
        return verify_rows(rows, head=(header.size, header.head_hash), checkpoint=list(checkpoints),
                           signatures=SignatureCheck(anchors=anchors))
