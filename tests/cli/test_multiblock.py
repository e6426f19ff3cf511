"""One concept blocked at two blocks through the CLI (issue 14): `concept sweep --with-mapping`
measures every point with the other block's mapping in force, records it in the table and the
mapping's evidence, and the registry publishes the result only beside that mapping. Refusals
come in one line, before any sampling, with nothing written."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from cli.main import saegov
from tests.helpers.registry import HOOK, PROMPTS, local_workspace

torch.set_num_threads(1)
DOWNSTREAM = "up_blocks.1.attentions.2"


@pytest.fixture
def ws(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, toy_model: Path) -> dict:
    home = tmp_path / "home"
    store = local_workspace(home, monkeypatch, "alice")
    store.add_actor("erin", "engineer", "alice")
    store.add_actor("rob", "reviewer", "alice")
    for name, prompts in PROMPTS.items():
        store.add_concept(name, "colour", "erin", prompts=prompts)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(p for ps in PROMPTS.values() for p in ps) + "\n")
    runner = CliRunner()
    for name, hook in (("up", HOOK), ("down", DOWNSTREAM)):
        acts = tmp_path / f"acts-{name}"
        res = runner.invoke(saegov, ["activations", "collect", "--model", str(toy_model), "--hookpoint", hook,
                                     "--prompts", str(prompts), "--steps", "2", "--out", str(acts)])
        assert res.exit_code == 0, res.output
        res = runner.invoke(saegov, ["sae", "train", "--activations", str(acts), "--expansion", "4", "--k", "8",
                                     "--epochs", "2", "--batch-tokens", "256", "--no-mlflow", "--name", f"sae-{name}",
                                     "--out", str(tmp_path / f"sae-{name}"), "--actor", "erin"])
        assert res.exit_code == 0, res.output
    return {"store": store, "model": str(toy_model), "home": home}


def one_line_error(res, needle: str) -> None:
    assert res.exit_code != 0, res.output
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0], res.stderr


def test_sweep_with_a_mapping_in_force_at_another_block(ws: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    from governance.enforcement import intervention

    # What each sweep point applies to the pipeline (the real apply_blocklist runs).
    applied: list[list[tuple[str | None, int | None]]] = []
    real_apply = intervention.apply_blocklist

    def spy(pipe, enforced, *args, **kwargs):
        applied.append([(e.hook_point, e.mapping_id) for e in enforced.spec.entries])
        return real_apply(pipe, enforced, *args, **kwargs)

    monkeypatch.setattr(intervention, "apply_blocklist", spy)
    runner, store = CliRunner(), ws["store"]
    common = ["--steps", "2", "--model", ws["model"], "--no-mlflow", "--actor", "erin", "--json"]
    res = runner.invoke(saegov, ["concept", "score", "red", "--sae", "sae-up", "--top-n", "8", *common])
    assert res.exit_code == 0, res.output
    up = json.loads(res.stdout)["mapping_id"]
    sweep = ["concept", "sweep", "red", "--sae", "sae-down", "--top-ns", "1", "--multipliers", "-1",
             "--batch-size", "16", *common]

    alone = runner.invoke(saegov, sweep)
    assert alone.exit_code == 0, alone.output
    assert applied == [[(DOWNSTREAM, None)]]  # one point, one block
    applied.clear()
    res = runner.invoke(saegov, [*sweep, "--with-mapping", str(up)])
    assert res.exit_code == 0, res.output
    assert applied == [[(HOOK, up), (DOWNSTREAM, None)]]  # the point, with the upstream mapping in force
    out = json.loads(res.stdout)
    table, up_rec = out["sweep"], store.get_mapping(up)
    assert table["with_mappings"] == [{"mapping_id": up, "hook_point": HOOK, "spec_sha256": up_rec.spec_sha256}]
    assert "with_mappings" not in json.loads(alone.stdout)["sweep"]  # a one-block table reads as before

    down = store.get_mapping(out["mapping_id"])
    assert {"kind": "chosen_with", "ref": f"mapping:{up}", "sha256": up_rec.spec_sha256} in down.evidence
    for mid in (up, down.id):
        store.propose(mid, "erin", "two-block sweep")
        store.approve(mid, "rob", "checked")
    res = runner.invoke(saegov, ["blocklist", "create", "red2", "--mapping", str(down.id), "--actor", "erin"])
    assert res.exit_code == 0, res.output
    one_line_error(runner.invoke(saegov, ["blocklist", "publish", "red2", "--actor", "erin"]),
                   f"was chosen with mapping {up} in force")
    res = runner.invoke(saegov, ["blocklist", "add", "red2", "--mapping", str(up), "--actor", "erin"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(saegov, ["blocklist", "publish", "red2", "--actor", "erin", "--json"])
    assert res.exit_code == 0, res.output
    assert sorted(e["hook_point"] for e in json.loads(res.stdout)["entries"]) == [HOOK, DOWNSTREAM]


def test_sweep_refuses_mappings_it_cannot_hold_in_force(ws: dict) -> None:
    runner, store = CliRunner(), ws["store"]
    common = ["--steps", "2", "--model", ws["model"], "--no-mlflow", "--actor", "erin"]
    ids = {}
    for concept, sae in (("red", "sae-up"), ("green", "sae-up"), ("red-down", "sae-down")):
        res = runner.invoke(saegov, ["concept", "score", concept.split("-")[0], "--sae", sae, "--top-n", "1",
                                     *common, "--json"])
        assert res.exit_code == 0, res.output
        ids[concept] = json.loads(res.stdout)["mapping_id"]
    before = [m.id for m in store.list_mappings()]
    sweep = ["concept", "sweep", "red", "--sae", "sae-down", "--top-ns", "1", "--multipliers", "-1", *common]
    one_line_error(runner.invoke(saegov, [*sweep, "--with-mapping", str(ids["green"])]),
                   f"mapping {ids['green']} is of 'green', not 'red'")
    one_line_error(runner.invoke(saegov, [*sweep, "--with-mapping", str(ids["red-down"])]),
                   f"mapping {ids['red-down']} is at {DOWNSTREAM}, where another mapping")
    one_line_error(runner.invoke(saegov, [*sweep, "--with-mapping", "999"]), "unknown mapping 999")
    one_line_error(runner.invoke(saegov, [*sweep, "--steps", "3", "--with-mapping", str(ids["red"])]),
                   f"mapping {ids['red']} was scored for 2 steps and the sweep runs 3")
    store.propose(ids["red"], "erin", "x")
    store.review(ids["red"], "reject", "rob", "not this one")
    one_line_error(runner.invoke(saegov, [*sweep, "--with-mapping", str(ids["red"])]),
                   f"mapping {ids['red']} is rejected")
    assert [m.id for m in store.list_mappings()] == before  # nothing written
