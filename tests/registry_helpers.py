"""Helpers for registry tests: tiny SAE folders (safetensors written by hand), mapping JSON."""
from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any


def write_safetensors(path: Path, tensors: dict[str, tuple[str, tuple[int, ...]]]) -> None:
    """Zero-filled tensors {name: (dtype, shape)}; only F32/F16 used here."""
    sizes = {"F32": 4, "F16": 2}
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, (dtype, shape) in tensors.items():
        n = sizes[dtype]
        for d in shape:
            n *= d
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    hb = json.dumps(header).encode()
    hb += b" " * (-len(hb) % 8)
    path.write_bytes(struct.pack("<Q", len(hb)) + hb + b"\0" * offset)


def make_sae_folder(root: Path, name: str = "sae", d_in: int = 8, expansion: int = 4, k: int = 2,
                    num_latents: int = 0, **cfg_extra: Any) -> Path:
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    n = num_latents or d_in * expansion
    cfg = {"expansion_factor": expansion, "normalize_decoder": True, "num_latents": num_latents,
           "k": k, "batch_topk": True, "sample_topk": False, "input_unit_norm": False,
           "multi_topk": False, "d_in": d_in, **cfg_extra}
    (folder / "cfg.json").write_text(json.dumps(cfg))
    write_safetensors(folder / "sae.safetensors", {
        "encoder.weight": ("F32", (n, d_in)), "encoder.bias": ("F32", (n,)),
        "W_dec": ("F32", (n, d_in)), "b_dec": ("F32", (d_in,))})
    return folder


def mapping_spec(concept: str = "red", features: tuple[int, ...] = (1, 5),
                 timesteps: tuple[int, ...] = (981, 961)) -> dict[str, Any]:
    return {
        "format": "saegov.mapping/v1",
        "concept": concept,
        "selection": {"rule": "tau", "tau": 99.99},
        "gamma": -1.0,
        "scheduler": "DDIMScheduler",
        "num_steps": 50,
        "timesteps": {str(t): [{"feature": f, "score": 0.5 - 0.01 * i, "scale": -0.3, "gate": 0.1}
                               for i, f in enumerate(features)] for t in timesteps},
        "evidence": [{"kind": "mlflow_run", "ref": "run-123"}],
    }


def write_mapping(path: Path, **kw: Any) -> Path:
    path.write_text(json.dumps(mapping_spec(**kw)))
    return path
