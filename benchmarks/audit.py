"""Audit-log benchmark: append rate (events/s, one transaction per event, through the store's
own code path), generation records (row + signed event) one per transaction and in batches
(Store.record_generations), and verify rate for chains of 100,000 and 1,000,000 events; SQLite by
default, PostgreSQL with --url.

    .venv/bin/python benchmarks/audit.py [--sizes 100000 1000000] [--appends 2000] [--batches 1 100 1000]
                                         [--url URL] [--fresh N [--baseline TREE]]

Large chains are built directly (hashes computed with registry.audit.event_hash, rows bulk
inserted) so that building them does not dominate; verification is `Store.verify_audit()`,
exactly what `saegov audit verify` runs. Goal: verify 1 M events in under 10 s on one core.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from contextlib import closing
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sqlalchemy import text  # noqa: E402

from registry import audit  # noqa: E402
from registry.db import make_engine, upgrade  # noqa: E402
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey  # noqa: E402

from registry import signatures  # noqa: E402
from registry.store import NewGeneration, Store  # noqa: E402

KEYS = {name: Ed25519PrivateKey.generate() for name in ("alice", "erin", "rob")}


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


def deployment_for_generations(store: Store, work: Path) -> int:
    """A real deployment record to attach generations to (a tiny SAE, one approved mapping),
    built through the store's API by three people, each signing with their own key."""
    from governance.formats.mapping import MappingSpec
    from governance.formats.sae_config import SaeConfig
    from governance.sae.model import TopKSAE

    TopKSAE(SaeConfig(d_in=8, expansion_factor=4, k=2)).save(work / "sae")
    store.add_actor("alice", "admin", None)
    store.add_actor("erin", "engineer", "alice")
    store.add_actor("rob", "reviewer", "alice")
    for name in ("alice", "erin", "rob"):
        store.register_signing_key(name, signatures.public_hex(KEYS[name]), "alice")
    store.add_concept("red", "colour", "erin")
    sae = store.import_sae_folder(work / "sae", "erin", hook_point="up_blocks.1.attentions.1")
    spec = MappingSpec.model_validate({
        "format": "saegov.mapping/v1", "concept": "red", "selection": {"rule": "tau", "tau": 99.99},
        "gamma": -1.0, "scheduler": "DDIMScheduler", "num_steps": 50,
        "timesteps": {"981": [{"feature": 1, "score": 0.5, "scale": -0.3, "gate": 0.1}]}, "evidence": []})
    mid = store.create_mapping(sae.id, "red", spec, "erin").id
    store.propose(mid, "erin", "bench")
    store.approve(mid, "rob", "bench")
    store.create_blocklist("bench", [mid], "erin")
    store.publish_blocklist("bench", "erin")
    return store.record_deployment(blocklist="bench", version=1, path=str(work / "dep"), manifest_sha256="a" * 64,
                                   base_model_hash="b" * 64, actor="erin").id


def bench_generations(store: Store, deployment: int, n: int, batch: int) -> float:
    """`n` generation records (a row + a signed `generation.record` event each), `batch` per
    transaction (Store.record_generations; batch 1 is what `record_generation` does)."""
    trace = {"format": "saegov.trace/v1", "unet_calls": [{"t": t, "suppressed": [1, 5]} for t in range(25)]}
    items = [NewGeneration(deployment, "c" * 64, i, trace) for i in range(n)]
    t0 = time.perf_counter()
    for i in range(0, n, batch):
        store.record_generations(items[i:i + batch], "erin")
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
            if seq == 1:  # the log's first actor adds themselves (verify replays roles from it)
                action, subject = "actor.add", "actor:rob"
                payload = audit.canonical_json({"name": "rob", "role": "admin", "first": True})
            else:  # mapping.reject: allowed to rob's role, not one of the events verify replays
                action, subject = "mapping.reject", f"mapping:{seq % 997}"
                payload = audit.canonical_json({"mapping_id": seq % 997, "review_id": seq, "from": "proposed",
                                                "to": "rejected", "justification": "checked the image grid"})
            h = audit.event_hash(seq, prev, created, "rob", action, subject, payload)
            rows.append((seq, created, "rob", action, subject, payload, prev, h))
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
    if store.engine.dialect.name == "postgresql":
        # A log that grew over months has been vacuumed and analysed; a bulk-loaded one would be
        # vacuumed by autovacuum during the timed runs (seen: 4.85 s instead of 2.9 s).
        with store.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text("VACUUM ANALYZE audit_events"))


