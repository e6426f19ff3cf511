"""Team mode (issue 16), played by people at three workspaces that share only the services of
scripts/team_services.sh: a PostgreSQL registry and an `mlflow server` with proxied artifacts.

Workspace A: alice sets up the team, erin collects activations, trains an SAE and scores a
concept; A is then deleted. Workspace B: rob approves, bea publishes, builds the deployment (the
SAE fetched from MLflow by content and hash-checked), rob evaluates, bea promotes; B is deleted.
Workspace C: anyone loads `models:/deployment-team@production` from MLflow and generates, enforced.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from cli.main import saegov
from tests.helpers.enforcement import HOOK

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "team_services.sh"


def _has_postgres() -> bool:
    return any(Path("/usr/lib/postgresql").glob("*/bin/initdb")) if Path("/usr/lib/postgresql").is_dir() else False


@pytest.fixture
def services(tmp_path: Path):
    if not _has_postgres():
        pytest.skip("no PostgreSQL server binaries")
    folder = tmp_path / "services"
    env = {**os.environ, "MLFLOW": str(Path(os.sys.executable).with_name("mlflow"))}
    r = subprocess.run(["bash", str(SCRIPT), "start", str(folder)], env=env, capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr
    try:
        urls = {}
        for line in (folder / "team.env").read_text().splitlines():
            key, _, value = line.removeprefix("export ").partition("=")
            urls[key] = value
        yield urls
    finally:
        pg = Path((folder / "pg.path").read_text().strip())
        subprocess.run(["bash", str(SCRIPT), "remove", str(folder)], env=env, capture_output=True, timeout=60)
        assert not folder.exists() and not pg.exists()  # no cluster left behind, in /tmp as root


class Desk:
    """One person at one workspace: their own SAEGOV_HOME and config folder (private key),
    the team's registry and MLflow URLs."""

    def __init__(self, services: dict[str, str], home: Path, person: str, config: Path) -> None:
        self.env = {**services, "SAEGOV_HOME": str(home), "SAEGOV_CONFIG_DIR": str(config / person),
                    "SAEGOV_ACTOR": person, "SAEGOV_TRUSTED_KEYS": None}
        self.person = person

    def __call__(self, *args: str) -> dict | list | str:
        r = CliRunner().invoke(saegov, [*args], env=self.env)
        assert r.exit_code == 0, f"{self.person}: saegov {' '.join(args)}\n{r.output}"
        if "--json" in args:
            try:
                return json.loads(r.stdout)
            except json.JSONDecodeError:
                raise AssertionError(f"saegov {' '.join(args)}: stdout is not JSON:\n{r.stdout}") from None
        return r.stdout


