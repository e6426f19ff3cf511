"""The toy world through the project's one pipeline loader (`governance.basemodel.loading`)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from governance.basemodel.loading import ModelLoadError, load_pipeline as load_base_pipeline


class ToyWorldMissing(ModelLoadError):
    pass


def load_pipeline(path: Path | str | None = None, dtype: Any = None) -> Any:  # -> StableDiffusionPipeline
    """`path`, or the committed toy world when None."""
    from governance.toyworld.paths import default_pipeline_path, is_trained

    if path is None:
        if not is_trained():
            raise ToyWorldMissing(f"no trained toy world at {default_pipeline_path()}")
        path = default_pipeline_path()
    return load_base_pipeline(str(path), dtype=dtype)[0]
