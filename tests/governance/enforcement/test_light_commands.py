"""Commands that only read the registry or hash files (`deploy verify`, `audit verify`,
`sae import`, `--help`) import neither torch nor diffusers, transformers or MLflow: each runs
in a fresh interpreter, which reports the heavy modules loaded once the command returned."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from governance.enforcement import build_deployment

HEAVY = ("torch", "diffusers", "transformers", "mlflow")
# cli.main in-process (standalone_mode=False: errors raise, so a failure is visible), then the
# heavy modules the command pulled in.
CHECK = f"""
import sys
from cli.main import saegov
saegov.main(sys.argv[1:], prog_name="saegov", standalone_mode=False)
print("HEAVY=" + ",".join(m for m in {HEAVY!r} if m in sys.modules), file=sys.stderr)
"""
ROOT = Path(__file__).resolve().parents[3]


def _heavy_modules(*args: str) -> tuple[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    p = subprocess.run([sys.executable, "-c", CHECK, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 0, p.stderr[-3000:]
    heavy = [ln for ln in p.stderr.splitlines() if ln.startswith("HEAVY=")]
    assert len(heavy) == 1, p.stderr[-3000:]
    return heavy[0][len("HEAVY="):], p.stdout


def test_verifying_and_hashing_commands_import_no_torch(world, tmp_path: Path) -> None:
    out = world["tmp"] / "dep"
    build_deployment(world["store"], "no-red", 1, str(world["model"]), out, "erin", track=False)
    sae_folder = world["tmp"] / "sae"
    for args in (["--help"], ["deploy", "verify", "--help"], ["deploy", "verify", str(out)],
                 ["deploy", "verify", str(out), "--offline", "--allow-untrusted"], ["audit", "verify"],
                 ["sae", "import", str(sae_folder), "--name", "again", "--hookpoint", "up_blocks.1.attentions.1",
                  "--actor", "erin"], ["sae", "list"]):
        heavy, stdout = _heavy_modules(*args)
        assert heavy == "", f"saegov {' '.join(args)} imported {heavy}"
        if args[:2] == ["deploy", "verify"] and "--help" not in args:
            assert stdout.startswith("ok: ")
    assert world["store"].get_sae("again@1").weights_sha256 == world["store"].get_sae("toy-sae@1").weights_sha256


@pytest.mark.parametrize("args", [["toyworld", "prompts"], ["db", "current"]])
def test_other_light_commands_import_no_torch(world, args: list[str]) -> None:
    assert _heavy_modules(*args)[0] == ""
