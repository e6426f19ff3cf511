"""Deployments as MLflow Models (issue 16): the registered version is a pyfunc model that verifies
and enforces on load; `production` moves only through an audited promotion that needs a passing
verification and a recorded evaluation; `mlflow models serve` serves it."""
from __future__ import annotations

import base64
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from cli.main import saegov
from tests.governance.enforcement.conftest import build as _build

torch.set_num_threads(1)
MODEL = "deployment-no-red"


def _client():
    from mlflow.tracking import MlflowClient

    from governance.tracking.runs import tracking_uri

    return MlflowClient(tracking_uri=tracking_uri(), registry_uri=tracking_uri())


def _evaluate(world, deployment_id: int = 1) -> int:
    metrics = {"red": {"kind": "colour", "UA": 0.9, "IRA": 0.95, "CRA": 0.9}}
    return world["store"].record_evaluation(deployment_id=deployment_id, metrics=metrics, actor="rob").id


def test_build_registers_a_pyfunc_model_as_candidate_that_verifies_and_enforces(world, monkeypatch) -> None:
    import mlflow
    import pandas as pd
    from PIL import Image

    from governance.enforcement import EnforcedStableDiffusionPipeline
    from governance.tracking.runs import tracking_uri

    out = _build(world)
    dep = world["store"].list_deployments()[0]
    assert dep.mlflow_model_version == "1" and dep.details["mlflow_model"] == f"models:/{MODEL}/1"
    client = _client()
    assert str(client.get_model_version_by_alias(MODEL, "candidate").version) == "1"
    with pytest.raises(Exception, match="production"):
        client.get_model_version_by_alias(MODEL, "production")  # building never moves production

    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_uri())  # plain MLflow finds the workspace's store
    info = mlflow.models.get_model_info(f"models:/{MODEL}@candidate")
    assert [c["name"] for c in info.signature.inputs.to_dict()] == ["prompt"]
    assert {p.name for p in info.signature.params} == {"num_inference_steps", "guidance_scale", "seed"}
    pyfunc = info.flavors["python_function"]  # no path of the building machine in the model
    assert pyfunc["model_code_path"] == "deployment_model_entry.py"
    assert pyfunc["artifacts"] == {"deployment": {"path": "artifacts/deployment"}}
    model = mlflow.pyfunc.load_model(f"models:/{MODEL}@candidate")  # plain MLflow: verifies, then enforces
    got = model.predict(pd.DataFrame({"prompt": ["a red circle"]}), params={"seed": 4})
    assert list(got.columns) == ["prompt", "seed", "image", "trace"] and int(got["seed"][0]) == 4
    trace = json.loads(got["trace"][0])
    fired = [s for c in trace["unet_calls"] for s in c["suppressed"]]
    assert fired and {s["concept"] for s in fired} == {"red"}
    # The same image as the enforced pipeline makes from the folder with the same seed.
    pipe = EnforcedStableDiffusionPipeline.from_pretrained(out, store=world["store"])
    direct = pipe("a red circle", generator=torch.Generator().manual_seed(4), seeds=[4]).images[0]
    served = Image.open(io.BytesIO(base64.b64decode(got["image"][0])))
    assert served.tobytes() == direct.tobytes() and served.size == direct.size


def test_a_model_whose_code_or_deployment_was_changed_is_refused(world, tmp_path: Path, monkeypatch) -> None:
    import tempfile

    from governance.enforcement.deployment import DeploymentError
    from governance.tracking.artifacts import download_quietly
    from governance.tracking.deployment_model import DeploymentModelError, load_deployment_model

    _build(world)
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))  # where the private copies go
    local = download_quietly(f"models:/{MODEL}/1", tmp_path / "dl")
    code = local / "deployment_model_entry.py"
    code.write_text(code.read_text() + "\nimport os  # a payload\n")
    with pytest.raises(DeploymentModelError, match="code file differs"):
        load_deployment_model(str(local))
    local = download_quietly(f"models:/{MODEL}/1", tmp_path / "dl2")
    bl = local / "artifacts" / "deployment" / "saegov" / "blocklist.json"  # named stably
    bl.write_text(bl.read_text().replace('"gamma":-5.0', '"gamma":0.0'))
    with pytest.raises(Exception, match="blocklist.json was modified"):
        load_deployment_model(str(local))
    assert DeploymentError  # the deployment's own verification is what refused
    assert list(scratch.iterdir()) == []  # no refused copy left behind
    model = load_deployment_model(f"models:/{MODEL}/1")  # loaded: its copy lives as long as the model
    got = model.predict(__import__("pandas").DataFrame({"prompt": ["a red circle"]}),
                        params={"seed": 1, "num_inference_steps": 2})
    assert len(got) == 1
    model.unwrap_python_model().pipe.save_pretrained(tmp_path / "saved")  # copies the verified deployment
    assert (tmp_path / "saved" / "saegov" / "manifest.json").is_file()
    del model, got
    __import__("gc").collect()
    assert list(scratch.iterdir()) == []


