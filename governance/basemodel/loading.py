"""Loading a base Stable Diffusion pipeline, and its content hash.

The hash identifies the exact weights every artifact (activation dataset, SAE, mapping,
deployment) was made from: sha256 over the sorted relative paths and the sha256 of each file of
the model folder, so it does not depend on file system order, timestamps or the folder's name.
"""
from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path
from typing import Any

from governance.common.errors import GovernanceError, first_line
from governance.common.hashing import sha256_file


class ModelLoadError(GovernanceError):
    """The base model cannot be loaded (missing folder, hub id while offline, bad layout)."""


def model_folder_hash(folder: str | Path) -> str:
    """Deterministic sha256 of a model folder's files (symlinks followed, hidden files skipped)."""
    root = Path(folder)
    files = sorted(
        p for p in root.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts)
    )
    if not files:
        raise ModelLoadError(f"model folder {str(root)!r} has no files")
    h = hashlib.sha256()
    for p in files:
        rel = p.relative_to(root).as_posix()
        h.update(rel.encode() + b"\0" + sha256_file(p).encode() + b"\n")
    return h.hexdigest()


def resolve_model_folder(model: str) -> Path:
    """A local diffusers folder, or the local snapshot of a hub id (never downloads here)."""
    path = Path(model).expanduser()
    looks_local = model.startswith(("/", "./", "../", "~")) or model.count("/") > 1
    if looks_local and not path.exists():
        raise ModelLoadError(f"cannot load model {model!r}: no such folder")
    if path.is_dir():
        if not (path / "model_index.json").is_file():
            raise ModelLoadError(f"{model!r} is not a diffusers pipeline folder (no model_index.json)")
        return path.resolve()
    if path.exists():
        raise ModelLoadError(f"{model!r} is a file, not a diffusers pipeline folder")
    try:
        from huggingface_hub import snapshot_download

        offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false")
        return Path(snapshot_download(model, local_files_only=offline))
    except Exception as exc:  # noqa: BLE001 - any hub failure is one line for the user
        raise ModelLoadError(f"cannot load model {model!r}: not a local folder and the hub failed "
                             f"({first_line(exc)})") from None


def quiet_libraries() -> None:
    """Silence diffusers' and transformers' progress bars and hints (accelerate, low-memory
    loading, image processors without torchvision): the caller shows its own progress, and a
    command's stderr is its progress and its one-line error only. Call before importing
    diffusers pipelines (some hints are printed at import time)."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    from diffusers.utils import logging as dlogging

    dlogging.disable_progress_bar()
    dlogging.set_verbosity_error()
    try:
        from transformers.utils import logging as tlogging

        tlogging.disable_progress_bar()
        tlogging.set_verbosity_error()
    except ImportError:
        pass


def load_pipeline(model: str, device: str = "cpu", dtype: Any = None) -> tuple[Any, Path]:
    """StableDiffusionPipeline from a folder or hub id -> (pipeline, resolved folder)."""
    quiet_libraries()
    import torch
    from diffusers import StableDiffusionPipeline

    folder = resolve_model_folder(model)
    try:
        with warnings.catch_warnings():
            # diffusers >= 0.36 renamed torch_dtype to dtype; the old name works on every version.
            warnings.simplefilter("ignore", FutureWarning)
            pipe = StableDiffusionPipeline.from_pretrained(
                str(folder), torch_dtype=dtype or torch.float32, safety_checker=None, requires_safety_checker=False
            )
    except Exception as exc:  # noqa: BLE001
        raise ModelLoadError(f"cannot load model {model!r}: {first_line(exc)}") from None
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device), folder
