"""Worker functions run in separate processes by the concurrency tests."""
from __future__ import annotations

import time
from typing import Any


def approve_and_append(url: str, reviewer: str, mapping_ids: list[int], contested: int,
                       tag: str, start_at: float, out: Any) -> None:
    from registry.errors import InvalidTransition
    from registry.store import Store

    store = Store.open(url)
    while time.time() < start_at:
        time.sleep(0.001)
    results = {"approved": 0, "concepts": 0, "contested": None}
    for i, mid in enumerate(mapping_ids):
        store.approve(mid, reviewer, f"{tag} approves {mid}")
        results["approved"] += 1
        store.add_concept(f"{tag}-{i}", "other", "erin")
        results["concepts"] += 1
        if i == len(mapping_ids) // 2:
            try:
                store.approve(contested, reviewer, f"{tag} races for {contested}")
                results["contested"] = "won"
            except InvalidTransition:
                results["contested"] = "lost"
    store.close()
    out.put((tag, results))
