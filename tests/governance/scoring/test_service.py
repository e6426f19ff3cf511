"""`concept score` end to end on the untrained toy architecture with a random SAE: statistics,
selection, registry draft mapping + audit event, MLflow run with the heatmap, CLI errors."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from governance.activations.collect import CollectConfig, collect
from governance.scoring.selection import ScoringError
from governance.scoring.service import ScoreRequest, score_concept
from governance.common.hashing import sha256_file
from governance.formats.sae_config import SaeConfig
from governance.sae.model import TopKSAE
from governance.scoring.maths import choose_features
from tests.helpers.registry import HOOK, PROMPTS, local_workspace
from registry.store import Store

torch.set_num_threads(1)


@pytest.fixture
def workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, toy_model: Path) -> tuple[Store, Path]:  # noqa: F811
    home = tmp_path / "home"
    store = local_workspace(home, monkeypatch, "erin")
    for name, prompts in PROMPTS.items():
        store.add_concept(name, "colour", "erin", prompts=prompts)
    store.add_concept("striped", "style", "erin", prompts=["a red circle in striped style"])
    store.add_concept("dotted", "style", "erin")
    torch.manual_seed(0)
    sae = TopKSAE(SaeConfig(d_in=64, expansion_factor=4, k=8))
    with torch.no_grad():
        sae.b_dec.normal_(0, 0.1)
    sae.save(tmp_path / "sae")
    store.import_sae_folder(tmp_path / "sae", "erin", hook_point=HOOK, name="toy-sae")
    return store, tmp_path


def test_score_concept_end_to_end(workspace: tuple[Store, Path], toy_model: Path) -> None:  # noqa: F811
    store, tmp = workspace
    req = ScoreRequest(concept="red", sae="toy-sae", top_n=3, gamma=-2.0, steps=2, model=str(toy_model))
    out = score_concept(store, req, "erin")

    # Statistics: K=3 colour concepts (style concepts not mixed in), 2 timesteps, keyed by value.
    assert out.stats.names == ["red", "green", "blue"] and out.stats.timesteps == [501, 1]
    assert out.stats.mu.shape == (3, 256, 2) and out.stats.counts.tolist() == [2, 2, 2]

    # Cross-check mu(., t, red) against the collection path: same prompts, seeds, steps; the
    # stored fp16 activations encoded with the same SAE and averaged over tokens.
    acts = collect(CollectConfig(model=str(toy_model), hook_point=HOOK, prompts=PROMPTS["red"],
                                 out=tmp / "acts", steps=2, guidance=9.0, seed=0))
    d = load_file(str(tmp / "acts" / acts.shards[0].file))
    sae = TopKSAE.load(tmp / "sae")
    for col, t in enumerate(out.stats.timesteps):
        rows = d["activations"][d["timesteps"] == t].float()
        expected = sae.encode_dense(rows).double().mean(0)
        assert torch.allclose(out.stats.mu[0, :, col], expected, rtol=0.02, atol=2e-3)

    # Selection and the stored mapping agree with the pure maths on those statistics.
    choices, _ = choose_features(out.stats.mu, out.stats.counts, 0, [501, 1], -2.0, top_n=3)
    m = store.get_mapping(out.mapping.id)
    assert m.state == "draft" and m.concept == "red" and m.scheduler == "DDIMScheduler" and m.num_steps == 2
    assert m.selection_rule == "top_n" and m.top_n == 3 and m.gamma == -2.0
    stored = [(t, e.feature, e.score, e.scale, e.gate) for t, es in m.timesteps.items() for e in es]
    assert sorted(stored) == sorted((c.timestep, c.feature, c.score, c.scale, c.gate) for c in choices)
    assert {t: len(es) for t, es in m.timesteps.items()} == {501: 3, 1: 3}
    for c in choices:
        col = [501, 1].index(c.timestep)
        assert c.scale == pytest.approx(-2.0 * out.stats.mu[0, c.feature, col].item())
        assert c.gate == pytest.approx(out.stats.mu[:, c.feature, col].mean().item())

    # Audit event and MLflow run with the heatmap as evidence, hashes matching.
    events = store.audit_events(subject=f"mapping:{m.id}")
    assert [e.action for e in events] == ["mapping.create"]
    ev = {e["kind"]: e for e in m.evidence}
    assert ev["mlflow_run"]["ref"] == out.mlflow_run_id
    from mlflow.tracking import MlflowClient

    from governance.tracking.runs import tracking_uri

    client = MlflowClient(tracking_uri())
    run = client.get_run(out.mlflow_run_id)
    assert run.data.tags["saegov.mapping_id"] == str(m.id) and run.info.status == "FINISHED"
    assert run.data.metrics["n_selected"] == 6.0
    local = client.download_artifacts(out.mlflow_run_id, "scoring", str(tmp / "dl"))
    assert sha256_file(Path(local) / "score_heatmap.png") == ev["score_heatmap"]["sha256"]
    spec = json.loads((Path(local) / "mapping.json").read_text())
    assert spec["concept"] == "red" and set(spec["timesteps"]) == {"501", "1"}


def test_tau_selection_counts(workspace: tuple[Store, Path], toy_model: Path) -> None:  # noqa: F811
    store, _ = workspace
    # 256 latents: quantile(0.99) lies between the 3rd and 2nd best score -> 2 or 3 features/step
    out = score_concept(store, ScoreRequest(concept="green", sae="toy-sae", tau=99.0, steps=1,
                                            model=str(toy_model), track=False), "erin")
    per_t = {t: len(v) for t, v in out.spec.timesteps.items()}
    assert list(per_t) == [1] and per_t[1] == int((out.scores[:, 0] > torch.quantile(out.scores[:, 0], 0.99)).sum())
    assert 2 <= per_t[1] <= 3
    assert out.mlflow_run_id is None and out.mapping.selection_rule == "tau"


def test_refusals(workspace: tuple[Store, Path], toy_model: Path) -> None:  # noqa: F811
    store, tmp = workspace
    with pytest.raises(ScoringError, match="'dotted' has no prompts"):
        score_concept(store, ScoreRequest(concept="dotted", sae="toy-sae", model=str(toy_model)), "erin")
    with pytest.raises(ScoringError, match="no other concept of kind 'style' has prompts"):
        score_concept(store, ScoreRequest(concept="striped", sae="toy-sae", model=str(toy_model)), "erin")
    store.add_concept("circle", "object", "erin", prompts=["a red circle"])
    with pytest.raises(ScoringError, match="only concept of kind 'object'"):
        score_concept(store, ScoreRequest(concept="circle", sae="toy-sae", model=str(toy_model)), "erin")
    # An SAE trained on another base model is refused before sampling.
    store.register_base_model("other", str(toy_model), "ab" * 32, "erin")
    store.import_sae_folder(tmp / "sae", "erin", hook_point=HOOK, name="other-sae", base_model="other")
    with pytest.raises(ScoringError, match="is not the base model SAE other-sae"):
        score_concept(store, ScoreRequest(concept="red", sae="other-sae", model=str(toy_model)), "erin")
    assert store.list_mappings() == []


def test_cli_errors_are_one_line(workspace: tuple[Store, Path], toy_model: Path) -> None:  # noqa: F811
    from cli.main import saegov

    runner = CliRunner()
    for args, needle in [
        (["concept", "score", "dotted", "--sae", "toy-sae"], "has no prompts"),
        (["concept", "score", "red", "--sae", "toy-sae", "--tau", "99", "--top-n", "2"], "not both"),
        (["concept", "score", "red", "--sae", "nope"], "unknown SAE"),
        (["concept", "score", "nope", "--sae", "toy-sae"], "unknown concept"),
    ]:
        res = runner.invoke(saegov, args + ["--model", str(toy_model), "--actor", "erin"])
        assert res.exit_code != 0, res.output
        lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
        assert len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0], res.stderr

    res = runner.invoke(saegov, ["concept", "score", "blue", "--sae", "toy-sae", "--top-n", "1", "--steps", "1",
                                 "--model", str(toy_model), "--actor", "erin", "--no-mlflow", "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["state"] == "draft" and out["n_features"] == 1 and out["concept"] == "blue"


def test_concept_sweep_picks_the_best_measured_point(workspace: tuple[Store, Path], toy_model: Path) -> None:  # noqa: F811
    """Every (rule, gamma) point is measured on sweep images; the mapping is the argmax of the
    default objective min(UA, IRA, CRA) and carries the whole table as evidence (also in its
    MLflow run)."""
    from mlflow.tracking import MlflowClient

    from governance.scoring.sweep import SWEEP_NAME, best_point, SweepPoint, sweep_jobs
    from governance.evaluation.metrics import eval_jobs
    from governance.tracking.runs import tracking_uri

    store, tmp = workspace
    r = CliRunner().invoke(saegov_cli(), ["concept", "sweep", "red", "--sae", "toy-sae", "--top-ns", "1,4",
                                          "--multipliers", "-1,-30", "--steps", "2", "--model", str(toy_model),
                                          "--actor", "erin", "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    table = out["sweep"]
    assert len(table["points"]) == 4 and table["images_per_point"] == 16
    points = [SweepPoint(**p) for p in table["points"]]
    for p in points:
        assert p.objective == pytest.approx(min(p.UA, p.IRA, p.CRA))
        # CRA is the mean of the other kinds' accuracies, each kept in the table
        assert p.CRA_by_kind is not None and sorted(p.CRA_by_kind) == ["shape", "style"]
        assert p.CRA == pytest.approx(sum(p.CRA_by_kind.values()) / 2)
    chosen = best_point(points)
    assert SweepPoint(**table["chosen"]) == chosen and table["objective"] == "min(UA, IRA, CRA)"
    m = store.get_mapping(out["mapping_id"])
    assert m.state == "draft" and m.selection_rule == "top_n" and m.top_n == int(chosen.value)
    assert m.gamma == chosen.gamma
    assert {len(es) for es in m.timesteps.values()} == {int(chosen.value)}
    assert [e for e in m.evidence if e["kind"] == "sweep"][0]["ref"] == json.dumps(table, sort_keys=True)
    client = MlflowClient(tracking_uri())
    local = client.download_artifacts(out["mlflow_run_id"], "scoring", str(tmp / "dl"))
    assert json.loads((Path(local) / SWEEP_NAME).read_text()) == table

    # Every sweep point is a child run of the scoring run with its own params and metrics (in
    # percent, as the parent's sweep.* metrics), so MLflow's compare view charts the sweep.
    parent = client.get_run(out["mlflow_run_id"])
    assert parent.data.tags["mlflow.source.name"] == "saegov concept sweep"
    assert parent.data.tags["mlflow.user"] == parent.data.tags["saegov.actor"] == "erin"
    assert parent.data.metrics["sweep.UA"] == pytest.approx(100 * chosen.UA)
    assert parent.data.metrics["sweep.objective"] == pytest.approx(100 * chosen.objective)
    children = client.search_runs([parent.info.experiment_id],
                                  f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert len(children) == 4 and {c.info.status for c in children} == {"FINISHED"}
    by_point = {(c.data.params["rule"], int(c.data.params["top_n"]), float(c.data.params["gamma"])): c
                for c in children}
    for p in points:
        c = by_point[(p.rule, int(p.value), p.gamma)]
        assert c.data.metrics["UA"] == pytest.approx(100 * p.UA) and c.data.metrics["IRA"] == pytest.approx(100 * p.IRA)
        assert c.data.metrics["CRA"] == pytest.approx(100 * p.CRA) and c.data.metrics["n_entries"] == p.n_entries
        assert c.data.metrics["CRA.shape"] == pytest.approx(100 * p.CRA_by_kind["shape"])
        assert c.data.tags["saegov.sweep.chosen"] == ("true" if p == chosen else "false")
        assert c.data.tags["mlflow.user"] == "erin" and c.data.tags["saegov.kind"] == "sweep-point"
    # Only the scoring run is announced (a link on stderr; stdout stays JSON).
    assert [ln for ln in r.stderr.splitlines() if ln.startswith("MLflow run")] == [
        f"MLflow run: {parent.info.run_id}"]

    # Sweep images never coincide with evaluation images.
    evaluated = {(p.text, s) for p, s in eval_jobs()}
    for concept in ("red", "circle", "dotted"):
        assert not {(p.text, s) for p, s in sweep_jobs(concept, (100,))} & evaluated
        # --styled-sweep: the evaluation's wording, on the sweep's seeds
        styled = sweep_jobs(concept, (100,), styled=True)
        assert len(styled) == 48 and all(p.style for p, _ in styled) and not {(p.text, s) for p, s in styled} & evaluated
    assert len(sweep_jobs("red", (100,))) == 16
    bad = CliRunner().invoke(saegov_cli(), ["concept", "sweep", "red", "--sae", "toy-sae", "--top-ns", "1",
                                            "--sweep-seeds", "0", "--actor", "erin"])
    assert bad.exit_code != 0 and bad.output.startswith("error:") and "evaluation seeds" in bad.output

    # ... and evaluation refuses seeds a style sweep used (colours sweep on other wording).
    from governance.evaluation.deployment import sweep_seed_clashes

    evidence = {out["mapping_id"]: m.evidence}
    assert sweep_seed_clashes(evidence, (100,)) == []
    styled = {**table, "prompts": "styled wording, sweep seeds", "seeds": [100, 101]}
    evidence[99] = [{"kind": "sweep", "ref": json.dumps(styled)}]
    assert sweep_seed_clashes(evidence, (0, 1)) == []
    assert sweep_seed_clashes(evidence, (1, 101, 100)) == ["mapping 99 (seeds 100,101)"]


def saegov_cli():
    from cli.main import saegov

    return saegov
