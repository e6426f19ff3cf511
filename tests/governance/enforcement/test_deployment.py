"""Deployments end to end on a real SQLite registry and MLflow store: build, verify, tamper,
revoke, load with EnforcedStableDiffusionPipeline, generate with traces, explain."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from cli.main import saegov
from governance.formats.mapping import MappingSpec
from tests.governance.enforcement.conftest import build as _build
from tests.helpers.enforcement import HOOK, load_pipe, random_sae, spec_for

torch.set_num_threads(1)


def test_build_verify_load_and_trace(world) -> None:
    from governance.enforcement import EnforcedStableDiffusionPipeline, verify_deployment

    out = _build(world)
    assert (out / "model_index.json").is_file() and (out / "saegov" / "saes" / HOOK / "sae.safetensors").is_file()
    v = verify_deployment(out, store=world["store"])
    assert v.registry_checked and v.deployment_id == 1
    pipe = EnforcedStableDiffusionPipeline.from_pretrained(out, store=world["store"])
    assert type(pipe.scheduler).__name__ == "DDIMScheduler"
    result = pipe("a red circle", generator=torch.Generator().manual_seed(0), seeds=[0])
    trace = result.traces[0]
    assert len(trace["unet_calls"]) == 10  # the approved step count is the default
    fired = [s for c in trace["unet_calls"] for s in c["suppressed"]]
    assert fired and {s["concept"] for s in fired} == {"red"}
    assert {s["mapping_id"] for s in fired} == {world["mapping"]}
    events = [e.action for e in world["store"].audit_events()]
    assert "deployment.record" in events
    assert world["store"].verify_audit().size == len(events)


def test_tampered_file_is_refused_by_name(world) -> None:
    from governance.enforcement import DeploymentError, EnforcedStableDiffusionPipeline

    out = _build(world)
    bl = out / "saegov" / "blocklist.json"
    original = bl.read_bytes()
    data = json.loads(original)
    data["entries"][0]["timesteps"] = {}
    bl.write_text(json.dumps(data))
    with pytest.raises(DeploymentError, match="saegov/blocklist.json was modified"):
        EnforcedStableDiffusionPipeline.from_pretrained(out, store=world["store"])
    bl.write_bytes(original)
    shutil.copy(out / "saegov" / "manifest.json", out / "unet" / "extra.json")
    with pytest.raises(DeploymentError, match="unet/extra.json is not in the manifest"):
        EnforcedStableDiffusionPipeline.from_pretrained(out, store=world["store"])
    (out / "unet" / "extra.json").unlink()
    (out / "vae" / "config.json").unlink()
    with pytest.raises(DeploymentError, match="vae/config.json is missing"):
        EnforcedStableDiffusionPipeline.from_pretrained(out, store=world["store"])


def test_forged_manifest_signature_is_refused(world) -> None:
    from governance.enforcement import DeploymentError, verify_deployment

    out = _build(world)
    mpath = out / "saegov" / "manifest.json"
    m = json.loads(mpath.read_text())
    m["payload"]["defaults"]["guidance_scale"] = 1.0
    mpath.write_text(json.dumps(m))
    with pytest.raises(DeploymentError, match="signature"):
        verify_deployment(out, check_registry=False)


def test_revoked_approval_is_refused(world) -> None:
    from governance.enforcement import DeploymentError, verify_deployment

    out = _build(world)
    world["store"].revoke(world["mapping"], "rob", "too broad")
    with pytest.raises(DeploymentError, match=f"mapping {world['mapping']} \\(red\\) was revoked"):
        verify_deployment(out, store=world["store"])
    # Offline verification passes on hashes and a trusted signature, and says it did not check;
    # with nothing to trust the key by, it refuses.
    erin = next(iter(world["store"].trusted_signing_keys()))
    v = verify_deployment(out, check_registry=False, trusted_keys=[erin])
    assert not v.registry_checked and any("not re-checked" in n for n in v.notes)
    with pytest.raises(DeploymentError, match="no trusted keys"):
        verify_deployment(out, check_registry=False)


def test_unpublished_or_unapproved_blocklists_cannot_be_built(world) -> None:
    from governance.common.errors import SaegovError
    from governance.enforcement import build_deployment

    store = world["store"]
    world["store"].revoke(world["mapping"], "rob", "too broad")
    with pytest.raises(SaegovError):
        build_deployment(store, "no-red", 1, str(world["model"]), world["tmp"] / "x", "erin")
    assert not (world["tmp"] / "x").exists()


def test_cli_build_generate_record_explain(world) -> None:
    from PIL import Image

    runner = CliRunner()
    out = world["tmp"] / "cli-dep"
    r = runner.invoke(saegov, ["deploy", "build", "--blocklist", "no-red@1", "--model", str(world["model"]),
                               "--out", str(out), "--actor", "erin"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(saegov, ["deploy", "verify", str(out), "--json"])
    assert r.exit_code == 0 and json.loads(r.output)["registry_checked"] is True
    img, trace = world["tmp"] / "g.png", world["tmp"] / "g.json"
    r = runner.invoke(saegov, ["generate", "--deployment", str(out), "a red circle", "--seed", "3",
                               "--out", str(img), "--trace", str(trace), "--record", "--actor", "erin"])
    assert r.exit_code == 0, r.output
    assert Image.open(img).size == (32, 32)
    t = json.loads(trace.read_text())
    assert t["seed"] == 3 and t["generation_id"] == 1
    for target in (str(img), str(trace), "1"):
        r = runner.invoke(saegov, ["audit", "explain", target, "--json"])
        assert r.exit_code == 0, r.output
        rep = json.loads(r.output)
        assert rep["suppressed"][0]["concept"] == "red"
        assert rep["suppressed"][0]["approval"]["by"] == "rob"
        assert rep["suppressed"][0]["approval"]["justification"] == "checked the heatmap"
        assert rep["deployment"]["built_by"] == "erin"
    r = runner.invoke(saegov, ["audit", "explain", str(img)])
    assert "approved by rob" in r.output and "Concept 'red'" in r.output
    img2 = world["tmp"] / "g2.png"
    r = runner.invoke(saegov, ["generate", "--deployment", str(out), "a red circle", "--seed", "3",
                               "--out", str(img2), "--json"])
    assert r.exit_code == 0, r.output
    got = json.loads(r.stdout)
    assert got["image"] == str(img2) and got["generation_id"] is None and got["trace_file"] is None
    assert got["unet_calls"] == len(t["unet_calls"]) and got["suppressed_calls"] >= 1
    # the same prompt and seed through the same deployment suppress the same features
    assert got["trace"]["unet_calls"] == t["unet_calls"]


def test_cli_bad_inputs_are_one_line_errors(world, tmp_path: Path) -> None:
    runner = CliRunner()
    cases = [
        ["deploy", "build", "--blocklist", "nope@1", "--model", str(world["model"]), "--out", str(tmp_path / "a"), "--actor", "erin"],
        ["deploy", "build", "--blocklist", "no-red@1", "--model", str(tmp_path / "missing"), "--out", str(tmp_path / "b"), "--actor", "erin"],
        ["deploy", "build", "--blocklist", "no-red@1", "--model", str(world["model"]), "--out", str(tmp_path / "c"), "--actor", "ghost"],
        ["deploy", "verify", str(tmp_path)],
        ["audit", "explain", str(tmp_path / "nothing.png")],
    ]
    for args in cases:
        r = runner.invoke(saegov, args)
        assert r.exit_code != 0, args
        assert r.output.strip().count("\n") == 0 and r.output.startswith("error:"), (args, r.output)
        assert "Traceback" not in r.output
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists() and not (tmp_path / "c").exists()


def test_cli_eval_deployment_report_and_mlflow(world) -> None:
    """`saegov eval --deployment`: metrics for the blocked concept, a self-contained report with
    before/after grids, an MLflow run with the metrics (values are meaningless on the untrained
    pipeline; the plumbing and the bookkeeping are what is checked)."""
    from mlflow.tracking import MlflowClient

    from governance.tracking.runs import tracking_uri

    dep = _build(world)
    report = world["tmp"] / "eval.html"
    r = CliRunner().invoke(saegov, ["eval", "--deployment", str(dep), "--seeds", "3", "--report", str(report), "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["targets"] == ["red"] and out["images"] == 48 and out["seeds"] == [3]
    m = out["metrics"]["red"]
    assert m["kind"] == "colour" and m["n_target_images"] == 12
    for key in ("UA", "IRA", "CRA"):
        assert 0.0 <= m[key] <= 1.0
    # Where red's features were suppressed, from the after-images' traces: the 12 red images
    # against the other 36; the fixture's features (the red prompt's most frequent, gate 0) fire
    # on red images.
    fired = m["fired"]
    assert (fired["n_own"], fired["n_other"]) == (12, 36) and fired["images_own"] > 0
    assert all(0.0 <= fired[k] <= 1.0 for k in ("images_own", "images_other", "steps_own", "steps_other"))
    assert fired["steps_own"] <= fired["images_own"]
    html = report.read_text()
    assert "suppressed on the other images" in html
    assert html.count("data:image/png;base64,") == 2  # one before/after pair: one target
    assert "mapping:" in html and "deployment.record" in html  # the deployment's audit trail
    run = MlflowClient(tracking_uri=tracking_uri()).get_run(out["mlflow_run_id"])
    assert run.data.metrics["UA.red"] == pytest.approx(100 * m["UA"])
    assert run.data.metrics["fired.images_other.red"] == pytest.approx(100 * fired["images_other"])
    assert run.data.params["targets"] == "red"
    logged = {a.path for a in MlflowClient(tracking_uri=tracking_uri()).list_artifacts(out["mlflow_run_id"], "evaluation")}
    assert {"evaluation/report.html", "evaluation/metrics.json", "evaluation/grid-red-before.png",
            "evaluation/grid-red-after.png"} <= logged

    bad = CliRunner().invoke(saegov, ["eval", "--deployment", str(world["tmp"] / "nope")])
    assert bad.exit_code != 0 and bad.output.strip().startswith("error:") and "Traceback" not in bad.output
    bad = CliRunner().invoke(saegov, ["eval", "--deployment", str(dep), "--seeds", "x"])
    assert bad.exit_code != 0 and "Traceback" not in bad.output


def test_cli_eval_attack_reports_ua_before_and_after(world) -> None:
    dep = _build(world)
    r = CliRunner().invoke(saegov, ["eval", "--deployment", str(dep), "--seeds", "3", "--attack", "--attack-prompts", "1",
                                    "--attack-iterations", "2", "--no-track", "--json",
                                    "--report", str(world["tmp"] / "a.html")])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    summary = out["attack"]["summary"]["red"]
    assert summary["n_whitebox"] == 1 and summary["n_paraphrase"] > 0
    for key in ("UA_no_attack", "UA_paraphrase", "UA_whitebox"):
        assert 0.0 <= summary[key] <= 1.0
    assert out["mlflow_run_id"] is None
    assert "prompt attack (UA)" in (world["tmp"] / "a.html").read_text()


def _publish_with_scheduler(world, scheduler: str) -> None:
    store = world["store"]
    spec = MappingSpec(concept="red", selection={"rule": "top_n", "top_n": 1}, gamma=-1.0, scheduler=scheduler,
                       num_steps=10, timesteps={981: [{"feature": 0, "score": 1.0, "scale": -1.0, "gate": 0.0}]})
    m = store.create_mapping(1, "red", spec, "erin")
    store.propose(m.id, "erin", "why")
    store.approve(m.id, "rob", "ok")
    store.create_blocklist("odd", [m.id], "erin")
    store.publish_blocklist("odd", "erin")


@pytest.mark.parametrize("scheduler", ["StableDiffusionPipeline", "NoSuchScheduler", "os.system"])
def test_build_refuses_a_mapping_scheduler_that_is_not_a_scheduler(world, scheduler: str) -> None:
    """One line, exit 1, before the model loads and with nothing written."""
    _publish_with_scheduler(world, scheduler)
    out = world["tmp"] / "odd"
    r = CliRunner().invoke(saegov, ["deploy", "build", "--blocklist", "odd@1", "--model", str(world["model"]),
                                    "--out", str(out), "--actor", "erin"])
    assert r.exit_code == 1 and r.stderr.strip() == f"error: {scheduler!r} in the mappings is not a diffusers scheduler"
    assert not out.exists() and world["store"].list_deployments() == []


def test_build_with_an_unreachable_mlflow_server_is_one_line(world, monkeypatch: pytest.MonkeyPatch) -> None:
    """Exit 6 (unreachable), no deployment folder, nothing recorded."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:1")
    out = world["tmp"] / "nomlflow"
    r = CliRunner().invoke(saegov, ["deploy", "build", "--blocklist", "no-red@1", "--model", str(world["model"]),
                                    "--out", str(out), "--actor", "erin"])
    assert r.exit_code == 6, r.output
    assert r.stderr.startswith("error: MLflow server http://127.0.0.1:1 is unreachable")
    assert len(r.stderr.strip().splitlines()) == 1
    assert not out.exists() and world["store"].list_deployments() == []
    assert [p.name for p in world["tmp"].iterdir() if p.name.startswith(".nomlflow")] == []
    # ... and --no-mlflow builds without it, registering no model version.
    r = CliRunner().invoke(saegov, ["deploy", "build", "--blocklist", "no-red@1", "--model", str(world["model"]),
                                    "--out", str(out), "--no-mlflow", "--actor", "erin", "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["mlflow_model_version"] is None and (out / "saegov" / "manifest.json").is_file()


def test_two_saes_at_two_hook_points_build_verify_generate_explain(world) -> None:
    """A blocklist with mappings of SAEs at two hook points: the deployment holds both SAE
    folders (hashed in the signed manifest), verify checks both, the trace and explain name both."""
    from governance.enforcement import DeploymentError, EnforcedStableDiffusionPipeline, build_deployment, verify_deployment
    from tests.helpers.enforcement import frequent_features_at

    store, tmp = world["store"], world["tmp"]
    hook_b = "up_blocks.1.attentions.2"
    sae_b = random_sae(seed=3)
    feats_b = frequent_features_at(load_pipe(world["model"]), sae_b, hook_b)
    sha_b = sae_b.save(tmp / "sae-b")
    rec_b = store.register_sae_version(name="toy-sae-b", hook_point=hook_b, d_in=64, n_latents=sae_b.n_latents,
                                       k=sae_b.k, architecture="topk", config=sae_b.cfg.model_dump(),
                                       weights_uri=(tmp / "sae-b").as_uri(), weights_sha256=sha_b, actor="erin",
                                       base_model="toy")
    store.add_concept("dotted", "style", "erin", prompts=["a red circle in dotted style"])
    ts = spec_for(feats_b, steps=10, scale=-5.0).entries[0].timesteps
    spec = MappingSpec(concept="dotted", selection={"rule": "top_n", "top_n": 3}, gamma=-5.0,
                       scheduler="DDIMScheduler", num_steps=10, timesteps=ts)
    m = store.create_mapping(rec_b.id, "dotted", spec, "erin")
    store.propose(m.id, "erin", "dotted must go")
    store.approve(m.id, "rob", "checked")
    store.create_blocklist("two", [world["mapping"], m.id], "erin")
    bl = store.publish_blocklist("two", "erin")
    assert bl.hook_points == [HOOK, hook_b]
    out = tmp / "two-dep"
    build_deployment(store, "two", 1, str(world["model"]), out, "erin")
    for hook in (HOOK, hook_b):
        assert (out / "saegov" / "saes" / hook / "sae.safetensors").is_file()
    v = verify_deployment(out, store=store)
    assert v.registry_checked and [s.hook_point for s in v.manifest.payload.saes] == [HOOK, hook_b]
    assert v.manifest.payload.format == "saegov.deployment/v2" and v.blocklist.format == "saegov.blocklist/v2"
    pipe = EnforcedStableDiffusionPipeline.from_pretrained(out, store=store)
    trace = pipe(["a red circle in dotted style"], generator=torch.Generator().manual_seed(0), seeds=[0]).traces[0]
    assert trace["format"] == "saegov.trace/v2"
    fired = {(s["hook_point"], s["concept"]) for c in trace["unet_calls"] for s in c["suppressed"]}
    assert fired == {(HOOK, "red"), (hook_b, "dotted")}
    from governance.enforcement.explain import explain
    from governance.formats.trace import parse_trace

    report = explain(parse_trace(trace, "t"), store)
    assert {(c["concept"], tuple(c["hook_points"])) for c in report["suppressed"]} == {
        ("red", (HOOK,)), ("dotted", (hook_b,))}
    assert all(f["hook_point"] in (HOOK, hook_b) for c in report["suppressed"] for f in c["features"])
    # one SAE file swapped for another's: refused, naming the file
    shutil.copy(out / "saegov" / "saes" / HOOK / "sae.safetensors", out / "saegov" / "saes" / hook_b / "sae.safetensors")
    with pytest.raises(DeploymentError, match=f"saegov/saes/{hook_b}/sae.safetensors was modified"):
        verify_deployment(out, store=store)


def test_a_deployment_built_by_the_old_code_verifies_loads_and_enforces_unchanged(tmp_path: Path) -> None:
    """tests/governance/formats/data/stop10/deployment was built by the code before deployment
    format v2 (one SAE in saegov/sae/); its weights are the seeded untrained toy pipeline's,
    regenerated here. It verifies (hashes, signature over the v1 payload), loads, and suppresses
    exactly what the old code recorded for the same prompt and seed."""
    from governance.enforcement import EnforcedStableDiffusionPipeline, verify_deployment
    from governance.toyworld.model import build_untrained_pipeline

    old = Path(__file__).parents[1] / "formats" / "data" / "stop10"
    dep = tmp_path / "old-dep"
    shutil.copytree(old / "deployment", dep)
    weights = tmp_path / "weights"
    build_untrained_pipeline(seed=0).save_pretrained(str(weights), safe_serialization=True)
    for f in weights.rglob("*.safetensors"):
        shutil.copy(f, dep / f.relative_to(weights))
    # The auditor's trust store names the key that signed it.
    signer = json.loads((dep / "saegov" / "manifest.json").read_text())["signature"]["public_key"]
    v = verify_deployment(dep, check_registry=False, trusted_keys=[signer])
    assert v.manifest.payload.format == "saegov.deployment/v1" and [s.path for s in v.manifest.payload.saes] == [
        "saegov/sae"]
    pipe = EnforcedStableDiffusionPipeline.from_pretrained(dep, check_registry=False, trusted_keys=[signer])
    new = pipe("a red circle", generator=torch.Generator().manual_seed(0), seeds=[0]).traces[0]
    then = json.loads((old / "trace.json").read_text())

    def suppressions(t: dict) -> list:
        return [[(s["feature"], s["concept"], s["mapping_id"], s["halves"]) for s in c["suppressed"]]
                for c in t["unet_calls"]]

    assert suppressions(new) == suppressions(then) and sum(map(len, suppressions(new))) > 0
    assert {s["hook_point"] for c in new["unet_calls"] for s in c["suppressed"]} == {"up_blocks.1.attentions.1"}


@pytest.mark.parametrize("tamper", ["nan", "no-version"])
def test_a_manifest_no_signature_can_cover_is_one_line(world, tamper: str) -> None:
    from governance.enforcement import signing

    out = _build(world)
    path = out / "saegov" / "manifest.json"
    m = json.loads(path.read_text())
    if tamper == "nan":
        text = path.read_text().replace('"guidance_scale":7.5', '"guidance_scale":NaN')
        assert "NaN" in text
        path.write_text(text)
    else:  # re-signed by an insider with a fresh key, blocklist field without a version
        from governance.common.jsonio import canonical_json

        m["payload"]["blocklist"] = "nover"
        key = signing.load_or_create_key(world["tmp"] / "k")
        m["signature"] = {"algorithm": "ed25519", "public_key": signing.public_hex(key),
                          "value": signing.sign(key, canonical_json(m["payload"]).encode())}
        path.write_text(canonical_json(m) + "\n")
    r = CliRunner().invoke(saegov, ["deploy", "verify", str(out)])
    assert r.exit_code in (1, 2) and r.stderr.startswith("error: ") and len(r.stderr.strip().splitlines()) == 1, r.output


def test_a_configured_registry_that_cannot_be_used_fails_closed(world) -> None:
    """A stale schema (e.g. code upgraded, `db upgrade` not run yet) must not turn into
    "approvals not re-checked": verify refuses with the schema's exit code."""
    from sqlalchemy import text

    out = _build(world)
    trust = world["tmp"] / "trusted.json"
    assert CliRunner().invoke(saegov, ["key", "export", "--out", str(trust)]).exit_code == 0
    with world["store"].engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '0001'"))
    r = CliRunner().invoke(saegov, ["deploy", "verify", str(out)])
    assert r.exit_code == 3 and "saegov db upgrade" in r.stderr, r.output
    r = CliRunner().invoke(saegov, ["deploy", "verify", str(out), "--offline", "--trusted-keys", str(trust)])
    assert r.exit_code == 0, r.output