def test_promotion_needs_a_recorded_evaluation_is_audited_and_moves_production(world) -> None:
    _build(world)
    r = CliRunner().invoke(saegov, ["deploy", "promote", "1", "--actor", "erin"])
    assert r.exit_code != 0 and "no recorded evaluation" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    ev = _evaluate(world)
    r = CliRunner().invoke(saegov, ["deploy", "promote", "1", "--actor", "rob"])  # a reviewer may not promote
    assert r.exit_code != 0 and "deployment.promote" in r.stderr
    r = CliRunner().invoke(saegov, ["deploy", "promote", "1", "--actor", "erin", "--json"])
    assert r.exit_code == 0, r.output
    info = json.loads(r.stdout)
    assert info["evaluation_id"] == ev and info["mlflow_model"] == f"models:/{MODEL}@production"
    assert str(_client().get_model_version_by_alias(MODEL, "production").version) == "1"
    store = world["store"]
    assert [e.action for e in store.audit_events()][-2:] == ["deployment.evaluate", "deployment.promote"]
    store.verify_audit()
    r = CliRunner().invoke(saegov, ["deploy", "status", "--json"])
    assert r.exit_code == 0 and json.loads(r.stdout)[0]["ok"] is True
    # An alias moved by hand in MLflow is seen.
    _build(world, name="dep2")
    _client().set_registered_model_alias(MODEL, "production", "2")
    r = CliRunner().invoke(saegov, ["deploy", "status"])
    assert r.exit_code == 1 and "MISMATCH" in r.stdout
    _client().set_registered_model_alias(MODEL, "production", "1")
    assert CliRunner().invoke(saegov, ["deploy", "status"]).exit_code == 0
    # So is `production` set by hand on a deployment model the registry never promoted.
    _client().create_registered_model("deployment-evil")
    _client().create_model_version("deployment-evil", _client().get_model_version(MODEL, "2").source)
    _client().set_registered_model_alias("deployment-evil", "production", "1")
    r = CliRunner().invoke(saegov, ["deploy", "status", "--json"])
    rows = {row["model"]: row for row in json.loads(r.stdout)}
    assert r.exit_code == 1 and rows[MODEL]["ok"] and not rows["deployment-evil"]["ok"]
    assert rows["deployment-evil"]["promotion_id"] is None and rows["deployment-evil"]["mlflow_version"] == "1"
    r = CliRunner().invoke(saegov, ["deploy", "promote", "1", "--alias", "v2", "--actor", "erin"])
    assert r.exit_code == 2 and r.stderr.count("\n") == 1 and "alias 'v2'" in r.stderr


def test_an_evaluation_row_edited_by_sql_is_named_by_audit_verify(world) -> None:
    from sqlalchemy import text

    _build(world)
    _evaluate(world)
    assert world["store"].verify_state() == []
    with world["store"].engine.begin() as conn:
        conn.execute(text("""UPDATE deployment_evaluations SET metrics = '{"red": {"UA": 1.0}}'"""))
    found = world["store"].verify_state()
    assert len(found) == 1 and found[0].startswith("evaluation 1: the table says")


