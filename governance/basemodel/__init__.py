"""The base Stable Diffusion pipeline: loading it, its content hash, and named hooks on its UNet."""
from __future__ import annotations

from governance.basemodel.loading import ModelLoadError, load_pipeline, model_folder_hash, resolve_model_folder

__all__ = ["ModelLoadError", "load_pipeline", "model_folder_hash", "resolve_model_folder"]
