"""registry/ never imports torch or diffusers (checked in a fresh interpreter)."""
from __future__ import annotations

import subprocess
import sys


def test_registry_imports_no_torch() -> None:
    code = (
        "import sys, registry.store, registry.audit, registry.artifacts, registry.db, cli.common\n"
        "bad = [m for m in ('torch', 'diffusers', 'transformers', 'safetensors') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
