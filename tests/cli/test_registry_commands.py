"""CLI tests for every registry command, including bad input. Real SQLite, no mocks.
Every refusal: exit code != 0, exactly one line on stderr, no traceback, database unchanged."""
from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from cli.main import saegov
from tests.helpers.registry import make_sae_folder, mapping_spec, write_mapping, write_safetensors


class CLI:
    def __init__(self, home: Path, url: str | None = None) -> None:
        self.env = {"SAEGOV_HOME": str(home), "SAEGOV_DATABASE_URL": url or "", "SAEGOV_ACTOR": ""}
        self.runner = CliRunner()

    def __call__(self, *args: str, actor: str | None = None, ok: bool = True) -> Result:
        argv = [str(a) for a in args] + (["--actor", actor] if actor else [])
        res = self.runner.invoke(saegov, argv, env=self.env, catch_exceptions=False)
        if ok:
            assert res.exit_code == 0, f"{argv}: {res.stdout}{res.stderr}"
        return res

    def fails(self, *args: str, actor: str | None = None, match: str = "", code: int | None = None) -> str:
        before = self.audit_size()
        res = self(*args, actor=actor, ok=False)
        assert res.exit_code != 0, f"{args} should fail: {res.stdout}"
        if code is not None:
            assert res.exit_code == code
        err = res.stderr.strip()
        assert len(err.splitlines()) == 1, err
        assert err.startswith("error: ") and "Traceback" not in err
        assert match in err, err
        assert self.audit_size() == before
        return err

    def json(self, *args: str, actor: str | None = None) -> Any:
        return json.loads(self(*args, "--json", actor=actor).stdout)

    def audit_size(self) -> int | None:
        res = self.runner.invoke(saegov, ["audit", "verify", "--json"], env=self.env)
        return json.loads(res.stdout)["size"] if res.exit_code == 0 else None


@pytest.fixture
def cli(tmp_path: Path) -> CLI:
    c = CLI(tmp_path / "ws")
    c("db", "upgrade")
    c("actor", "add", "alice", "--role", "admin")
    for name, role in [("erin", "engineer"), ("rob", "reviewer"), ("aud", "auditor")]:
        c("actor", "add", name, "--role", role, actor="alice")
    return c


@pytest.fixture
def populated(cli: CLI, tmp_path: Path) -> CLI:
    """Concept red, SAE 1 (width 32), mapping 1 approved."""
    cli("concept", "add", "red", "--kind", "colour", actor="erin")
    cli("sae", "import", make_sae_folder(tmp_path, "up_blocks.1.attentions.1"), actor="erin")
    cli("mapping", "import", write_mapping(tmp_path / "m.json"), "--sae", "1", actor="erin")
    cli("review", "propose", "1", "-j", "scored", actor="erin")
    cli("review", "approve", "1", "-j", "checked", actor="rob")
    return cli


def test_db_upgrade_and_unmigrated_refusal(tmp_path: Path) -> None:
    c = CLI(tmp_path / "ws")
    err = c.fails("actor", "list", code=3)
    assert "run `saegov db upgrade`" in err
    assert "(was empty)" in c("db", "upgrade").stdout
    assert (tmp_path / "ws" / "registry.db").exists()
    assert c.json("db", "current")["current"] == c.json("db", "current")["head"]
    c("actor", "list")


@pytest.mark.parametrize("url", ["nonsense", "mysql://u@localhost/x", "postgresql+psycopg://u@127.0.0.1:1/x"])
def test_bad_database_url(tmp_path: Path, url: str) -> None:
    c = CLI(tmp_path, url)
    res = c("actor", "list", ok=False)
    assert res.exit_code != 0 and len(res.stderr.strip().splitlines()) == 1
    assert res.stderr.startswith("error: ")


