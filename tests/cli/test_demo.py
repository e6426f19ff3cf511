"""The README's main job, `saegov demo`, end to end on the committed toy world (minutes: slow).

Run as the user runs it (a separate process, a fresh workspace), then checked on its artefacts:
registry state, the audit chain, the evaluation's MLflow run and the self-contained report.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest


def _trained() -> bool:
    from governance.toyworld.paths import is_trained

    return is_trained()


@pytest.mark.slow
@pytest.mark.skipif(not _trained(), reason="the trained toy world is not installed (governance/toyworld/weights)")
def test_demo_end_to_end(tmp_path: Path) -> None:
    ws = tmp_path / "demo"
    exe = Path(sys.executable).parent / "saegov"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SAEGOV_", "MLFLOW_"))}
    r = subprocess.run([str(exe), "demo", "--workspace", str(ws)], capture_output=True, text=True, env=env,
                       timeout=1800)
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"report: {ws / 'reports' / 'demo.html'}" in r.stdout
    table = dict(re.findall(r"^(red|dotted)\s+(colour|style)\s", r.stdout, flags=re.M))
    assert table == {"red": "colour", "dotted": "style"}, r.stdout

    html = (ws / "reports" / "demo.html").read_text()
    assert html.count("data:image/png;base64,") >= 6  # 2 before/after pairs + 2 heatmaps
    for action in ("mapping.create", "mapping.approve", "blocklist.publish", "deployment.record"):
        assert action in html

    env["SAEGOV_HOME"] = str(ws)
    verify = subprocess.run([str(exe), "audit", "verify"], capture_output=True, text=True, env=env, timeout=300)
    assert verify.returncode == 0 and "audit chain OK" in verify.stdout
    gens = subprocess.run([str(exe), "deploy", "verify", str(ws / "deployments" / "demo")], capture_output=True,
                          text=True, env=env, timeout=300)
    assert gens.returncode == 0, gens.stderr
    # One blocklist, two SAEs at the two concepts' blocks; the trace and explain name both.
    import json

    hooks = ["up_blocks.1.attentions.1", "up_blocks.1.attentions.2"]
    manifest = json.loads((ws / "deployments" / "demo" / "saegov" / "manifest.json").read_text())
    assert sorted(s["hook_point"] for s in manifest["payload"]["saes"]) == hooks
    trace = json.loads((ws / "images" / "red-after.json").read_text())
    fired = {(s["hook_point"], s["concept"]) for c in trace["unet_calls"] for s in c["suppressed"]}
    # each concept at its own block (red's second block is an option: --two-block-colour)
    assert fired == {("up_blocks.1.attentions.2", "red"), ("up_blocks.1.attentions.1", "dotted")}, fired
    explain = subprocess.run([str(exe), "audit", "explain", str(ws / "images" / "red-after.png"), "--json"],
                             capture_output=True, text=True, env=env, timeout=300)
    assert explain.returncode == 0, explain.stderr
    rep = json.loads(explain.stdout)
    assert {(c["concept"], tuple(c["hook_points"])) for c in rep["suppressed"]} == {
        ("red", ("up_blocks.1.attentions.2",)), ("dotted", ("up_blocks.1.attentions.1",))}
