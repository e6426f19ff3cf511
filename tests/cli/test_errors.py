"""Every `saegov` command, given bad input, prints exactly one line `error: ...` on stderr, no
traceback, exits with the documented code (governance.common.errors) and leaves the registry
database as it was. New commands must be added to BAD_INPUTS (checked against the click tree)."""
from __future__ import annotations

import sqlite3
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from cli.main import saegov
from governance.common.errors import EXIT_REFUSED, EXIT_UNREACHABLE, EXIT_USAGE
from tests.helpers.registry import make_sae_folder, write_mapping

UNREACHABLE_DB = "postgresql+psycopg://u@127.0.0.1:1/x"
BAD_URL = "nonsense"

# command path -> (argv after the path, expected exit code, extra environment)
BAD_INPUTS: dict[str, list[tuple[list[str], int, dict[str, str]]]] = {
    "db upgrade": [(["--revision", "nosuch"], EXIT_USAGE, {})],
    "db current": [([], EXIT_USAGE, {"SAEGOV_DATABASE_URL": BAD_URL})],
    "actor add": [(["x", "--role", "wizard", "--actor", "alice"], EXIT_REFUSED, {})],
    "actor disable": [(["rob", "--reason", "left", "--actor", "erin"], 4, {}),
                      (["ghost", "--reason", "x", "--actor", "alice"], 4, {})],
    "actor role": [(["rob", "wizard", "--reason", "x", "--actor", "alice"], EXIT_REFUSED, {})],
    "actor list": [([], EXIT_UNREACHABLE, {"SAEGOV_DATABASE_URL": UNREACHABLE_DB})],
    "base-model add": [(["x", "--source", "s", "--hash", "xyz", "--actor", "erin"], EXIT_REFUSED, {})],
    "base-model list": [([], EXIT_USAGE, {"SAEGOV_DATABASE_URL": BAD_URL})],
    "toyworld prompts": [(["--bogus"], EXIT_USAGE, {})],
    "toyworld train": [(["--out", "{file}"], EXIT_USAGE, {})],
    "toyworld path": [(["extra"], EXIT_USAGE, {})],
    "toyworld eval": [(["--seeds", "a,b"], EXIT_USAGE, {})],
    "activations collect": [(["--prompts", "{empty}", "--out", "{tmp}/acts"], EXIT_USAGE, {}),
                            (["--prompts", "{file}", "--out", "{tmp}/acts", "--device", "cuda:7"], EXIT_USAGE, {}),
                            (["--prompts", "{file}", "--out", "{tmp}/acts", "--seed", str(2**64)], EXIT_USAGE, {}),
                            (["--prompts", "{file}", "--out", "{tmp}/acts", "--steps", "0"], EXIT_USAGE, {}),
                            # Tracked by default: an unreachable MLflow server is refused before any work.
                            (["--prompts", "{file}", "--out", "{tmp}/acts", "--actor", "erin"], EXIT_UNREACHABLE,
                             {"MLFLOW_TRACKING_URI": "http://127.0.0.1:9"}),
                            (["--prompts", "{file}", "--out", "{tmp}/acts", "--no-mlflow", "--batch-size", "0"],
                             EXIT_USAGE, {})],
    "activations show": [(["{tmp}"], EXIT_USAGE, {})],
    "sae import": [(["{tmp}/missing", "--actor", "erin"], EXIT_REFUSED, {})],
    "sae list": [([], EXIT_UNREACHABLE, {"SAEGOV_DATABASE_URL": UNREACHABLE_DB})],
    "sae show": [(["nope@3"], EXIT_REFUSED, {}), (["1" + "0" * 30], EXIT_REFUSED, {})],
    "sae train": [(["--activations", "{tmp}/missing"], EXIT_USAGE, {}),
                  (["--activations", "{tmp}", "--k", "0"], EXIT_USAGE, {}),
                  (["--activations", "{tmp}", "--seed", "-1"], EXIT_USAGE, {})],
    "concept add": [(["x", "--kind", "weird", "--actor", "erin"], EXIT_REFUSED, {}),
                    (["x" * 5000, "--kind", "colour", "--actor", "erin"], EXIT_REFUSED, {}),
                    (["red\x1b[2J", "--kind", "colour", "--actor", "erin"], EXIT_REFUSED, {}),
                    (["y", "--kind", "colour", "--description", "d" * 5000, "--actor", "erin"], EXIT_REFUSED, {}),
                    (["x", "--kind", "colour", "--prompts", "{empty}", "--actor", "erin"], EXIT_USAGE, {})],
    "concept list": [([], EXIT_USAGE, {"SAEGOV_DATABASE_URL": BAD_URL}), (["--kind", "bogus"], EXIT_REFUSED, {})],
    "concept score": [(["red", "--sae", "1", "--tau", "5", "--top-n", "3", "--actor", "erin"], EXIT_USAGE, {}),
                      (["nope", "--sae", "1", "--actor", "erin"], EXIT_REFUSED, {})],
    "concept sweep": [(["red", "--sae", "1", "--top-ns", "1", "--sweep-seeds", "0", "--actor", "erin"],
                       EXIT_USAGE, {}),
                      (["purple", "--sae", "1", "--top-ns", "1", "--actor", "erin"], EXIT_REFUSED, {})],
    "mapping import": [(["{tmp}/missing.json", "--sae", "1", "--actor", "erin"], EXIT_USAGE, {}),
                       (["{deep}", "--sae", "1", "--actor", "erin"], EXIT_USAGE, {}),
                       (["{mapping}", "--sae", "9", "--actor", "erin"], EXIT_REFUSED, {})],
    "mapping list": [([], EXIT_UNREACHABLE, {"SAEGOV_DATABASE_URL": UNREACHABLE_DB}),
                     (["--state", "bogus"], EXIT_REFUSED, {})],
    "mapping show": [(["99"], EXIT_REFUSED, {}), (["9" * 25], EXIT_REFUSED, {})],
    "review propose": [(["99", "-j", "x", "--actor", "erin"], EXIT_REFUSED, {})],
    "review approve": [(["1", "-j", "x", "--actor", "erin"], 4, {}),
                       (["1", "-j", "x", "--override", "why", "--actor", "alice"], EXIT_REFUSED, {}), (["9" * 25, "-j", "x", "--actor", "rob"],
                                                                       EXIT_REFUSED, {})],
    "policy set": [(["--min-ua", "150", "--actor", "alice"], EXIT_USAGE, {}),
                   (["--min-ua", "50", "--actor", "erin"], 4, {})],
    "policy show": [([], EXIT_UNREACHABLE, {"SAEGOV_DATABASE_URL": UNREACHABLE_DB})],
    "review reject": [(["99", "-j", "x", "--actor", "rob"], EXIT_REFUSED, {})],
    "review revoke": [(["1", "-j", "x", "--actor", "rob"], EXIT_REFUSED, {})],
    "blocklist create": [(["b", "--mapping", "99", "--actor", "erin"], EXIT_REFUSED, {}),
                         (["../b", "--mapping", "1", "--actor", "erin"], EXIT_REFUSED, {}),
                         (["b", "--mapping", "9" * 25, "--actor", "erin"], EXIT_REFUSED, {})],
    "blocklist add": [(["nope", "--mapping", "1", "--actor", "erin"], EXIT_REFUSED, {})],
    "blocklist remove": [(["nope", "--mapping", "1", "--actor", "erin"], EXIT_REFUSED, {})],
    "blocklist approve": [(["nope"], EXIT_USAGE, {}), (["nope@1", "-j", "x", "--actor", "rob"], EXIT_REFUSED, {})],
    "blocklist publish": [(["nope", "--actor", "erin"], EXIT_REFUSED, {})],
    "blocklist show": [(["b@x"], EXIT_USAGE, {})],
    "blocklist list": [([], EXIT_USAGE, {"SAEGOV_DATABASE_URL": BAD_URL})],
    "deploy build": [(["--blocklist", "b@x", "--model", "m", "--out", "{tmp}/dep", "--actor", "erin"], EXIT_USAGE, {}),
                     (["--blocklist", "nope@1", "--model", "m", "--out", "{tmp}/dep", "--actor", "erin"],
                      EXIT_REFUSED, {}),
                     (["--blocklist", "nope@1", "--model", "m", "--out", "{tmp}/dep", "--actor", "rob"], 4, {})],
    "deploy promote": [(["99", "--actor", "erin"], EXIT_REFUSED, {}), (["99", "--actor", "rob"], 4, {}),
                       (["0", "--actor", "erin"], EXIT_USAGE, {}), (["1", "--alias", "v1", "--actor", "erin"], EXIT_USAGE, {})],
    "deploy status": [(["--alias", "latest"], EXIT_USAGE, {})],
    "deploy serve": [(["{tmp}/nomodel"], EXIT_REFUSED, {}), (["{tmp}", "--port", "0"], EXIT_USAGE, {})],
    "deploy verify": [(["{tmp}/nodep"], EXIT_REFUSED, {}),
                      (["{tmp}", "--offline", "--trusted-keys", "{file}"], EXIT_REFUSED, {})],
    "key show": [([], EXIT_REFUSED, {"SAEGOV_CONFIG_DIR": "/dev/null/x"})],
    "key register": [(["rob", "--public-key", "12", "--actor", "alice"], EXIT_REFUSED, {}),
                     (["rob", "--public-key", "ab" * 32, "--actor", "erin"], 4, {})],
    "key revoke": [(["ab" * 32, "--actor", "alice"], EXIT_REFUSED, {})],
    "key list": [([], EXIT_UNREACHABLE, {"SAEGOV_DATABASE_URL": UNREACHABLE_DB})],
    "key export": [(["--out", "{tmp}/no/such/dir/t.json"], EXIT_REFUSED, {})],
    "generate": [(["--deployment", "{tmp}/nodep", "a red circle", "--out", "{tmp}/x.png"], EXIT_REFUSED, {}),
                 (["--deployment", "{tmp}", "a red circle", "--out", "{tmp}/x.png", "--seed", str(2**64)], EXIT_USAGE, {}),
                 (["--deployment", "{tmp}", "a red circle", "--out", "{tmp}/x.png", "--steps", "0"], EXIT_USAGE, {}),
                 (["--deployment", "{tmp}", "a red circle", "--out", "/proc/no/x.png"], EXIT_USAGE, {})],
    "audit verify": [(["--checkpoint", "{tmp}/missing.json"], EXIT_USAGE, {}),
                     (["--log", "{empty}"], EXIT_USAGE, {}), (["--log", "{badpng}"], EXIT_USAGE, {})],
    "audit export": [(["--out", "{tmp}/no/such/dir/log.jsonl"], EXIT_USAGE, {})],
    "audit consistency": [(["{tmp}/missing.json", "{tmp}/missing2.json", "--proof", "{file}"], EXIT_USAGE, {}),
                          (["{file}", "{file}"], EXIT_USAGE, {})],
    "audit checkpoint": [(["--out", "{tmp}/no/such/dir/cp.json"], EXIT_REFUSED, {})],
    "audit log": [(["--limit", "abc"], EXIT_USAGE, {}), (["--limit", "-1"], EXIT_USAGE, {}),
                  (["--since", "-5"], EXIT_USAGE, {})],
    "audit explain": [(["{tmp}/nothing.png"], EXIT_REFUSED, {}), (["{empty}"], EXIT_USAGE, {}),
                      (["9" * 25], EXIT_REFUSED, {}),
                      (["{badpng}"], EXIT_USAGE, {})],
    "eval": [(["--deployment", "{tmp}/nodep"], EXIT_REFUSED, {}), (["--deployment", "{tmp}", "--seeds", ","],
                                                                   EXIT_USAGE, {})],
    "demo": [(["--colour", "purple"], EXIT_USAGE, {}),
             (["--colour-method", "supervised", "--two-block-colour", "--workspace", "{tmp}/demo"], EXIT_USAGE, {}),
             (["--supervised-multipliers", "-2,x", "--workspace", "{tmp}/demo"], EXIT_USAGE, {})],
}