def test_promotion_refuses_a_model_version_whose_deployment_is_not_the_recorded_one(world) -> None:
    from governance.enforcement.deployment import DeploymentError
    from governance.enforcement.promote import promote

    _build(world)
    _evaluate(world)
    # Repoint the recorded model at a version that holds another build (same blocklist, other manifest).
    _build(world, name="dep2")
    store = world["store"]
    with store.engine.begin() as conn:
        from sqlalchemy import text

        conn.execute(text("UPDATE deployments SET details = json_set(details, '$.mlflow_model', "
                          f"'models:/{MODEL}/2') WHERE id = 1"))
    with pytest.raises(DeploymentError, match="not deployment 1|do not agree with its audit log"):
        promote(store, 1, "erin")
    assert store.list_promotions() == []


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("server", ["mlflow models serve", "saegov deploy serve"])
def test_the_production_deployment_is_served_enforced(world, server: str, tmp_path: Path) -> None:
    from governance.tracking.runs import tracking_uri

    _build(world)
    _evaluate(world)
    assert CliRunner().invoke(saegov, ["deploy", "promote", "1", "--actor", "erin"]).exit_code == 0
    port = _free_port()
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri(), "OMP_NUM_THREADS": "1", "TMPDIR": str(scratch),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    uri = f"models:/{MODEL}@production"
    if server == "mlflow models serve":
        cmd = [str(Path(sys.executable).with_name("mlflow")), "models", "serve", "-m", uri, "--env-manager", "local",
               "--host", "127.0.0.1", "-p", str(port), "-w", "1"]
    else:  # saegov's checks first, then the same server
        cmd = [str(Path(sys.executable).with_name("saegov")), "deploy", "serve", uri, "--port", str(port)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.time() + 120
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.time() > deadline:
                raise AssertionError(f"server did not start: {proc.stdout.read().decode()[-2000:] if proc.stdout else ''}")
            time.sleep(1)
        body = json.dumps({"dataframe_split": {"columns": ["prompt"], "data": [["a red circle"]]},
                           "params": {"seed": 2}}).encode()
        req = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=body,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=120) as resp:
            predictions = json.loads(resp.read())["predictions"]
    finally:
        # mlflow: the server's group; saegov deploy serve: saegov alone, as `kill PID` or a
        # service manager stops it (it stops its server's group, then removes its private copy)
        (os.killpg if server == "mlflow models serve" else os.kill)(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)
    assert len(predictions) == 1 and predictions[0]["seed"] == 2
    if server == "saegov deploy serve":
        assert proc.returncode == 128 + signal.SIGTERM
        assert not [p for p in scratch.iterdir() if p.name.startswith("saegov-")]  # its copy removed
        time.sleep(1)
        with pytest.raises(OSError):  # and the server with its workers is gone
            urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2)
    trace = json.loads(predictions[0]["trace"])
    assert trace["deployment"]["deployment_id"] == 1
    fired = [s for c in trace["unet_calls"] for s in c["suppressed"]]
    assert fired and {s["concept"] for s in fired} == {"red"}


def test_a_moved_workspace_reads_and_writes_its_own_artifacts(world, monkeypatch) -> None:
    import shutil

    from governance.enforcement.promote import promote
    from registry.store import Store

    _build(world)
    _evaluate(world)
    old = world["home"]
    world["store"].close()
    new = old.parent / "moved"
    shutil.copytree(old, new)
    shutil.rmtree(old)  # nothing may still point into the original
    monkeypatch.setenv("SAEGOV_HOME", str(new))
    store = Store.open()
    done = promote(store, 1, "erin")  # fetches the MLflow Model from the moved store and verifies it
    assert done.mlflow_model == f"models:/{MODEL}@production"
    assert not old.exists()
    client = _client()
    mv = client.get_model_version(MODEL, "1")
    assert mv.source.startswith((new / "mlartifacts").resolve().as_uri())
    exp = client.get_experiment(client.get_run(mv.run_id).info.experiment_id)
    assert exp.artifact_location == (new / "mlartifacts").resolve().as_uri()


def test_a_model_with_redirected_code_or_a_hand_set_alias_is_refused(world, tmp_path: Path) -> None:
    """MLflow honours `data:` in python_function (the code then comes from a subfolder): refused
    before anything runs; `production` set in MLflow by hand is refused by saegov's loaders."""
    import shutil

    import yaml

    from governance.tracking.artifacts import download_quietly
    from governance.tracking.deployment_model import DeploymentModelError, check_model_folder

    _build(world)
    local = download_quietly(f"models:/{MODEL}/1", tmp_path / "dl")
    check_model_folder(local)
    evil = tmp_path / "evil"
    shutil.copytree(local, evil)
    mlmodel = yaml.safe_load((evil / "MLmodel").read_text())
    mlmodel["flavors"]["python_function"]["data"] = "sub"
    (evil / "MLmodel").write_text(yaml.safe_dump(mlmodel))
    with pytest.raises(DeploymentModelError, match="python_function has data"):
        check_model_folder(evil)
    r = CliRunner().invoke(saegov, ["deploy", "serve", str(evil)])
    assert r.exit_code == 1 and len(r.stderr.strip().splitlines()) == 1 and "python_function has data" in r.stderr
    # production set by hand (no promotion): generate refuses to run it.
    _client().set_registered_model_alias(MODEL, "production", "1")
    r = CliRunner().invoke(saegov, ["generate", "a red circle", "--deployment", f"models:/{MODEL}@production",
                                    "--out", str(tmp_path / "x.png")])
    assert r.exit_code == 1 and "never promoted" in r.stderr and not (tmp_path / "x.png").exists()
    r = CliRunner().invoke(saegov, ["deploy", "verify", f"models:/{MODEL}@production"])
    assert r.exit_code == 1 and "never promoted" in r.stderr
    r = CliRunner().invoke(saegov, ["deploy", "verify", f"models:/{MODEL}/1"])  # the version itself is fine
    assert r.exit_code == 0 and r.stdout.startswith("ok: "), r.output
    r = CliRunner().invoke(saegov, ["generate", "a red circle", "--deployment", f"models:/{MODEL}@candidate",
                                    "--out", str(tmp_path / "y.png")])
    assert r.exit_code == 0, r.output


