"""A concept-supervised SAE end to end through the CLI (issue 14): labels from the registry's
prompts, the assignment recorded in the hashed cfg.json and in the registry's lineage, `concept
score --method assigned` / `concept sweep --assigned` selecting exactly those latents, and the
refusals (unknown or unsupervised concept, a hand-edited assignment) as one line before work."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from cli.main import saegov
from tests.helpers.registry import HOOK, PROMPTS, local_workspace

torch.set_num_threads(1)


@pytest.fixture
def ws(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, toy_model: Path) -> dict:
    home = tmp_path / "home"
    store = local_workspace(home, monkeypatch, "erin")
    for name, prompts in PROMPTS.items():
        store.add_concept(name, "colour", "erin", prompts=prompts)
    store.add_concept("pink", "colour", "erin", prompts=["a pink circle"])
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(p for ps in PROMPTS.values() for p in ps) + "\na circle\n")
    res = CliRunner().invoke(saegov, ["activations", "collect", "--model", str(toy_model), "--hookpoint", HOOK,
                                      "--prompts", str(prompts), "--steps", "2", "--out", str(tmp_path / "acts")])
    assert res.exit_code == 0, res.output
    return {"home": home, "store": store, "acts": tmp_path / "acts", "tmp": tmp_path, "model": str(toy_model)}


TRAIN = ["--expansion", "4", "--k", "8", "--epochs", "2", "--batch-tokens", "256", "--no-mlflow", "--actor", "erin"]


def one_line_error(res, needle: str) -> None:
    assert res.exit_code != 0, res.output
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0], res.stderr


def test_supervised_sae_from_registry_prompts_to_its_mapping(ws: dict) -> None:
    runner = CliRunner()
    out = ws["tmp"] / "sae"
    res = runner.invoke(saegov, ["sae", "train", "--activations", str(ws["acts"]), "--supervise", "red,green",
                                 "--latents-per-concept", "2", "--out", str(out), "--name", "sup", "--json", *TRAIN])
    assert res.exit_code == 0, res.output
    cfg = json.loads((out / "cfg.json").read_text())
    sup = cfg["supervision"]
    assert [(c["name"], c["kind"], c["latents"], c["positive_prompts"]) for c in sup["concepts"]] == [
        ("red", "colour", [0, 1], 2), ("green", "colour", [2, 3], 2)]
    assert sup["assign_weight"] == 1.0 and sup["decorrelation_weight"] == 10.0
    # The reference keys are untouched: a reference loader reads the SAE as a plain TopK SAE.
    assert cfg["k"] == 8 and cfg["expansion_factor"] == 4 and cfg["d_in"] == 64
    assert json.loads((out / "training.json").read_text())["supervised_by"] == ["red", "green"]
    rec = ws["store"].get_sae("sup")
    assert rec.config["supervision"] == sup  # the registry's lineage names the supervising concepts
    assert {"supervision.red.fires_on_concept_pct", "supervision.green.fires_elsewhere_pct"} <= set(rec.metrics)

    common = ["--sae", "sup", "--steps", "2", "--model", ws["model"], "--no-mlflow", "--actor", "erin", "--json"]
    res = runner.invoke(saegov, ["concept", "score", "red", "--method", "assigned", "--multiplier", "-3", *common])
    assert res.exit_code == 0, res.output
    red = ws["store"].get_mapping(json.loads(res.stdout)["mapping_id"])
    assert red.selection_rule == "assigned" and red.top_n == 2 and red.gamma == -3.0
    assert {t: sorted(e.feature for e in es) for t, es in red.timesteps.items()} == {501: [0, 1], 1: [0, 1]}

    # The sweep tries the assigned latents with every multiplier (beside any other rule).
    res = runner.invoke(saegov, ["concept", "sweep", "green", "--assigned", "--multipliers", "-1,-4",
                                 "--batch-size", "8", *common])
    assert res.exit_code == 0, res.output
    table = json.loads(res.stdout)["sweep"]
    assert [(p["rule"], p["value"], p["gamma"]) for p in table["points"]] == [("assigned", 2, -1.0), ("assigned", 2, -4.0)]
    assert table["assigned_gate"] == "paper"  # the table itself names its gate rule
    green = ws["store"].get_mapping(json.loads(res.stdout)["mapping_id"])
    assert green.selection_rule == "assigned"
    assert all(sorted(e.feature for e in es) == [2, 3] for es in green.timesteps.values())

    # Gate 0 ("fired"): the same latents and scales, scaled wherever they fire; the sweep records it.
    res = runner.invoke(saegov, ["concept", "score", "red", "--method", "assigned", "--multiplier", "-3",
                                 "--assigned-gate", "fired", *common])
    assert res.exit_code == 0, res.output
    fired = ws["store"].get_mapping(json.loads(res.stdout)["mapping_id"])
    assert {t: [(e.feature, e.scale) for e in es] for t, es in fired.timesteps.items()} == \
        {t: [(e.feature, e.scale) for e in es] for t, es in red.timesteps.items()}
    assert all(e.gate == 0.0 for es in fired.timesteps.values() for e in es)
    assert any(e.gate > 0.0 for es in red.timesteps.values() for e in es)
    named = [json.loads(ev["ref"]).get("assigned_gate") for m in (fired, red) for ev in m.evidence
             if ev.get("kind") == "scoring_params"]
    assert named == ["fired", "paper"]  # the mapping names the rule beside the gates it produced
    res = runner.invoke(saegov, ["concept", "sweep", "green", "--assigned", "--assigned-gate", "fired",
                                 "--multipliers", "-4", "--batch-size", "8", *common])
    assert res.exit_code == 0, res.output
    green0 = ws["store"].get_mapping(json.loads(res.stdout)["mapping_id"])
    assert all(e.gate == 0.0 for es in green0.timesteps.values() for e in es)
    swept = [json.loads(ev["ref"]) for ev in green0.evidence if ev.get("kind") == "sweep"]
    assert json.loads(res.stdout)["sweep"]["assigned_gate"] == "fired" and [t["assigned_gate"] for t in swept] == ["fired"]
    one_line_error(runner.invoke(saegov, ["concept", "score", "red", "--top-n", "2", "--assigned-gate", "fired",
                                          *common]), "--assigned-gate applies to --method assigned only")
    one_line_error(runner.invoke(saegov, ["concept", "sweep", "red", "--top-ns", "2", "--assigned-gate", "fired",
                                          *common]), "--assigned-gate applies to --assigned points only")

    # The registry refuses an "assigned" mapping that claims other latents (written by hand).
    from governance.formats.mapping import FeatureEntry, MappingSpec, Selection
    from registry.errors import ValidationFailed

    forged = MappingSpec(concept="red", selection=Selection(rule="assigned", top_n=2), gamma=-3.0,
                         scheduler="DDIMScheduler", num_steps=2,
                         timesteps={501: [FeatureEntry(feature=f, score=0.0, scale=-1.0, gate=0.0) for f in (0, 7)]})
    with pytest.raises(ValidationFailed, match=r"not the latents \[0, 1\]"):
        ws["store"].create_mapping("sup", None, forged, "erin")
    with pytest.raises(ValidationFailed, match="assigns no latents to 'blue'"):
        ws["store"].create_mapping("sup", None, forged.model_copy(update={"concept": "blue"}), "erin")

    # A concept the SAE was not supervised by, and an assignment edited in the folder, are refused.
    one_line_error(runner.invoke(saegov, ["concept", "score", "blue", "--method", "assigned", *common]),
                   "assigns no latents to 'blue'")
    edited = dict(cfg, supervision={**sup, "concepts": [dict(sup["concepts"][0], latents=[5, 6]), sup["concepts"][1]]})
    (out / "cfg.json").write_text(json.dumps(edited))
    one_line_error(runner.invoke(saegov, ["concept", "score", "red", "--method", "assigned", *common]),
                   "not the registered one")
    # Nor can such a folder be registered: a malformed assignment is refused at import.
    edited["supervision"]["concepts"][0]["latents"] = [2]  # green's
    (out / "cfg.json").write_text(json.dumps(edited))
    one_line_error(runner.invoke(saegov, ["sae", "import", str(out), "--name", "edited", "--actor", "erin"]),
                   "share a latent")


def test_supervision_is_refused_before_training(ws: dict) -> None:
    runner = CliRunner()
    for concepts, needle in [("red,nope", "unknown concept 'nope'"),
                             ("red,pink", "'pink': none of its registered prompts")]:
        out = ws["tmp"] / f"sae-{concepts}"
        res = runner.invoke(saegov, ["sae", "train", "--activations", str(ws["acts"]), "--supervise", concepts,
                                     "--out", str(out), "--name", "refused", *TRAIN])
        one_line_error(res, needle)
        assert not out.exists()
    assert [s.name for s in ws["store"].list_saes()] == []
    one_line_error(runner.invoke(saegov, ["sae", "train", "--activations", str(ws["acts"]), "--supervise", "red",
                                          "--latents-per-concept", "0", *TRAIN]), "latents_per_concept")
    one_line_error(runner.invoke(saegov, ["sae", "train", "--activations", str(ws["acts"]), "--supervise", "red",
                                          "--assign-weight", "inf", *TRAIN]), "assign_weight")
    one_line_error(runner.invoke(saegov, ["sae", "train", "--activations", str(ws["acts"]),
                                          "--decorrelation-weight", "3", *TRAIN]), "only apply with --supervise")
