"""Where the committed, trained toy world lives."""
from __future__ import annotations

from pathlib import Path

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"


def default_pipeline_path() -> Path:
    """The committed diffusers folder of the trained toy world (StableDiffusionPipeline layout)."""
    return WEIGHTS_DIR


def is_trained() -> bool:
    return (WEIGHTS_DIR / "model_index.json").is_file()


def embedded_model() -> str | None:
    """The default model of every command: the committed toy world, when it is installed."""
    return str(WEIGHTS_DIR) if is_trained() else None
