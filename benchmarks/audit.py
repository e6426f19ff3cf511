"""Audit-log benchmark: append rate (events/s, one transaction per event, through the store's
own code path) and verify rate for chains of 100,000 and 1,000,000 events, on SQLite.

    .venv/bin/python benchmarks/audit.py [--sizes 100000 1000000] [--appends 2000] [--url URL]

Large chains are built directly (hashes computed with registry.audit.event_hash, rows bulk
inserted) so that building them does not dominate; verification is `Store.verify_audit()`,
exactly what `saegov audit verify` runs. Goal: verify 1 M events in under 10 s on one core.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sqlalchemy import text  # noqa: E402

from registry import audit  # noqa: E402
from registry.db import make_engine, upgrade  # noqa: E402
from registry.store import Store  # noqa: E402


def fresh_store(url: str | None, workdir: Path, name: str) -> Store:
    url = url or f"sqlite:///{workdir / name}"
    engine = make_engine(url)
    upgrade(engine)
    engine.dispose()
    return Store.open(url)


def bench_append(store: Store, n: int) -> float:
    """One write transaction per event: lock head, append, commit (as every command does)."""
    store.add_actor("bench", "admin", None)
    t0 = time.perf_counter()
    for i in range(n):
        with store._write("bench", "concept.add") as tx:  # noqa: SLF001 (the store's own path)
            tx.log("bench.append", f"bench:{i}", {"i": i, "note": "append benchmark", "ids": [i, i + 1]})
    return n / (time.perf_counter() - t0)


def build_chain(store: Store, n: int, batch: int = 50_000) -> None:
    """Append n events quickly: hashes chained in Python, rows bulk-inserted."""
    created = "2025-01-01T00:00:00.000000Z"
    prev = audit.GENESIS_HASH
    raw = store.engine.raw_connection()
    try:
        cur = raw.cursor()
        if store.engine.dialect.name == "sqlite":
            cur.execute("BEGIN")
        sql = ("INSERT INTO audit_events (seq, created_at, actor, action, subject, payload, prev_hash, hash)"
               " VALUES (%s)" % ", ".join(["?"] * 8 if store.engine.dialect.name == "sqlite" else ["%s"] * 8))
        rows = []
        for seq in range(1, n + 1):
            payload = audit.canonical_json({"mapping_id": seq % 997, "review_id": seq, "from": "proposed",
                                            "to": "approved", "justification": "checked the image grid"})
            h = audit.event_hash(seq, prev, created, "rob", "mapping.approve", f"mapping:{seq % 997}", payload)
            rows.append((seq, created, "rob", "mapping.approve", f"mapping:{seq % 997}", payload, prev, h))
            prev = h
            if len(rows) == batch:
                cur.executemany(sql, rows)
                rows.clear()
        if rows:
            cur.executemany(sql, rows)
        cur.execute("UPDATE audit_head SET seq = %d, hash = '%s' WHERE id = 1" % (n, prev))
        raw.commit()
    finally:
        raw.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--appends", type=int, default=2000)
    ap.add_argument("--url", help="database URL (default: temporary SQLite files)")
    args = ap.parse_args()
    print(f"cpus={os.cpu_count()} loadavg={os.getloadavg()[0]:.2f} python={sys.version.split()[0]}")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if args.url:
            eng = make_engine(args.url)
            with eng.begin() as conn:
                conn.execute(text("DROP SCHEMA public CASCADE"))
                conn.execute(text("CREATE SCHEMA public"))
            eng.dispose()
        store = fresh_store(args.url, work, "append.db")
        rate = bench_append(store, args.appends)
        print(f"append: {args.appends} events, one transaction each: {rate:,.0f} events/s")
        store.verify_audit()
        store.close()
        for n in args.sizes:
            if args.url:  # PostgreSQL: start from an empty schema each time
                eng = make_engine(args.url)
                with eng.begin() as conn:
                    conn.execute(text("DROP SCHEMA public CASCADE"))
                    conn.execute(text("CREATE SCHEMA public"))
                eng.dispose()
            store = fresh_store(args.url, work, f"chain{n}.db")
            t0 = time.perf_counter()
            build_chain(store, n)
            build_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            report = store.verify_audit()
            verify_s = time.perf_counter() - t0
            assert report.size == n
            t0 = time.perf_counter()
            cp = store.audit_checkpoint()
            cp_s = time.perf_counter() - t0
            print(f"verify: {n:>9,} events in {verify_s:6.2f} s = {n / verify_s:,.0f} events/s "
                  f"(checkpoint incl. Merkle root {cp_s:.2f} s; built in {build_s:.1f} s)")
            assert cp.size == n
            store.close()


if __name__ == "__main__":
    main()
