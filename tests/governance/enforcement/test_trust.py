"""Deployments are trusted by key, not by whatever key the folder carries (issue 15): a
weakened, re-hashed and re-signed deployment fails everywhere; keys are registered, revoked and
exported by admins, audited; links and unreachable registries fail closed."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import text

from cli.main import saegov
from governance.common.hashing import sha256_file
from governance.common.jsonio import canonical_json
from tests.governance.enforcement.conftest import build


def weaken_and_resign(dep: Path, key_path: Path) -> str:
    """What an attacker who can edit the folder does: empty the blocklist, fix the hashes, sign
    the manifest again with `key_path`'s key. Returns the public key used."""
    from governance.enforcement import signing

    bl = dep / "saegov" / "blocklist.json"
    data = json.loads(bl.read_text())
    data["entries"] = []
    bl.write_text(canonical_json(data) + "\n")
    mpath = dep / "saegov" / "manifest.json"
    m = json.loads(mpath.read_text())
    m["payload"]["files"]["saegov/blocklist.json"] = sha256_file(bl)
    key = signing.load_or_create_key(key_path)
    m["signature"] = {"algorithm": "ed25519", "public_key": signing.public_hex(key),
                      "value": signing.sign(key, canonical_json(m["payload"]).encode())}
    mpath.write_text(canonical_json(m) + "\n")
    return signing.public_hex(key)


def verify_cli(*args: str, env: dict[str, str] | None = None):
    return CliRunner().invoke(saegov, ["deploy", "verify", *args], env=env)


def one_line_error(r) -> bool:  # noqa: ANN001
    return r.exit_code != 0 and r.stderr.startswith("error: ") and len(r.stderr.strip().splitlines()) == 1


def test_a_weakened_resigned_deployment_fails_everywhere(world, tmp_path: Path, monkeypatch) -> None:
    from governance.enforcement import DeploymentError, EnforcedStableDiffusionPipeline

    dep = build(world)
    trust = tmp_path / "trusted.json"
    assert CliRunner().invoke(saegov, ["key", "export", "--out", str(trust)]).exit_code == 0
    assert verify_cli(str(dep)).exit_code == 0
    assert verify_cli(str(dep), "--offline", "--trusted-keys", str(trust)).exit_code == 0

    weaken_and_resign(dep, tmp_path / "attacker" / "k")
    r = verify_cli(str(dep))
    assert one_line_error(r) and "not a trusted deployment key" in r.stderr, r.output
    r = verify_cli(str(dep), "--offline")
    assert one_line_error(r) and "no trusted keys" in r.stderr, r.output
    r = verify_cli(str(dep), "--offline", "--trusted-keys", str(trust))
    assert one_line_error(r) and "not a trusted deployment key" in r.stderr, r.output
    r = verify_cli(str(dep), "--offline", env={"SAEGOV_TRUSTED_KEYS": str(trust)})
    assert one_line_error(r) and "not a trusted deployment key" in r.stderr, r.output
    # The registry "not found" (another SAEGOV_HOME) is no longer a way round the approvals.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.setenv("SAEGOV_HOME", str(elsewhere))
    with pytest.raises(DeploymentError, match="no registry found"):
        EnforcedStableDiffusionPipeline.from_pretrained(dep)
    with pytest.raises(DeploymentError, match="no trusted keys"):
        EnforcedStableDiffusionPipeline.from_pretrained(dep, check_registry=False)
    # Only an explicit, loud choice accepts it.
    r = verify_cli(str(dep), "--offline", "--allow-untrusted")
    assert r.exit_code == 0 and "UNTRUSTED" in r.stderr and "UNTRUSTED" in r.stdout, r.output


def test_an_insider_with_a_registered_key_cannot_weaken_a_recorded_deployment(world, own_config_dir) -> None:
    """erin's own, registered key re-signs the weakened folder, and she even records it: the
    registry check compares the enforced entries, not a hash field of the manifest."""
    from governance.common.hashing import sha256_bytes
    from governance.enforcement import DeploymentError, verify_deployment
    from governance.enforcement.signing import key_path

    dep = build(world)
    weaken_and_resign(dep, key_path())
    with pytest.raises(DeploymentError, match="entries differ"):
        verify_deployment(dep, store=world["store"])
    manifest = (dep / "saegov" / "manifest.json").read_bytes()
    first = world["store"].list_deployments()[0]
    world["store"].record_deployment(blocklist="no-red", version=1, path=str(dep), manifest_sha256=sha256_bytes(manifest),
                                     base_model_hash=first.base_model_hash, actor="erin")
    with pytest.raises(DeploymentError, match="blocklist.json is not blocklist no-red@1 of the registry: entries differ"):
        verify_deployment(dep, store=world["store"])


