"""MLflow runs people can read, on a real local MLflow store: activation collection is a run
whose dataset the SAE training run logs as its input too (lineage in the UI), every run names
the saegov actor and command, links are printed on stderr (never into `--json`), an unreachable
server is one line before any work, and a saegov command's stderr carries no library noise."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from cli.main import saegov

torch.set_num_threads(1)

HOOK = "up_blocks.1.attentions.1"
# What must never reach a saegov command's stderr (libraries' hints, warnings and progress bars).
NOISE = ("torchvision", "accelerate", "Warning", "warn", "it/s]", "Loading", "Writing", "Downloading", "[transformers]")


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "home"
    monkeypatch.setenv("SAEGOV_HOME", str(home))
    monkeypatch.delenv("SAEGOV_DATABASE_URL", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("SAEGOV_ACTOR", raising=False)
    (tmp_path / "prompts.txt").write_text("a red circle\na blue square in striped style\n")
    return home


def _collect(tmp: Path, model: Path, *extra: str) -> object:
    return CliRunner().invoke(saegov, ["activations", "collect", "--model", str(model), "--hookpoint", HOOK,
                                       "--prompts", str(tmp / "prompts.txt"), "--steps", "2", "--device", "cpu",
                                       "--out", str(tmp / "acts"), *extra])


def test_collection_and_training_share_the_dataset_input(home: Path, toy_model: Path) -> None:
    from mlflow.tracking import MlflowClient

    from governance.basemodel.loading import model_folder_hash

    tmp = home.parent
    r = _collect(tmp, toy_model, "--actor", "carol", "--json")
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout)  # the link went to stderr
    assert summary["complete"] and not any(n in r.stderr for n in NOISE), r.stderr
    manifest_sha = hashlib.sha256((tmp / "acts" / "manifest.json").read_bytes()).hexdigest()

    client = MlflowClient(tracking_uri=f"sqlite:///{home.resolve() / 'mlflow.db'}")
    exp = client.get_experiment_by_name(f"saegov/{model_folder_hash(toy_model)[:12]}")
    [collected] = client.search_runs([exp.experiment_id], "tags.`saegov.kind` = 'activation-collection'")
    assert r.stderr.splitlines()[-1] == f"MLflow run: {collected.info.run_id}"
    t = collected.data.tags
    assert collected.info.status == "FINISHED" and collected.info.run_name == f"collect {HOOK}"
    assert t["mlflow.user"] == t["saegov.actor"] == "carol"
    assert t["mlflow.source.name"] == "saegov activations collect" and t["mlflow.source.type"] == "LOCAL"
    assert t["saegov.activation_dataset_sha256"] == manifest_sha
    p = collected.data.params
    assert p["collect.hook_point"] == HOOK and p["collect.steps"] == "2" and p["n_prompts"] == "2"
    assert p["activation_dataset_sha256"] == manifest_sha and p["resolved.height"] == "32"
    assert collected.data.metrics["rows"] == summary["rows"] and collected.data.metrics["shards"] == 1
    [made] = collected.inputs.dataset_inputs
    assert {x.key: x.value for x in made.tags} == {"mlflow.data.context": "collection"}
    assert made.dataset.digest == manifest_sha[:36] and made.dataset.name == f"activations {HOOK}"
    assert json.loads(made.dataset.profile)["rows"] == summary["rows"]

    # Training on it logs the same dataset (name and digest) as its input: one dataset in the UI.
    r = CliRunner().invoke(saegov, ["sae", "train", "--activations", str(tmp / "acts"), "--expansion", "2", "--k", "4",
                                    "--epochs", "1", "--batch-tokens", "64", "--no-register", "--json"],
                           env={"SAEGOV_ACTOR": "dave"})
    assert r.exit_code == 0, r.output
    trained = client.get_run(json.loads(r.stdout)["mlflow_run_id"])
    [used] = trained.inputs.dataset_inputs
    assert {x.key: x.value for x in used.tags} == {"mlflow.data.context": "training"}
    assert (used.dataset.name, used.dataset.digest) == (made.dataset.name, made.dataset.digest)
    assert used.dataset.source == made.dataset.source
    assert trained.data.tags["mlflow.user"] == "dave"  # SAEGOV_ACTOR, as the CLI resolves it
    assert not any(n in r.stderr for n in NOISE), r.stderr

    # --no-mlflow: no run.
    r = _collect(tmp, toy_model, "--no-mlflow")
    assert r.exit_code == 0, r.output
    assert "MLflow run" not in r.stderr
    assert len(client.search_runs([exp.experiment_id], "tags.`saegov.kind` = 'activation-collection'")) == 1


def test_collection_with_an_unreachable_server_is_one_line(home: Path, toy_model: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    r = _collect(home.parent, toy_model)
    assert r.exit_code == 6, r.output
    assert r.stderr.strip() == "error: MLflow server http://127.0.0.1:9 is unreachable (Connection refused)"
    assert not (home.parent / "acts").exists()  # refused before the model was even loaded
