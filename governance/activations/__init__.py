"""Collecting a hook point's activations over prompts into a sharded, resumable dataset."""
from __future__ import annotations

from governance.activations.collect import CollectConfig, CollectionError, collect, collect_with_pipeline

__all__ = ["CollectConfig", "CollectionError", "collect", "collect_with_pipeline"]
