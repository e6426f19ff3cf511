"""Enforcement: the SAeUron intervention as named hooks (`intervention`), deployment folders
built, signed and verified (`deployment`, `signing`), the enforced pipeline (`pipeline`),
per-image traces (`trace`), `saegov generate` (`generate`) and `audit explain` (`explain`)."""
from __future__ import annotations

from governance.enforcement.deployment import DeploymentError, build_deployment, verify_deployment
from governance.enforcement.intervention import (
    EnforcedBlocklist, EnforcementError, apply_blocklist, blocklist_suspended, remove_blocklist,
)

__all__ = [
    "DeploymentError", "EnforcedBlocklist", "EnforcedStableDiffusionPipeline", "EnforcementError",
    "apply_blocklist", "blocklist_suspended", "build_deployment", "remove_blocklist", "verify_deployment",
]


def __getattr__(name: str):
    # The pipeline class imports diffusers' pipelines (slow); load it on first use only.
    if name == "EnforcedStableDiffusionPipeline":
        from governance.enforcement.pipeline import EnforcedStableDiffusionPipeline

        return EnforcedStableDiffusionPipeline
    raise AttributeError(name)
