"""Fixtures for collection/scoring tests: the toy architecture with random weights, saved once."""
from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def toy_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained toy-world pipeline folder (fast to build; tests must not depend on training)."""
    import torch

    from governance.toyworld.model import build_untrained_pipeline

    torch.set_num_threads(1)
    path = tmp_path_factory.mktemp("toy") / "pipeline"
    build_untrained_pipeline(seed=0).save_pretrained(str(path))
    return path