def bench_readers(store: Store, repeats: int) -> None:
    """PostgreSQL: reading the whole log as the verifier does (pages of seq ranges on a client-side
    cursor, audit.iter_event_rows) against the reader before it (one query streamed through a
    server-side cursor), interleaved."""
    def seq_pages() -> int:
        with audit.reading(store.engine) as conn, closing(audit.iter_event_rows(conn)) as rows:
            return sum(1 for _ in rows)

    def server_cursor() -> int:
        with store.engine.connect() as conn:
            result = conn.execution_options(stream_results=True, yield_per=20000).execute(
                text(f"SELECT {audit._COLUMNS} FROM audit_events ORDER BY seq"))
            return sum(len(part) for part in result.partitions())

    times: dict[str, list[float]] = {"seq pages": [], "server cursor": []}
    for _ in range(repeats):
        for name, fn in (("seq pages", seq_pages), ("server cursor", server_cursor)):
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    r = [a / b for a, b in zip(times["seq pages"], times["server cursor"])]
    print("read the whole log, one process: " + "; ".join(
        f"{name} s median {statistics.median(v):.2f} (min {min(v):.2f}, max {max(v):.2f})" for name, v in times.items())
        + f"; seq pages / server cursor median {statistics.median(r):.2f} (min {min(r):.2f}, max {max(r):.2f})")


# One fresh interpreter's verification: sys.argv = [tree, size], the URL in BENCH_AUDIT_URL (not on
# the command line, where ps shows a password); prints the verification's seconds.
_FRESH = """
import os, sys, time
sys.path.insert(0, sys.argv[1])
from registry.store import Store
store = Store.open(os.environ["BENCH_AUDIT_URL"])
t0 = time.perf_counter()
report = store.verify_audit()
print(time.perf_counter() - t0)
assert report.size == int(sys.argv[2]), report.size
"""


def bench_fresh(store: Store, n: int, rounds: int, baseline: Path | None) -> None:
    """Verification in fresh processes, as `saegov audit verify` runs it (a new interpreter, engine,
    connections and worker pool each time), this tree and --baseline's interleaved, the order
    alternating round by round. Reports the verification's own time in each process and the
    process's whole wall time (interpreter start and imports included)."""
    import subprocess

    env = {**os.environ, "BENCH_AUDIT_URL": store.engine.url.render_as_string(hide_password=False)}
    trees = {"this tree": Path(__file__).resolve().parents[1]}
    if baseline is not None:
        trees["baseline"] = baseline.resolve()
    times: dict[str, list[float]] = {name: [] for name in trees}
    walls: dict[str, list[float]] = {name: [] for name in trees}
    for i in range(rounds):
        for name, tree in (list(trees.items()) if i % 2 == 0 else list(reversed(trees.items()))):
            t0 = time.perf_counter()
            out = subprocess.run([sys.executable, "-c", _FRESH, str(tree), str(n)], capture_output=True, text=True,
                                 env=env)
            walls[name].append(time.perf_counter() - t0)
            if out.returncode != 0:
                tail = (out.stderr.strip().splitlines() or ["(no output)"])[-1]
                raise SystemExit(f"verification in a fresh process ({name}, {tree}) failed: {tail}")
            times[name].append(float(out.stdout.split()[-1]))

    def summary(v: list[float]) -> str:
        return f"median {statistics.median(v):.2f} (min {min(v):.2f}, max {max(v):.2f}, n={len(v)})"

    line = "; ".join(f"{name}: verify s {summary(times[name])}, whole process s {summary(walls[name])}"
                     for name in trees)
    if baseline is not None:
        r = [a / b for a, b in zip(times["this tree"], times["baseline"])]
        line += f"; verify this / baseline median {statistics.median(r):.2f} (min {min(r):.2f}, max {max(r):.2f})"
    print(f"verify {n:,} events in fresh processes: {line}")


