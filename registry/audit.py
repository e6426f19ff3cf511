"""The tamper-evident audit log: a sha256 hash chain over append-only rows, verified by
streaming, plus RFC 6962 Merkle-tree checkpoints that detect truncation and rewriting.

Event hash = sha256(header + "\\n" + payload), where header is the canonical JSON array
[seq, prev_hash, created_at, actor, action, subject] and payload the canonical JSON text of the
event's payload exactly as stored. Sequence numbers start at 1; the first prev_hash is 64 zeros.
"""
from __future__ import annotations

import hashlib
import json
from contextlib import closing
from dataclasses import dataclass
from typing import Any, Iterable, Iterator

from sqlalchemy import Connection, select, text
from sqlalchemy.orm import Session

from governance.common.jsonio import canonical_json
from governance.common.timeutil import iso_utc, utcnow
from governance.formats.checkpoint import Checkpoint
from registry.errors import AuditVerificationError
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
                 payload: dict[str, Any]) -> AuditEvent:
    """Append one event in the caller's transaction; `head` must come from `lock_head`."""
    seq = head.seq + 1
    created_at = iso_utc(utcnow())
    payload_text = canonical_json(payload)
    digest = event_hash(seq, head.hash, created_at, actor, action, subject, payload_text)
    event = AuditEvent(seq=seq, created_at=created_at, actor=actor, action=action,
                       subject=subject, payload=payload_text, prev_hash=head.hash, hash=digest)
    session.add(event)
    head.seq, head.hash = seq, digest
    session.flush()
    return event


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


# --- verification -----------------------------------------------------------------------------

_COLUMNS = "seq, created_at, actor, action, subject, payload, prev_hash, hash"


def iter_event_rows(conn: Connection, batch: int = 20000, after: int = 0) -> Iterator[tuple]:
    """Stream (seq, created_at, actor, action, subject, payload, prev_hash, hash) by seq, from
    the event after `after`."""
    after = int(after)
    if conn.dialect.name == "sqlite":
        cur = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
        try:
            cur.execute(f"SELECT {_COLUMNS} FROM audit_events WHERE seq > ? ORDER BY seq", (after,))
            while rows := cur.fetchmany(batch):
                yield from rows
        finally:
            cur.close()
        return
    result = conn.execution_options(stream_results=True, yield_per=batch).execute(
        text(f"SELECT {_COLUMNS} FROM audit_events WHERE seq > :after ORDER BY seq"), {"after": after})
    for part in result.partitions():
        yield from part


@dataclass(frozen=True)
class VerifyReport:
    size: int
    head_hash: str
    merkle_root: str | None = None


def verify_rows(rows: Iterable[tuple], head: tuple[int, str] | None = None,
                checkpoint: Checkpoint | None = None, start: tuple[int, str] | None = None) -> VerifyReport:
    """Recompute the chain. Raises `AuditVerificationError` naming the first bad event.

    `head` is the (seq, hash) recorded in `audit_head`; a chain shorter than it was truncated.
    With a checkpoint, the first `checkpoint.size` events must reproduce its head hash and
    Merkle root (detects a chain rebuilt or cut back before the checkpoint). With `start`
    (size, head hash of a trusted checkpoint), `rows` are the events after it, linked from that
    head: the cost is the events after it (`audit verify --since`).
    """
    sha256 = hashlib.sha256
    q = _encode_str  # same bytes as the canonical JSON array of event_hash, built faster
    expected_seq, prev = (start[0] + 1, start[1]) if start else (1, GENESIS_HASH)
    cp_size = checkpoint.size if checkpoint else 0
    leaves: list[bytes] = []
    for seq, created_at, actor, action, subject, payload, prev_hash, stored in rows:
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
        header = f"[{seq},{q(prev_hash)},{q(created_at)},{q(actor)},{q(action)},{q(subject)}]\n"
        if sha256((header + payload).encode()).hexdigest() != stored:
            raise AuditVerificationError(f"audit event {seq}: hash mismatch (event altered)", seq)
        if seq <= cp_size:
            leaves.append(bytes.fromhex(stored))
        prev = stored
        expected_seq += 1
    size = expected_seq - 1
    if head is not None:
        head_seq, head_hash = head
        if head_seq > size:
            raise AuditVerificationError(
                f"audit event {size + 1} is missing: chain ends at {size} but its head records "
                f"{head_seq} (truncated)", size + 1)
        if head_seq < size or head_hash != prev:
            raise AuditVerificationError(
                f"audit head ({head_seq}) does not match the chain's last event ({size})", size)
    root = None
    if checkpoint is not None:
        if size < checkpoint.size:
            raise AuditVerificationError(
                f"audit event {size + 1} is missing: chain has {size} events, checkpoint of "
                f"{checkpoint.time} recorded {checkpoint.size} (truncated)", size + 1)
        root = merkle_root(leaves)
        last = leaves[-1].hex() if leaves else GENESIS_HASH
        if last != checkpoint.head_hash or root != checkpoint.merkle_root:
            raise AuditVerificationError(
                f"audit events 1..{checkpoint.size} differ from the checkpoint of "
                f"{checkpoint.time} (history rewritten)", None)
    return VerifyReport(size=size, head_hash=prev, merkle_root=root)


def read_head(conn: Connection) -> tuple[int, str]:
    row = conn.execute(text("SELECT seq, hash FROM audit_head WHERE id = 1")).one()
    return int(row[0]), str(row[1])


def make_checkpoint(conn: Connection) -> Checkpoint:
    """Verify the whole chain, then describe it: size, head hash, Merkle root, time."""
    leaves: list[bytes] = []

    def tap(rows: Iterable[tuple]) -> Iterator[tuple]:
        for row in rows:
            leaves.append(bytes.fromhex(row[7]))
            yield row

    with closing(iter_event_rows(conn)) as rows:
        report = verify_rows(tap(rows), head=read_head(conn))
    return Checkpoint(size=report.size, head_hash=report.head_hash,
                      merkle_root=merkle_root(leaves), time=iso_utc(utcnow()))
