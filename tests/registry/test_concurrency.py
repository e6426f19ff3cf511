"""Two processes approving and appending at the same time: the chain never forks, no event is
lost, a contested approval happens exactly once (PostgreSQL: head row FOR UPDATE; SQLite:
BEGIN IMMEDIATE)."""
from __future__ import annotations

import multiprocessing as mp
import time
from pathlib import Path

from governance.formats.mapping import MappingSpec
from registry.store import Store
from tests.helpers.registry import make_sae_folder, mapping_spec
from tests.helpers.workers import approve_and_append

PER_WORKER = 15


def test_concurrent_approvals_never_fork_the_chain(store: Store, db_url: str, tmp_path: Path) -> None:
    store.add_concept("red", "colour", "erin")
    sae = store.import_sae_folder(make_sae_folder(tmp_path, "s"), "erin", hook_point="h")
    spec = MappingSpec.model_validate(mapping_spec("red"))
    ids = []
    for _ in range(2 * PER_WORKER + 1):
        m = store.create_mapping(sae.id, "red", spec, "erin")
        store.propose(m.id, "emil", "ready")
        ids.append(m.id)
    contested = ids.pop()
    size_before = store.verify_audit().size

    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    start_at = time.time() + 3.0  # both workers start together, after spawning
    procs = [ctx.Process(target=approve_and_append,
                         args=(db_url, who, ids[i::2], contested, who, start_at, out))
             for i, who in enumerate(("rob", "rita"))]
    for p in procs:
        p.start()
    results = dict(out.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0

    assert all(r["approved"] == PER_WORKER and r["concepts"] == PER_WORKER for r in results.values())
    assert sorted(r["contested"] for r in results.values()) == ["lost", "won"]
    report = store.verify_audit()
    assert report.size == size_before + 4 * PER_WORKER + 1
    approvals = store.audit_events(action="mapping.approve")
    assert len(approvals) == 2 * PER_WORKER + 1
    assert {e.actor for e in approvals} == {"rob", "rita"}
    if store.engine.dialect.name == "postgresql":  # row locks queue fairly: writers interleave
        actors = [e.actor for e in approvals]
        assert sum(a != b for a, b in zip(actors, actors[1:])) >= 2
    assert all(m.state == "approved" for m in store.list_mappings())
