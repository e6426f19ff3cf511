"""`saegov sae train` end to end against a real migrated registry (SQLite) and a real local MLflow
sqlite store in tmp_path: files, hashes, MLflow run/model version/alias, registry lineage, audit."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from cli.main import saegov
from governance.common.hashing import sha256_file
from governance.sae import TopKSAE
from registry.db import make_engine, upgrade
from registry.store import Store
from tests.helpers.activations import BASE_MODEL_HASH, HOOKPOINT, sparse_toy_activations, write_dataset

torch.set_num_threads(1)
NAME = f"sae-{HOOKPOINT}"  # the registry's default name
MODEL = f"sae-{BASE_MODEL_HASH[:12]}-{HOOKPOINT}"  # MLflow's: one registered model per base model and hook point


@pytest.fixture
def workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict:
    home = tmp_path / "home"
    home.mkdir()
    url = f"sqlite:///{home / 'registry.db'}"
    engine = make_engine(url)
    upgrade(engine)
    engine.dispose()
    store = Store.open(url)
    store.add_actor("alice", "admin", None)
    store.add_actor("aud", "auditor", "alice")
    store.register_base_model("toy", "/tmp/toy", BASE_MODEL_HASH, "alice")
    monkeypatch.setenv("SAEGOV_HOME", str(home))
    monkeypatch.setenv("SAEGOV_DATABASE_URL", url)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("SAEGOV_ACTOR", "alice")
    ds = write_dataset(tmp_path / "ds", sparse_toy_activations(3000, d_in=16, n_atoms=64, active=3), shard_rows=1000)
    return {"home": home, "store": store, "ds": ds, "url": url}


ARGS = ["--expansion", "4", "--k", "4", "--epochs", "2", "--batch-tokens", "256"]


def test_train_tracks_and_registers(workspace: dict) -> None:
    from mlflow.tracking import MlflowClient

    runner = CliRunner()
    res = runner.invoke(saegov, ["sae", "train", "--activations", str(workspace["ds"]), *ARGS, "--json"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    folder = Path(summary["folder"])
    assert folder.parent == (workspace["home"] / "saes").resolve()
    sha = sha256_file(folder / "sae.safetensors")
    assert summary["weights_sha256"] == sha
    assert TopKSAE.load(folder, expected_sha256=sha).n_latents == 64
    manifest_sha = hashlib.sha256((workspace["ds"] / "manifest.json").read_bytes()).hexdigest()

    # Registry: version with hash, metrics and lineage, plus its audit event.
    rec = workspace["store"].get_sae(summary["sae_ref"])
    assert rec.ref == f"{NAME}@1" and rec.weights_sha256 == sha and rec.base_model == "toy"
    assert rec.activation_dataset_hash == manifest_sha
    assert rec.mlflow_run_id == summary["mlflow_run_id"] and rec.mlflow_model_version == "1"
    assert rec.metrics["fvu"] == pytest.approx(summary["metrics"]["fvu"]) and rec.k == 4 and rec.d_in == 16
    assert rec.cfg_sha256 == sha256_file(folder / "cfg.json")
    events = [e for e in workspace["store"].audit_events() if e.action == "sae.register"]
    assert len(events) == 1 and events[0].actor == "alice"

    # MLflow: experiment per base model, full params, per-step metrics, artifacts, model version.
    client = MlflowClient(tracking_uri=f"sqlite:///{workspace['home'] / 'mlflow.db'}")
    exp = client.get_experiment_by_name(f"saegov/{BASE_MODEL_HASH[:12]}")
    assert exp is not None and exp.artifact_location.startswith((workspace["home"] / "mlartifacts").as_uri())
    run = client.get_run(summary["mlflow_run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.params["train.k"] == "4" and run.data.params["train.adam_eps"] == "6.25e-10"
    assert run.data.params["activation_dataset_sha256"] == manifest_sha
    assert run.data.tags["saegov.sae_id"] == str(rec.id) and run.data.tags["saegov.sae_ref"] == rec.ref
    # Who ran it and with what.
    from governance.tracking.runs import saegov_version

    assert run.data.tags["mlflow.user"] == run.data.tags["saegov.actor"] == "alice"
    assert run.data.tags["mlflow.source.name"] == "saegov sae train"
    assert run.data.tags["mlflow.source.type"] == "LOCAL" and run.data.tags["saegov.version"] == saegov_version()
    # The activation dataset is the run's input (context "training"); MLflow caps digests at 36.
    [inp] = run.inputs.dataset_inputs
    assert {t.key: t.value for t in inp.tags} == {"mlflow.data.context": "training"}
    assert inp.dataset.digest == manifest_sha[:36] and inp.dataset.source_type == "local"
    assert json.loads(inp.dataset.source)["uri"] == (workspace["ds"] / "manifest.json").resolve().as_uri()
    assert json.loads(inp.dataset.profile)["manifest_sha256"] == manifest_sha
    assert json.loads(inp.dataset.profile)["rows"] == 3000
    assert res.stderr.splitlines()[-1] == f"MLflow run: {run.info.run_id}"  # stdout stays JSON
    fvu_hist = client.get_metric_history(run.info.run_id, "fvu")
    assert len(fvu_hist) == summary["steps"] == 2 * (3000 // 256)
    for key in ("l0", "dead_pct", "explained_variance", "auxk_loss", "lr"):
        assert len(client.get_metric_history(run.info.run_id, key)) == summary["steps"]
    assert run.data.metrics["final_fvu"] == pytest.approx(summary["metrics"]["fvu"])
    arts = {a.path for a in client.list_artifacts(run.info.run_id, "sae")}
    assert {"sae/cfg.json", "sae/sae.safetensors", "sae/training.json"} <= arts
    mv = client.get_model_version_by_alias(MODEL, "candidate")
    assert str(mv.version) == "1" and mv.run_id == run.info.run_id and mv.tags["weights_sha256"] == sha
    assert summary["mlflow_model_name"] == MODEL
    assert client.get_registered_model(MODEL).tags == {"saegov.base_model_hash": BASE_MODEL_HASH,
                                                       "saegov.hookpoint": HOOKPOINT}
    assert mv.tags["saegov.sae_id"] == str(rec.id)

    # A second training is version 2 in both systems; the alias moves to it.
    res2 = runner.invoke(saegov, ["sae", "train", "--activations", str(workspace["ds"]), *ARGS,
                                  "--seed", "1", "--json"])
    assert res2.exit_code == 0, res2.output
    s2 = json.loads(res2.stdout)
    assert s2["sae_ref"] == f"{NAME}@2" and s2["mlflow_model_version"] == "2"
    assert str(client.get_model_version_by_alias(MODEL, "candidate").version) == "2"

    # --no-register: tracked in MLflow, but registered nowhere: no registry version, no MLflow
    # model version, no alias moved.
    versions_before = sorted(int(v.version) for v in client.search_model_versions(f"name = '{MODEL}'"))
    res3 = runner.invoke(saegov, ["sae", "train", "--activations", str(workspace["ds"]), *ARGS,
                                  "--seed", "2", "--no-register", "--json"])
    assert res3.exit_code == 0, res3.output
    s3 = json.loads(res3.stdout)
    assert s3["mlflow_run_id"] and s3["mlflow_model_version"] is None and s3["sae_ref"] is None
    assert versions_before == [1, 2]
    assert sorted(int(v.version) for v in client.search_model_versions(f"name = '{MODEL}'")) == versions_before
    assert [m.name for m in client.search_registered_models()] == [MODEL]
    assert not client.search_model_versions(f"run_id = '{s3['mlflow_run_id']}'")
    assert {a: str(v) for a, v in client.get_registered_model(MODEL).aliases.items()} == {"candidate": "2"}
    assert len(workspace["store"].list_saes()) == 2


def test_train_errors_are_one_line(workspace: dict, tmp_path: Path) -> None:
    runner = CliRunner()

    def run(*args: str) -> tuple[int, str]:
        r = runner.invoke(saegov, ["sae", "train", *args])
        return r.exit_code, r.output

    code, out = run("--activations", str(tmp_path / "nope"))
    assert code != 0 and out.startswith("error:") and "Traceback" not in out and len(out.splitlines()) == 1
    # The actor is checked before any training: an auditor may not register SAEs.
    code, out = run("--activations", str(workspace["ds"]), *ARGS, "--actor", "aud")
    assert code == 4 and out.startswith("error:") and "may not do sae.register" in out
    assert not (workspace["home"] / "saes").exists()
    code, out = run("--activations", str(workspace["ds"]), "--k", "0")
    assert code != 0 and out.startswith("error: invalid option k")
    # Tampered shard.
    shard = workspace["ds"] / "shard-00000.safetensors"
    data = bytearray(shard.read_bytes())
    data[-1] ^= 0xFF
    shard.write_bytes(bytes(data))
    code, out = run("--activations", str(workspace["ds"]), *ARGS)
    assert code != 0 and out.startswith("error:") and "sha256 does not match" in out
    assert len(out.splitlines()) == 1 and "Traceback" not in out


def test_an_unreachable_mlflow_server_is_one_line_before_any_work(workspace: dict,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    r = CliRunner().invoke(saegov, ["sae", "train", "--activations", str(workspace["ds"]), *ARGS])
    assert r.exit_code == 6, r.output
    assert r.stderr.startswith("error: MLflow server http://127.0.0.1:9 is unreachable")
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.output
    assert not (workspace["home"] / "saes").exists() and workspace["store"].list_saes() == []
    # --no-mlflow does not need the server.
    r = CliRunner().invoke(saegov, ["sae", "train", "--activations", str(workspace["ds"]), *ARGS, "--no-mlflow",
                                    "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["mlflow_run_id"] is None and "MLflow run" not in r.stderr


def test_run_links_and_registered_model_names() -> None:
    from governance.sae.service import mlflow_model_name
    from governance.tracking.runs import run_link

    assert run_link("http://mlflow.example:5000/", "3", "abc") == "http://mlflow.example:5000/#/experiments/3/runs/abc"
    assert run_link("https://m.example/mlflow", "3", "abc") == "https://m.example/mlflow/#/experiments/3/runs/abc"
    assert run_link("sqlite:////tmp/mlflow.db", "3", "abc") == "abc"
    assert mlflow_model_name("cd" * 32, "mid_block.attentions.0") == f"sae-{'cd' * 6}-mid_block.attentions.0"
    assert mlflow_model_name(None, "a/b:c@d") == "sae-unknown-base-model-a-b-c-d"  # '/', ':' refused by MLflow