def test_an_sae_whose_config_was_edited_is_refused(world, tmp_path: Path) -> None:
    import json
    import shutil
    from types import SimpleNamespace

    from governance.common.errors import GovernanceError
    from governance.tracking.artifacts import sae_folder

    rec = world["store"].get_sae("toy-sae@1")
    assert sae_folder(rec).is_dir()
    copy = tmp_path / "sae-copy"
    shutil.copytree(sae_folder(rec), copy)
    cfg = json.loads((copy / "cfg.json").read_text())
    cfg["k"] = 1  # the same weights, a blocking that no longer fires
    (copy / "cfg.json").write_text(json.dumps(cfg))
    forged = SimpleNamespace(weights_uri=copy.as_uri(), weights_sha256=rec.weights_sha256, cfg_sha256=rec.cfg_sha256,
                             mlflow_run_id=None, ref=rec.ref)
    with pytest.raises(GovernanceError, match="cfg.json .* is not the registered one"):
        sae_folder(forged)


def test_a_linked_local_store_is_not_rewritten(tmp_path: Path) -> None:
    from governance.common.errors import GovernanceError
    from governance.tracking.local_store import MARKER, rebase_if_moved

    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    import sqlite3

    with sqlite3.connect(a / "mlflow.db") as conn:
        conn.execute("CREATE TABLE experiments (artifact_location TEXT)")
        conn.execute("INSERT INTO experiments VALUES (?)", ((a / "mlartifacts").resolve().as_uri(),))
    assert rebase_if_moved(a) is None
    (b / "mlflow.db").symlink_to(a / "mlflow.db")
    (b / MARKER).write_text((a / MARKER).read_text())
    with pytest.raises(GovernanceError, match="link to another workspace"):
        rebase_if_moved(b)
    with sqlite3.connect(a / "mlflow.db") as conn:
        assert conn.execute("SELECT artifact_location FROM experiments").fetchone()[0].startswith(
            (a / "mlartifacts").resolve().as_uri())


def test_promotion_needs_an_evaluation_that_meets_the_approval_policy(world) -> None:
    from governance.enforcement.deployment import DeploymentError
    from governance.enforcement.promote import promote

    store = world["store"]
    _build(world)
    store.set_approval_policy(actor="alice", min_ua=0.95, min_cra=0.5)
    _evaluate(world)  # red UA 0.9
    with pytest.raises(DeploymentError, match=r"red UA 90.0 %, below the 95.0 % of approval policy v1"):
        promote(store, 1, "erin")
    assert store.list_promotions() == []
    better = store.record_evaluation(deployment_id=1, actor="rob",
                                     metrics={"red": {"kind": "colour", "UA": 0.97, "IRA": 0.95, "CRA": 0.9}})
    assert promote(store, 1, "erin").evaluation.id == better.id


def test_the_evaluator_cannot_promote_on_their_own_evaluation(world) -> None:
    from governance.enforcement.promote import promote
    from registry.errors import PermissionDenied

    store = world["store"]
    _build(world)
    store.record_evaluation(deployment_id=1, actor="erin",
                            metrics={"red": {"kind": "colour", "UA": 0.97, "IRA": 0.95, "CRA": 0.9}})
    with pytest.raises(PermissionDenied, match="four-eyes rule: erin recorded evaluation 1"):
        promote(store, 1, "erin")
    assert store.list_promotions() == []
