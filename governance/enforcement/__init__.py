"""Enforcement: the SAeUron intervention as named hooks (`intervention`), deployment folders
built, signed and verified (`deployment`, `signing`), the enforced pipeline (`pipeline`),
per-image traces (`trace`), `saegov generate` (`generate`) and `audit explain` (`explain`).

Names load on first use: verifying a deployment (`verify_deployment`) needs no torch, so
`saegov deploy verify` does not pay for importing it.
"""
from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "DeploymentError": "governance.enforcement.deployment",
    "build_deployment": "governance.enforcement.deployment",
    "verify_deployment": "governance.enforcement.deployment",
    "EnforcedBlocklist": "governance.enforcement.intervention",
    "EnforcementError": "governance.enforcement.intervention",
    "apply_blocklist": "governance.enforcement.intervention",
    "blocklist_suspended": "governance.enforcement.intervention",
    "remove_blocklist": "governance.enforcement.intervention",
    "EnforcedStableDiffusionPipeline": "governance.enforcement.pipeline",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'governance.enforcement' has no attribute {name!r}")
