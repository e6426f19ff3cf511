"""Property test: random sequences of workflow commands by random actors. A reference model
predicts which succeed; the audit chain always verifies; four-eyes always holds."""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from registry.errors import RegistryError
from governance.formats.mapping import MappingSpec
from registry.store import Store
from registry.workflow import PERMISSIONS, TRANSITIONS
from tests.helpers.registry import ACTORS
from tests.helpers.registry import make_sae_folder, mapping_spec

ROLE = dict(ACTORS)
NAMES = [n for n, _ in ACTORS]
SPEC = MappingSpec.model_validate(mapping_spec("red"))

ops = st.one_of(
    st.tuples(st.just("create"), st.sampled_from(NAMES), st.just(0)),
    st.tuples(st.sampled_from(sorted(TRANSITIONS)), st.sampled_from(NAMES), st.integers(0, 3)),
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=st.lists(ops, min_size=1, max_size=30))
def test_random_workflows_keep_chain_and_four_eyes(sqlite_template: Path, steps: list) -> None:
    tmp = Path(tempfile.mkdtemp())
    try:
        db = tmp / "registry.db"
        shutil.copy(sqlite_template, db)
        store = Store.open(f"sqlite:///{db}")
        store.add_actor("alice", "admin", None)
        for name, role in ACTORS[1:]:
            store.add_actor(name, role, "alice")
        store.add_concept("red", "colour", "erin")
        sae = store.import_sae_folder(make_sae_folder(tmp, "s"), "erin", hook_point="h")

        model: list[dict] = []  # per mapping: state, creator, proposer
        for op, actor, idx in steps:
            if op == "create":
                expect = ROLE[actor] in PERMISSIONS["mapping.create"]
                try:
                    store.create_mapping(sae.id, "red", SPEC, actor)
                    ok = True
                except RegistryError:
                    ok = False
                assert ok == expect, (op, actor)
                if ok:
                    model.append({"state": "draft", "creator": actor, "proposer": None})
                continue
            if not model:
                continue
            i = idx % len(model)
            m = model[i]
            src, dst = TRANSITIONS[op]
            # Every account but alice's was created by alice: her work has no one to approve it.
            account_by = None if actor == "alice" else "alice"
            expect = (ROLE[actor] in PERMISSIONS[f"mapping.{op}"] and m["state"] == src
                      and not (op == "approve" and (actor in (m["creator"], m["proposer"])
                                                    or account_by in (m["creator"], m["proposer"]))))
            try:
                store.review(i + 1, op, actor, f"{actor} {op}s")
                ok = True
            except RegistryError:
                ok = False
            assert ok == expect, (op, actor, m)
            if ok:
                m["state"] = dst
                if op == "propose":
                    m["proposer"] = actor

        store.verify_audit()
        assert store.verify_state() == []
        for rec, m in zip(store.list_mappings(), model):
            assert rec.state == m["state"]
            approval = rec.approval
            if approval is not None:
                assert approval.actor not in (rec.created_by, rec.proposer)
        n_reviews = sum(len(r.reviews) for r in store.list_mappings())
        assert len(store.audit_events(action="mapping.*")) == len(model) + n_reviews
        store.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