def test_actors(cli: CLI) -> None:
    assert [(a["name"], a["role"]) for a in cli.json("actor", "list")] == [
        ("alice", "admin"), ("erin", "engineer"), ("rob", "reviewer"), ("aud", "auditor")]
    cli.fails("actor", "add", "x", "--role", "engineer", actor="erin", match="may not do actor.add", code=4)
    cli.fails("actor", "add", "x", "--role", "engineer", actor="mallory", match="unknown actor 'mallory'")
    cli.fails("actor", "add", "x", "--role", "engineer", match="no actor given")
    cli.fails("actor", "add", "erin", "--role", "engineer", actor="alice", match="already exists")
    cli.fails("actor", "add", "x", "--role", "wizard", actor="alice", match="unknown role")
    cli.env["SAEGOV_ACTOR"] = "alice"
    cli("actor", "add", "zoe", "--role", "reviewer")


def test_concepts(cli: CLI, tmp_path: Path) -> None:
    (tmp_path / "p.txt").write_text("a red square\n\na red circle\n")
    (tmp_path / "p.json").write_text('["a blue square", "a blue sky"]')
    (tmp_path / "bad.json").write_text('["unterminated')
    cli("concept", "add", "red", "--kind", "colour", "--prompts", tmp_path / "p.txt", actor="erin")
    cli("concept", "add", "blue", "--kind", "colour", "--description", "the colour", "--prompts",
        tmp_path / "p.json", actor="erin")
    got = {c["name"]: c for c in cli.json("concept", "list")}
    assert got["red"]["prompts"] == ["a red square", "a red circle"]
    assert got["blue"]["prompts"] == ["a blue square", "a blue sky"]
    cli.fails("concept", "add", "red", "--kind", "colour", actor="erin", match="already exists")
    cli.fails("concept", "add", "x", "--kind", "flavour", actor="erin", match="unknown concept kind")
    cli.fails("concept", "add", "x", "--kind", "style", "--prompts", tmp_path / "bad.json", actor="erin",
              match="malformed JSON")
    cli.fails("concept", "add", "x", "--kind", "style", "--prompts", tmp_path / "none.txt", actor="erin",
              match="cannot read")
    cli.fails("concept", "add", "x", "--kind", "style", actor="aud", match="may not")
    cli.fails("concept", "add", "x", "--kind", "style", actor="nobody", match="unknown actor")


def test_sae_import_and_listing(cli: CLI, tmp_path: Path) -> None:
    from governance.toyworld.paths import WEIGHTS_DIR

    # The base model's source is a folder: import checks the hook point and width against its UNet.
    cli("base-model", "add", "toy", "--source", WEIGHTS_DIR, "--hash", "ab" * 32, actor="erin")
    assert cli.json("base-model", "list")[0]["name"] == "toy"
    folder = make_sae_folder(tmp_path, "s1", d_in=64, expansion=2, k=4, num_latents=0)
    rec = cli.json("sae", "import", folder, "--hookpoint", "up_blocks.1.attentions.2",
                   "--base-model", "toy", "--name", "style-sae", actor="erin")
    assert (rec["ref"], rec["n_latents"], rec["d_in"], rec["k"]) == ("style-sae@1", 128, 64, 4)
    assert rec["base_model_hash"] == "ab" * 32
    assert cli.json("sae", "list")[0]["hook_point"] == "up_blocks.1.attentions.2"
    assert cli.json("sae", "show", "style-sae@1")["id"] == 1
    assert "weights_sha256" in cli("sae", "show", "1").stdout
    cli.fails("sae", "show", "nope@3", match="unknown SAE")
    cli.fails("sae", "import", folder, "--hookpoint", "h", "--base-model", "nope", actor="erin",
              match="unknown base model")
    cli.fails("sae", "import", folder, actor="erin", match="hook point")
    cli.fails("sae", "import", folder, "--hookpoint", "h", actor="rob", match="may not")
    cli.fails("base-model", "add", "x", "--source", "s", "--hash", "xyz", actor="erin", match="sha256")


