"""Verifying a long audit log on several cores (`Store.verify_audit` above PARALLEL_MIN_EVENTS).

Every event's hash depends only on its own columns and its stored previous hash, so the chain
splits into contiguous ranges that worker processes verify independently (reading their rows
from the database themselves, which is half the cost), each starting from the stored hash just
before its range. The joins are then checked here: range i must end exactly where range i+1
starts, on the hash range i verified. The signature rules (registry.signatures) need the state of
the log before a range: it is replayed from the tracked events before it (a few rows: keys, roles,
policies, mappings), which the earlier ranges verify; an error is reported for the earliest range
that has one, so a later range never speaks for a state an earlier one refuted.
"""
from __future__ import annotations

import multiprocessing
import os
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import Engine, select

from governance.formats.checkpoint import Checkpoint
from registry import audit
from registry.errors import AuditVerificationError
from registry.models import GENESIS_HASH, AuditEvent
from registry.signatures import SignatureCheck

PARALLEL_MIN_EVENTS = 200_000


@dataclass(frozen=True)
class _Range:
    lo: int  # first seq
    hi: int | None  # last seq (None: to the end)
    start_hash: str  # stored hash of event lo - 1


@dataclass(frozen=True)
class _Outcome:
    size: int
    last_hash: str
    signed: int
    leaves: bytes  # hashes (32 bytes each) of the range's events up to the largest checkpoint
    error: tuple[str, int | None] | None = None
    check: SignatureCheck | None = None


def _missing(conn, seq: int) -> AuditVerificationError:  # noqa: ANN001
    """The serial verifier's words for a gap at `seq`."""
    from sqlalchemy import func

    nxt = conn.execute(select(func.min(AuditEvent.seq)).where(AuditEvent.seq > seq)).scalar()
    return AuditVerificationError(f"audit event {seq} is missing (next stored event is {nxt})", seq)


def workers_for(engine: Engine, size: int) -> int:
    """Processes to verify a log of `size` events with (1: verify in this process; always for
    an in-memory database, which other processes cannot open)."""
    if size < PARALLEL_MIN_EVENTS or engine.url.database in (None, "", ":memory:"):
        return 1
    return max(1, min(os.cpu_count() or 1, 8, size // (PARALLEL_MIN_EVENTS // 2)))


def _verify_range(url: str, r: _Range, check: SignatureCheck, cp_max: int, last: bool) -> _Outcome:
    from registry.db import make_engine

    engine = make_engine(url)
    try:
        with audit.reading(engine) as conn:
            try:  # the last range's snapshot holds the head: it checks the end of the log
                rep = audit.verify_stored(conn, after=r.lo - 1, until=r.hi, to_head=last,
                                          start=(r.lo - 1, r.start_hash), signatures=check, keep_leaves=cp_max)
            except AuditVerificationError as exc:
                return _Outcome(0, "", 0, b"", error=(str(exc), exc.seq))
        # One bytes object, not a list of them: far cheaper to send back to the parent.
        return _Outcome(rep.size, rep.head_hash, rep.signed, b"".join(rep.leaves), check=check)
    finally:
        engine.dispose()


@dataclass(frozen=True)
class ParallelResult:
    report: audit.VerifyReport
    leaves: list[bytes]  # event hashes up to max(largest checkpoint, leaves_upto)
    state: SignatureCheck  # the signature rules' state after the last event


def verify_parallel(engine: Engine, checkpoints: Sequence[Checkpoint], anchors: frozenset[str] | None,
                    size: int, workers: int, leaves_upto: int = 0) -> ParallelResult:
    """What `audit.verify_rows` over the whole log reports, computed by `workers` processes."""
    bounds = [1 + i * size // workers for i in range(workers)] + [size + 1]
    ranges: list[_Range] = []
    checks: list[SignatureCheck] = []
    with audit.reading(engine) as conn:
        for i in range(workers):
            lo = bounds[i]
            start = GENESIS_HASH if lo == 1 else conn.execute(
                select(AuditEvent.hash).where(AuditEvent.seq == lo - 1)).scalar()
            if start is None:
                raise _missing(conn, lo - 1)
            ranges.append(_Range(lo=lo, hi=bounds[i + 1] - 1 if i < workers - 1 else None, start_hash=start))
            try:
                check = audit.replayed_state(conn, lo - 1, anchors)
            except AuditVerificationError:
                check = SignatureCheck(anchors=anchors)  # an earlier range names the unreadable event
            check.judge_anchors = i == workers - 1  # the anchors are judged once, on the whole log
            checks.append(check)
    cp_max = max([c.size for c in checkpoints] + [leaves_upto])
    url = engine.url.render_as_string(hide_password=False)
    ctx = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn")
    with ctx.Pool(workers) as pool:
        outcomes = pool.starmap(_verify_range, [(url, r, c, cp_max, i == workers - 1)
                                                for i, (r, c) in enumerate(zip(ranges, checks))])
    leaves: list[bytes] = []
    signed = 0
    for i, (r, out) in enumerate(zip(ranges, outcomes)):
        if out.error is not None:
            raise AuditVerificationError(*out.error)
        expected_end = r.hi if r.hi is not None else out.size
        if out.size != expected_end:
            with engine.connect() as conn:
                raise _missing(conn, out.size + 1)
        if i + 1 < len(ranges) and ranges[i + 1].start_hash != out.last_hash:
            raise AuditVerificationError(f"audit event {r.hi}: hash mismatch at a range join (event altered)", r.hi)
        signed += out.signed
        leaves.extend(out.leaves[j:j + 32] for j in range(0, len(out.leaves), 32))
    root = audit.check_checkpoints(outcomes[-1].size, leaves, checkpoints)
    assert outcomes[-1].check is not None
    return ParallelResult(audit.VerifyReport(size=outcomes[-1].size, head_hash=outcomes[-1].last_hash,
                                             merkle_root=root, signed=signed), leaves, outcomes[-1].check)
