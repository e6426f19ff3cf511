"""Enforcement: blocklists applied to diffusers pipelines, deployments, traces."""
from __future__ import annotations

from governance.enforcement.deployment import DeploymentError, build_deployment, verify_deployment
from governance.enforcement.intervention import Blocklist, EnforcementError, apply_blocklist, remove_blocklist

__all__ = [
    "Blocklist", "DeploymentError", "EnforcedStableDiffusionPipeline", "EnforcementError",
    "apply_blocklist", "build_deployment", "remove_blocklist", "verify_deployment",
]


def __getattr__(name: str):
    # The pipeline class imports diffusers' pipelines (slow); load it on first use only.
    if name == "EnforcedStableDiffusionPipeline":
        from governance.enforcement.pipeline import EnforcedStableDiffusionPipeline

        return EnforcedStableDiffusionPipeline
    raise AttributeError(name)