def _corrupt(folder: Path, kind: str) -> None:
    st = folder / "sae.safetensors"
    raw = st.read_bytes()
    if kind == "truncated":
        st.write_bytes(raw[: len(raw) // 2])
    elif kind == "header_len":
        st.write_bytes(struct.pack("<Q", 10**12) + raw[8:])
    elif kind == "header_json":
        n = struct.unpack("<Q", raw[:8])[0]
        st.write_bytes(raw[:8] + b"{" * n + raw[8 + n:])
    elif kind == "tiny":
        st.write_bytes(b"abc")
    elif kind == "shape":
        write_safetensors(st, {"encoder.weight": ("F32", (32, 8)), "encoder.bias": ("F32", (32,)),
                               "W_dec": ("F32", (31, 8)), "b_dec": ("F32", (8,))})
    elif kind == "missing_tensor":
        write_safetensors(st, {"encoder.weight": ("F32", (32, 8)), "encoder.bias": ("F32", (32,)),
                               "b_dec": ("F32", (8,))})
    elif kind == "cfg_json":
        (folder / "cfg.json").write_text("{not json")
    elif kind == "cfg_invalid":
        (folder / "cfg.json").write_text(json.dumps({"d_in": 8, "expansion_factor": 4, "num_latents": 0, "k": 99}))
    elif kind == "cfg_missing_key":
        (folder / "cfg.json").write_text(json.dumps({"expansion_factor": 4, "num_latents": 0, "k": 2}))
    elif kind == "no_cfg":
        (folder / "cfg.json").unlink()


@pytest.mark.parametrize("kind", ["truncated", "header_len", "header_json", "tiny", "shape",
                                  "missing_tensor", "cfg_json", "cfg_invalid", "cfg_missing_key", "no_cfg"])
def test_corrupt_sae_is_refused(cli: CLI, tmp_path: Path, kind: str) -> None:
    folder = make_sae_folder(tmp_path, "bad")
    _corrupt(folder, kind)
    cli.fails("sae", "import", folder, "--hookpoint", "h", actor="erin")
    assert cli.json("sae", "list") == []


def test_mappings(cli: CLI, tmp_path: Path) -> None:
    cli("concept", "add", "red", "--kind", "colour", actor="erin")
    cli("sae", "import", make_sae_folder(tmp_path, "s"), "--hookpoint", "h", actor="erin")
    m = cli.json("mapping", "import", write_mapping(tmp_path / "m.json"), "--sae", "s@1", actor="erin")
    assert m["state"] == "draft" and m["timesteps"]["981"][0]["feature"] == 1
    shown = cli.json("mapping", "show", "1")
    assert set(shown["timesteps"]) == {"981", "961"}
    assert "features" in cli("mapping", "show", "1").stdout
    assert [x["id"] for x in cli.json("mapping", "list", "--state", "draft", "--concept", "red")] == [1]
    (tmp_path / "bad.json").write_text("{")
    cli.fails("mapping", "import", tmp_path / "bad.json", "--sae", "1", actor="erin", match="malformed JSON")
    spec = mapping_spec(features=(1, 40))
    (tmp_path / "wide.json").write_text(json.dumps(spec))
    cli.fails("mapping", "import", tmp_path / "wide.json", "--sae", "1", actor="erin", match="outside SAE")
    (tmp_path / "green.json").write_text(json.dumps(mapping_spec("green")))
    cli.fails("mapping", "import", tmp_path / "green.json", "--sae", "1", actor="erin", match="unknown concept")
    cli.fails("mapping", "import", tmp_path / "m.json", "--sae", "9", actor="erin", match="unknown SAE")
    bad = mapping_spec()
    bad["selection"] = {"rule": "tau"}
    (tmp_path / "nosel.json").write_text(json.dumps(bad))
    cli.fails("mapping", "import", tmp_path / "nosel.json", "--sae", "1", actor="erin", match="selection")
    bad = mapping_spec()
    bad["timesteps"] = {"step-one": []}
    (tmp_path / "badt.json").write_text(json.dumps(bad))
    cli.fails("mapping", "import", tmp_path / "badt.json", "--sae", "1", actor="erin", match="timesteps")
    cli.fails("mapping", "show", "77", match="unknown mapping 77")
    cli.fails("mapping", "show", "abc", match="bad mapping id")


def test_review_commands(populated: CLI, tmp_path: Path) -> None:
    c = populated
    c("mapping", "import", tmp_path / "m.json", "--sae", "1", actor="erin")
    c.fails("review", "propose", "2", actor="erin", match="justification")
    c.fails("review", "propose", "2", "-j", "x", actor="rob", match="may not")
    c.fails("review", "propose", "2", "-j", "x", actor="aud", match="may not")
    c.fails("review", "approve", "2", "-j", "x", actor="rob", match="only a proposed mapping")
    c("review", "propose", "2", "-j", "x", actor="alice")
    c.fails("review", "approve", "2", "-j", "x", actor="alice", match="four-eyes")
    c("review", "reject", "2", "-j", "noisy", actor="rob")
    c.fails("review", "revoke", "2", "-j", "x", actor="rob", match="is rejected")
    assert c.json("review", "revoke", "1", "-j", "oops", actor="rob")["state"] == "revoked"
    c.fails("review", "approve", "99", "-j", "x", actor="rob", match="unknown mapping")


def test_blocklist_commands(populated: CLI) -> None:
    c = populated
    c("blocklist", "create", "colours", "--mapping", "1", actor="erin")
    c.fails("blocklist", "create", "colours", "--mapping", "1", actor="erin", match="already exists")
    c.fails("blocklist", "create", "other", "--mapping", "5", actor="erin", match="unknown mapping")
    c.fails("blocklist", "publish", "colours", actor="rob", match="may not")
    assert "published colours@1" in c("blocklist", "publish", "colours", actor="erin").stdout
    v = c.json("blocklist", "show", "colours@1")
    assert v["state"] == "published" and v["entries"][0]["approved_by"] == "rob"
    assert c.json("blocklist", "show", "colours")["versions"][0]["version"] == 1
    assert c.json("blocklist", "list")[0]["name"] == "colours"
    c("blocklist", "list")
    c.fails("blocklist", "show", "colours@x", match="bad blocklist reference")
    c.fails("blocklist", "show", "colours@7", match="no version 7")
    c.fails("blocklist", "show", "nope", match="unknown blocklist")
    c("review", "revoke", "1", "-j", "bad", actor="rob")
    assert "REVOKED" in c("blocklist", "show", "colours@1").stdout
    c.fails("blocklist", "publish", "colours", actor="erin", match="not approved")
    c("blocklist", "remove", "colours", "--mapping", "1", actor="erin")
    c.fails("blocklist", "publish", "colours", actor="erin", match="no mappings")


def test_audit_commands(populated: CLI, tmp_path: Path) -> None:
    c = populated
    assert "audit chain OK" in c("audit", "verify").stdout
    cp = tmp_path / "cp.json"
    c("audit", "checkpoint", "--out", cp)
    body = json.loads(cp.read_text())
    assert set(body) == {"size", "head_hash", "merkle_root", "time", "state_sha256"}
    again = c.json("audit", "checkpoint", "--out", tmp_path / "cp2.json")
    assert again["path"] == str(tmp_path / "cp2.json")
    assert {k: again[k] for k in ("size", "head_hash", "merkle_root")} == {
        k: body[k] for k in ("size", "head_hash", "merkle_root")}
    c("concept", "add", "blue", "--kind", "colour", actor="erin")
    assert c.json("audit", "verify", "--checkpoint", cp)["checkpoint_size"] == body["size"]
    log = c.json("audit", "log", "--actor", "rob")
    assert [e["action"] for e in log] == ["mapping.approve"]
    assert [e["action"] for e in c.json("audit", "log", "--subject", "mapping:1")] == [
        "mapping.create", "mapping.propose", "mapping.approve"]
    assert len(c.json("audit", "log", "--action", "actor.*")) == 4
    c("audit", "log", "--limit", "2")
    (tmp_path / "bad.json").write_text('{"size": 1}')
    c.fails("audit", "verify", "--checkpoint", tmp_path / "bad.json", match="head_hash")
    c.fails("audit", "verify", "--checkpoint", tmp_path / "missing.json", match="cannot read")


def test_audit_verify_names_tampered_event(populated: CLI) -> None:
    import sqlite3

    db = Path(populated.env["SAEGOV_HOME"]) / "registry.db"
    con = sqlite3.connect(db)
    con.execute("DROP TRIGGER audit_events_no_update")
    con.execute("UPDATE audit_events SET actor = 'mallory' WHERE seq = 7")
    con.commit()
    con.close()
    res = populated("audit", "verify", ok=False)
    assert res.exit_code == 5
    assert res.stderr.strip() == "error: audit event 7: hash mismatch (event altered)"


def test_reference_layout_imports_one_sae_per_hook_point(cli: CLI, tmp_path: Path) -> None:
    """A SAeUron-style folder with a sub-folder per hook point (named `unet.<hook point>`)
    registers one SAE version per hook point, with the `unet.` prefix dropped."""
    root = tmp_path / "saeuron"
    for hook in ("unet.up_blocks.1.attentions.1", "unet.up_blocks.1.attentions.2"):
        make_sae_folder(root, hook, d_in=64, expansion=1, k=4)
    recs = cli.json("sae", "import", root, actor="erin")
    assert [(r["name"], r["hook_point"], r["version"]) for r in recs] == [
        ("saeuron.up_blocks.1.attentions.1", "up_blocks.1.attentions.1", 1),
        ("saeuron.up_blocks.1.attentions.2", "up_blocks.1.attentions.2", 1)]
    cli.fails("sae", "import", root, "--hookpoint", "up_blocks.1.attentions.1", actor="erin", match="one SAE per hook point")
    assert len(cli.json("sae", "list")) == 2


def test_import_checks_hook_point_and_width_against_the_base_model(cli: CLI, tmp_path: Path) -> None:
    import shutil

    from governance.toyworld.paths import WEIGHTS_DIR

    model = tmp_path / "model"
    (model / "unet").mkdir(parents=True)
    shutil.copy(WEIGHTS_DIR / "unet" / "config.json", model / "unet" / "config.json")
    cli("base-model", "add", "toy", "--source", model, "--hash", "ab" * 32, actor="erin")
    good = make_sae_folder(tmp_path, "unet.up_blocks.1.attentions.2", d_in=64, expansion=1, k=4)
    assert cli.json("sae", "import", good, "--base-model", "toy", actor="erin")["hook_point"] == "up_blocks.1.attentions.2"
    bad_hook = make_sae_folder(tmp_path, "up_blocks.3.attentions.0", d_in=64, expansion=1, k=4)
    cli.fails("sae", "import", bad_hook, "--base-model", "toy", actor="erin", match="is not a block of this UNet",
              code=2)
    narrow = make_sae_folder(tmp_path / "n", "up_blocks.1.attentions.1", d_in=32, expansion=1, k=4)
    cli.fails("sae", "import", narrow, "--base-model", "toy", actor="erin", match="outputs 64 channels, the SAE reads 32")
    assert len(cli.json("sae", "list")) == 1


@pytest.mark.parametrize(("option", "value"), [("activation", "groupmax"), ("transcode", True),
                                               ("skip_connection", True), ("input_unit_norm", True)])
def test_sparsify_options_that_change_the_forward_pass_are_refused(cli: CLI, tmp_path: Path, option: str,
                                                                   value: Any) -> None:
    folder = make_sae_folder(tmp_path, "up_blocks.1.attentions.1", **{option: value})
    err = cli.fails("sae", "import", folder, actor="erin", match="changes the forward pass", code=2)
    assert f"{option}=" in err
    ok = make_sae_folder(tmp_path / "ok", "up_blocks.1.attentions.1", multi_topk=True)
    assert cli.json("sae", "import", ok, actor="erin")["k"] == 2  # multi_topk only changes training
