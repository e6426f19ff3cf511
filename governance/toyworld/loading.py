"""Loads a toy-world (or any SD 1.x) pipeline from a local folder, offline."""
from __future__ import annotations

from pathlib import Path


class ToyWorldMissing(RuntimeError):
    pass


def load_pipeline(path: Path | str | None = None, dtype=None):  # -> StableDiffusionPipeline
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from diffusers import StableDiffusionPipeline

    from governance.toyworld.paths import default_pipeline_path, is_trained

    if path is None:
        if not is_trained():
            raise ToyWorldMissing(f"no trained toy world at {default_pipeline_path()}")
        path = default_pipeline_path()
    kwargs = {"torch_dtype": dtype} if dtype is not None else {}
    pipe = StableDiffusionPipeline.from_pretrained(str(path), safety_checker=None, requires_safety_checker=False, **kwargs)
    pipe.set_progress_bar_config(disable=True)
    return pipe