def test_two_people_on_two_workspaces_then_anyone_generates_from_mlflow(services, tmp_path: Path,
                                                                          toy_pipe_dir: Path) -> None:
    people = tmp_path / "people"
    a, b, c = tmp_path / "A", tmp_path / "B", tmp_path / "C"
    alice, erin = Desk(services, a, "alice", people), Desk(services, a, "erin", people)
    rob, bea = Desk(services, b, "rob", people), Desk(services, b, "bea", people)
    carl = Desk(services, c, "carl", people)

    # --- workspace A ---------------------------------------------------------------------
    alice("db", "upgrade")
    alice("actor", "add", "alice", "--role", "admin")
    for person, role in (("erin", "engineer"), ("rob", "reviewer"), ("bea", "engineer")):
        alice("actor", "add", person, "--role", role)
    for person, desk in (("alice", alice), ("erin", erin), ("rob", rob), ("bea", bea)):
        key = desk("key", "show", "--json")["public_key"]
        alice("key", "register", person, "--public-key", key)
    from governance.basemodel.loading import model_folder_hash

    alice("base-model", "add", "toy", "--source", str(toy_pipe_dir), "--hash", model_folder_hash(toy_pipe_dir))
    prompts = tmp_path / "prompts"
    prompts.mkdir()
    for colour in ("red", "blue"):
        (prompts / f"{colour}.txt").write_text(f"a {colour} circle\na {colour} square\n")
        erin("concept", "add", colour, "--kind", "colour", "--prompts", str(prompts / f"{colour}.txt"))
    (prompts / "all.txt").write_text("\n".join(f"a {c} {s}" for c in ("red", "blue", "green") for s in
                                               ("circle", "square", "triangle")) + "\n")
    acts = a / "acts"
    erin("activations", "collect", "--model", str(toy_pipe_dir), "--hookpoint", HOOK, "--prompts",
         str(prompts / "all.txt"), "--steps", "4", "--out", str(acts), "--json")
    sae = erin("sae", "train", "--activations", str(acts), "--expansion", "4", "--k", "4", "--epochs", "1",
               "--batch-tokens", "256", "--name", "team-sae", "--json")
    assert sae["sae_ref"] == "team-sae@1"
    erin("concept", "score", "red", "--sae", "team-sae", "--top-n", "3", "--multiplier", "-5", "--steps", "10",
         "--model", str(toy_pipe_dir), "--json")
    erin("review", "propose", "1", "--justification", "red must go")
    shutil.rmtree(a)  # nothing of A's folder is needed from here on

    # --- workspace B ---------------------------------------------------------------------
    rob("review", "approve", "1", "--justification", "heatmap checked")
    bea("blocklist", "create", "team", "--mapping", "1")
    bea("blocklist", "publish", "team")
    dep = b / "deployments" / "team"
    built = bea("deploy", "build", "--blocklist", "team@1", "--model", str(toy_pipe_dir), "--out", str(dep), "--json")
    assert built["mlflow_model_version"] == "1" and not Path(built["path"]).is_absolute()
    # Evaluated from MLflow: the very copy an alias on version 1 serves, no local folder needed.
    evaluated = rob("eval", "--deployment", "models:/deployment-team/1", "--seeds", "0", "--actor", "rob", "--json")
    assert evaluated["evaluation_id"] == 1
    promoted = bea("deploy", "promote", "1", "--json")
    assert promoted["mlflow_model"] == "models:/deployment-team@production"
    shutil.rmtree(b)

    # --- workspace C ---------------------------------------------------------------------
    out = c / "red.png"
    got = carl("generate", "--deployment", "models:/deployment-team@production", "a red circle", "--seed", "1",
               "--out", str(out), "--json")
    assert out.is_file()
    trace = got["trace"]
    assert trace["deployment"]["deployment_id"] == 1 and trace["deployment"]["blocklist"] == "team@1"
    fired = [s for call in trace["unet_calls"] for s in call["suppressed"]]
    assert fired and {s["concept"] for s in fired} == {"red"}
    # The SAE was fetched by content: the registry holds MLflow URIs, no path of A.
    from registry.store import Store

    store = Store.open(services["SAEGOV_DATABASE_URL"])
    try:
        rec = store.get_sae("team-sae@1")
        assert rec.weights_uri == f"runs:/{rec.mlflow_run_id}/sae"
        assert str(a) not in json.dumps([d.to_json() for d in store.list_deployments()])
        store.verify_audit()
        assert store.verify_state() == []
    finally:
        store.close()
    assert carl("deploy", "status", "--json")[0]["ok"] is True
    verified = carl("deploy", "verify", "models:/deployment-team@production", "--json")
    assert verified["ok"] and verified["registry_checked"] and verified["deployment_id"] == 1


def test_stop_and_remove_trust_nothing_read_back_from_the_folder(tmp_path: Path) -> None:
    """Whoever can write DIR must not make the script (run as root on CI) kill another process,
    run another binary or delete another folder: the files it reads back are checked."""
    folder = tmp_path / "services"
    folder.mkdir()
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep").write_text("x")
    bystander = subprocess.Popen(["sleep", "30"])
    try:
        (folder / "mlflow.pid").write_text(str(bystander.pid))
        (folder / "pg.bindir").write_text(str(tmp_path / "evil"))
        (folder / "pg.path").write_text(f"/tmp/saegov-team-pg.abcdef/../..{victim}")
        r = subprocess.run(["bash", str(SCRIPT), "remove", str(folder)], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        assert bystander.poll() is None  # not an mlflow server of this folder: left running
        assert (victim / "keep").read_text() == "x" and not folder.exists()
    finally:
        bystander.kill()
        bystander.wait()
