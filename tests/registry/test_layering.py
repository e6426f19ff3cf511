"""Layering, checked in fresh interpreters and on the source: registry/ never imports torch,
diffusers or governance beyond its torch-free `common` and `formats`; `saegov --help` imports
no torch."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
HEAVY = ("torch", "diffusers", "transformers", "safetensors", "mlflow")


def _imports_in_fresh_interpreter(code: str) -> list[str]:
    probe = code + f"\nimport sys\nprint(','.join(m for m in {HEAVY!r} if m in sys.modules))\n"
    out = subprocess.run([sys.executable, "-c", probe], check=True, capture_output=True, text=True, cwd=REPO)
    return [m for m in out.stdout.strip().splitlines()[-1].split(",") if m] if out.stdout.strip() else []


def test_registry_imports_no_torch() -> None:
    loaded = _imports_in_fresh_interpreter(
        "import registry.store, registry.audit, registry.artifacts, registry.db, cli.common, "
        "governance.common, governance.formats")
    assert loaded == []


def test_saegov_help_imports_no_torch() -> None:
    code = ("import sys\nfrom click.testing import CliRunner\nfrom cli.main import saegov\n"
            "r = CliRunner().invoke(saegov, ['--help'])\nassert r.exit_code == 0 and 'deploy' in r.output\n")
    assert _imports_in_fresh_interpreter(code) == []


def _governance_imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
    return {n for n in names if n.split(".")[0] in ("governance", "cli")}


def test_registry_depends_only_on_common_and_formats() -> None:
    allowed = ("governance.common", "governance.formats")
    bad = {str(p.relative_to(REPO)): sorted(m for m in _governance_imports(p) if not m.startswith(allowed))
           for p in (REPO / "registry").rglob("*.py")}
    assert {k: v for k, v in bad.items() if v} == {}


def test_common_and_formats_depend_on_nothing_else() -> None:
    for pkg in ("common", "formats"):
        for p in (REPO / "governance" / pkg).rglob("*.py"):
            others = {m for m in _governance_imports(p) if not m.startswith(("governance.common", "governance.formats"))}
            assert others == set(), (p, others)


def test_verify_and_explain_import_no_torch(tmp_path: Path) -> None:
    """Checking a deployment's hashes and signature, and explaining a trace, need no tensors:
    `deploy verify` and `audit explain` stay fast (no torch import, about 0.7 s on the demo)."""
    golden = REPO / "tests" / "governance" / "formats" / "data" / "stop10"
    code = (
        "from click.testing import CliRunner\nfrom cli.main import saegov\n"
        f"r = CliRunner().invoke(saegov, ['deploy', 'verify', {str(golden / 'deployment')!r}, '--offline'])\n"
        "assert r.exit_code == 1 and 'is missing' in r.stderr, r.output\n"  # its weights are not committed
        f"r = CliRunner().invoke(saegov, ['audit', 'explain', {str(golden / 'trace.png')!r}])\n"
        "assert r.exit_code == 0 and \"Concept 'red'\" in r.output, r.output\n")
    env_code = f"import os\nos.environ['SAEGOV_HOME'] = {str(tmp_path)!r}\n" + code
    assert _imports_in_fresh_interpreter(env_code) == []