def _leaf_commands(group: click.Group, prefix: str = "") -> list[str]:
    out = []
    for name, cmd in group.commands.items():
        path = f"{prefix}{name}"
        out += _leaf_commands(cmd, path + " ") if isinstance(cmd, click.Group) else [path]
    return out


def test_every_command_has_a_bad_input_case() -> None:
    assert sorted(_leaf_commands(saegov)) == sorted(BAD_INPUTS)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("errors")
    home = tmp / "ws"
    runner = CliRunner()
    env = {"SAEGOV_HOME": str(home), "SAEGOV_DATABASE_URL": None, "SAEGOV_ACTOR": None,
           "MLFLOW_TRACKING_URI": None}
    for argv in (["db", "upgrade"], ["actor", "add", "alice", "--role", "admin"],
                 ["actor", "add", "erin", "--role", "engineer", "--actor", "alice"],
                 ["actor", "add", "rob", "--role", "reviewer", "--actor", "alice"],
                 ["concept", "add", "red", "--kind", "colour", "--actor", "erin"],
                 ["sae", "import", str(make_sae_folder(tmp, "up_blocks.1.attentions.1")), "--actor", "erin"],
                 ["mapping", "import", str(write_mapping(tmp / "m.json")), "--sae", "1", "--actor", "erin"],
                 ["review", "propose", "1", "-j", "scored", "--actor", "erin"]):
        res = runner.invoke(saegov, argv, env=env)
        assert res.exit_code == 0, (argv, res.output)
    (tmp / "empty.txt").write_text("\n# nothing\n")
    (tmp / "afile").write_text("x")
    (tmp / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
    (tmp / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    return {"tmp": tmp, "home": home, "env": env}  # type: ignore[dict-item]


def _dump(db: Path) -> list[str]:
    with sqlite3.connect(db) as conn:
        return list(conn.iterdump())


CASES = [(path, i) for path, cases in sorted(BAD_INPUTS.items()) for i in range(len(cases))]


@pytest.mark.parametrize(("path", "case"), CASES, ids=[f"{p.replace(' ', '-')}-{i}" for p, i in CASES])
def test_bad_input_is_one_line_with_its_exit_code(workspace: dict, path: str, case: int) -> None:
    argv, code, extra_env = BAD_INPUTS[path][case]
    tmp = workspace["tmp"]
    subst = {"{tmp}": str(tmp), "{file}": str(tmp / "afile"), "{empty}": str(tmp / "empty.txt"),
             "{mapping}": str(tmp / "m.json"), "{deep}": str(tmp / "deep.json"), "{badpng}": str(tmp / "bad.png")}
    args = path.split() + [next((v + a[len(k):] for k, v in subst.items() if a.startswith(k)), a) for a in argv]
    db = workspace["home"] / "registry.db"
    before = _dump(db)
    res = CliRunner().invoke(saegov, args, env={**workspace["env"], **extra_env})
    err = res.stderr.strip()
    assert "Traceback" not in res.output + res.stderr, res.output + res.stderr
    assert res.exit_code == code, (args, res.exit_code, err)
    assert len(err.splitlines()) == 1 and err.startswith("error: "), err
    assert res.exception is None or isinstance(res.exception, SystemExit)
    assert _dump(db) == before


def test_workspace_paths_that_would_open_another_database(tmp_path: Path) -> None:
    """A `?` in SAEGOV_HOME would make the SQLite URL open another file; a read command on a
    workspace that does not exist must not create an empty registry there."""
    runner = CliRunner()
    env = {"SAEGOV_DATABASE_URL": None, "SAEGOV_ACTOR": None}
    (tmp_path / "ws").write_text("not a database")  # what "ws?x/registry.db" would have opened
    res = runner.invoke(saegov, ["actor", "list"], env={**env, "SAEGOV_HOME": str(tmp_path / "ws?x")})
    assert res.exit_code == EXIT_USAGE and "contains '?'" in res.stderr, res.output
    res = runner.invoke(saegov, ["actor", "list"], env={**env, "SAEGOV_HOME": str(tmp_path / "none")})
    assert res.exit_code == 3 and "no registry at" in res.stderr, res.output
    assert not (tmp_path / "none").exists()
    assert (tmp_path / "ws").read_text() == "not a database"