def test_keys_are_registered_and_revoked_by_admins_audited_and_exported(world, tmp_path: Path) -> None:
    from governance.enforcement import DeploymentError, verify_deployment, signing
    from registry.errors import PermissionDenied

    store = world["store"]
    dep = build(world)
    erin = next(iter(store.trusted_signing_keys()))
    other = signing.public_hex(signing.load_or_create_key(tmp_path / "rob-key"))
    with pytest.raises(PermissionDenied, match="key.register"):
        store.register_signing_key("rob", other, "erin")
    r = CliRunner().invoke(saegov, ["key", "register", "rob", "--public-key", "zz" * 32, "--actor", "alice"])
    assert one_line_error(r) and "64 hex digits" in r.stderr
    assert CliRunner().invoke(saegov, ["key", "register", "rob", "--public-key", other, "--actor", "alice"]).exit_code == 0
    assert set(store.trusted_signing_keys()) == {erin, other}

    r = CliRunner().invoke(saegov, ["key", "revoke", erin, "--reason", "laptop lost", "--actor", "alice"])
    assert r.exit_code == 0, r.output
    assert set(store.trusted_signing_keys()) == {other}
    with pytest.raises(DeploymentError, match="not a trusted deployment key"):
        verify_deployment(dep, store=store)
    trust = tmp_path / "t.json"
    assert CliRunner().invoke(saegov, ["key", "export", "--out", str(trust)]).exit_code == 0
    assert [k["public_key"] for k in json.loads(trust.read_text())["keys"]] == [other]
    actions = [(e.action, e.actor) for e in store.audit_events() if e.action.startswith("key.")]
    assert actions == [("key.register", "alice"), ("key.register", "alice"), ("key.revoke", "alice")]
    assert store.verify_audit().size == len(store.audit_events())

    # A key row inserted, or un-revoked, by SQL, with no event in the log, is not trusted.
    with store.engine.begin() as conn:
        conn.execute(text("UPDATE signing_keys SET revoked_at = NULL, revoked_by_id = NULL"))
        conn.execute(text("INSERT INTO signing_keys (public_key, purpose, actor_id, registered_by_id, created_at) "
                          f"VALUES ('{'ab' * 32}', 'deployment', 2, 1, '2026-01-01 00:00:00')"))
    assert set(store.trusted_signing_keys()) == {other}


def test_building_needs_a_registered_key_of_ones_own(world, own_config_dir: Path) -> None:
    from governance.enforcement.signing import key_path

    key_path().unlink()  # erin on a new laptop: a fresh key nobody registered
    out = world["tmp"] / "never"
    r = CliRunner().invoke(saegov, ["deploy", "build", "--blocklist", "no-red@1", "--model", str(world["model"]),
                                    "--out", str(out), "--actor", "erin"])
    assert one_line_error(r) and "saegov key register erin --public-key" in r.stderr, r.output
    assert not out.exists() and len(world["store"].list_deployments()) == 0
    shown = CliRunner().invoke(saegov, ["key", "show"])
    assert shown.exit_code == 0 and shown.stdout.strip() in r.stderr
    os.chmod(key_path(), 0o644)
    r = CliRunner().invoke(saegov, ["key", "show"])
    assert one_line_error(r) and "chmod 600" in r.stderr


def test_links_in_a_deployment_are_refused(world, tmp_path: Path) -> None:
    from governance.enforcement import DeploymentError, EnforcedStableDiffusionPipeline, verify_deployment

    dep = build(world)
    weights = dep / "unet" / "diffusion_pytorch_model.safetensors"
    outside = tmp_path / "outside.safetensors"
    weights.rename(outside)
    weights.symlink_to(outside)  # same bytes, so every hash still matches
    with pytest.raises(DeploymentError, match="symbolic link"):
        verify_deployment(dep, store=world["store"])
    with pytest.raises(DeploymentError, match="symbolic link"):
        EnforcedStableDiffusionPipeline.from_pretrained(dep, store=world["store"])
    weights.unlink()
    outside.rename(weights)
    link = tmp_path / "link-to-dep"
    link.symlink_to(dep)
    with pytest.raises(DeploymentError, match="symbolic link|not a deployment folder"):
        EnforcedStableDiffusionPipeline.from_pretrained(link, store=world["store"])
    pipe = EnforcedStableDiffusionPipeline.from_pretrained(dep, store=world["store"])
    assert pipe.saegov.path == dep and pipe.saegov.trusted_by == "registry key of erin"


def test_explain_checks_an_images_trace_against_the_recorded_generation(world) -> None:
    from PIL import Image

    from governance.formats.trace import read_trace_png, write_trace_png

    dep = build(world)
    img = world["tmp"] / "g.png"
    r = CliRunner().invoke(saegov, ["generate", "--deployment", str(dep), "a red circle", "--seed", "3",
                                    "--out", str(img), "--record", "--actor", "erin"])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(saegov, ["audit", "explain", str(img), "--json"])
    assert r.exit_code == 0 and json.loads(r.stdout)["trace_verified"] is True, r.output
    # An edited chunk that "clears" red: same image, nothing suppressed, same generation id.
    trace = read_trace_png(img)
    cleared = trace.model_copy(update={"unet_calls": [c.model_copy(update={"suppressed": []})
                                                      for c in trace.unet_calls]})
    write_trace_png(img, Image.open(img).convert("RGB"), cleared)
    r = CliRunner().invoke(saegov, ["audit", "explain", str(img)])
    assert one_line_error(r) and "not the one recorded for generation 1" in r.stderr, r.output
    forged = trace.model_copy(update={"generation_id": 99})
    write_trace_png(img, Image.open(img).convert("RGB"), forged)
    r = CliRunner().invoke(saegov, ["audit", "explain", str(img)])
    assert one_line_error(r) and "does not know" in r.stderr, r.output