def reset(url: str | None) -> None:
    """PostgreSQL: start from an empty schema (SQLite runs use a new file each time)."""
    if url:
        eng = make_engine(url)
        with eng.begin() as conn:
            conn.execute(text("DROP SCHEMA public CASCADE"))
            conn.execute(text("CREATE SCHEMA public"))
        eng.dispose()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--appends", type=int, default=2000)
    ap.add_argument("--url", help="database URL (default: temporary SQLite files)")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 100, 1000],
                    help="generation records per transaction")
    ap.add_argument("--generations", type=int, default=20_000, help="generation records per batched run")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--fresh", type=int, default=0, metavar="N",
                    help="also time verification in N fresh processes each (a new engine, connections and worker "
                         "pool each time, as `saegov audit verify` runs it), and each process's whole wall time")
    ap.add_argument("--baseline", type=Path, default=None, metavar="TREE",
                    help="with --fresh: a checkout of an earlier commit (git worktree add TREE REV), timed "
                         "interleaved with this one on the same chain")
    args = ap.parse_args()
    if args.fresh < 0:
        raise SystemExit("--fresh: a number of rounds, 0 or more")
    if args.baseline is not None and not args.fresh:
        raise SystemExit("--baseline is timed only in fresh processes: give --fresh N too")
    if args.baseline is not None and not (args.baseline / "registry" / "audit.py").is_file():
        raise SystemExit(f"--baseline {args.baseline}: not a checkout of this project")
    print(f"cpus={os.cpu_count()} loadavg={os.getloadavg()[0]:.2f} python={sys.version.split()[0]}")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        reset(args.url)
        store = fresh_store(args.url, work, "append.db")
        rate = bench_append(store, args.appends)
        print(f"append: {args.appends} events, one transaction each: {rate:,.0f} events/s")
        store.verify_audit()
        store.close()
        reset(args.url)
        store = fresh_store(args.url, work, "generations.db")
        store = Store(store.engine, keyring=KEYS.get)  # each person signs with their own key
        dep = deployment_for_generations(store, work)
        for batch in args.batches:
            rates = [bench_generations(store, dep, args.generations if batch > 1 else args.appends, batch)
                     for _ in range(args.repeats)]
            med = statistics.median(rates)
            print(f"generation records, signed, {batch:>4} per transaction: median {med:,.0f} events/s "
                  f"(min {min(rates):,.0f}, max {max(rates):,.0f}, {args.repeats} runs)")
        assert store.verify_audit().signed > 0 and store.verify_state() == []
        store.close()
        for n in args.sizes:
            reset(args.url)
            store = fresh_store(args.url, work, f"chain{n}.db")
            t0 = time.perf_counter()
            build_chain(store, n)
            build_s = time.perf_counter() - t0
            verify_s, cp_s = [], []
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                report = store.verify_audit()
                verify_s.append(time.perf_counter() - t0)
                assert report.size == n
                t0 = time.perf_counter()
                cp = store.audit_checkpoint()
                cp_s.append(time.perf_counter() - t0)
                assert cp.size == n
            if args.url:
                bench_readers(store, args.repeats)
            if args.fresh:
                bench_fresh(store, n, args.fresh, args.baseline)
            v = statistics.median(verify_s)
            print(f"verify: {n:>9,} events, s: median {v:.2f} (min {min(verify_s):.2f}, max {max(verify_s):.2f}) "
                  f"= {n / v:,.0f} events/s; checkpoint incl. Merkle root s: median {statistics.median(cp_s):.2f} "
                  f"(min {min(cp_s):.2f}, max {max(cp_s):.2f}); built in {build_s:.1f} s")
            store.close()


if __name__ == "__main__":
    main()
