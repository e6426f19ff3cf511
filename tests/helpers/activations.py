"""Test helper: write an activation dataset (manifest.json + fp16 shards) from toy data."""
from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from safetensors.torch import save_file

from governance.formats.activations import (
    ActivationManifest, CollectionParams, ShardInfo, prompts_sha256, shard_name, write_activation_manifest,
)

BASE_MODEL_HASH = "ab" * 32
HOOKPOINT = "up_blocks.1.attentions.1"


def sparse_toy_activations(rows: int, d_in: int = 32, n_atoms: int = 128, active: int = 4,
                           seed: int = 0, noise: float = 0.01) -> torch.Tensor:
    """Tokens that are sparse sums of `active` of `n_atoms` random unit directions plus an
    offset: an SAE of enough width can reconstruct them almost exactly."""
    g = torch.Generator().manual_seed(seed)
    atoms = torch.randn(n_atoms, d_in, generator=g)
    atoms /= atoms.norm(dim=1, keepdim=True)
    idx = torch.rand(rows, n_atoms, generator=g).topk(active, dim=1).indices
    coef = torch.rand(rows, active, generator=g) * 2 + 0.5
    x = torch.einsum("nk,nkd->nd", coef, atoms[idx])
    x += 3.0 * torch.randn(d_in, generator=g)  # a non-zero mean, so b_dec matters
    x += noise * torch.randn(rows, d_in, generator=g)
    return x


def write_dataset(folder: Path, x: torch.Tensor, shard_rows: int = 1000,
                  hookpoint: str = HOOKPOINT, base_model_hash: str = BASE_MODEL_HASH,
                  prompts: list[str] | None = None, prompt_index: torch.Tensor | None = None) -> Path:
    """An activation dataset in the layout of governance.formats.activations (toy rows); by
    default row r belongs to prompt r // 64 of an empty prompt list."""
    folder.mkdir(parents=True, exist_ok=True)
    shards = []
    for i, start in enumerate(range(0, x.shape[0], shard_rows)):
        part = x[start:start + shard_rows].to(torch.float16).contiguous()
        name = shard_name(i)
        save_file({
            "activations": part,
            "timesteps": torch.full((part.shape[0],), 999 - i, dtype=torch.int32),
            "prompt_index": (torch.arange(part.shape[0], dtype=torch.int32) // 64 if prompt_index is None
                             else prompt_index[start:start + shard_rows].to(torch.int32).contiguous()),
        }, str(folder / name))
        sha = hashlib.sha256((folder / name).read_bytes()).hexdigest()
        shards.append(ShardInfo(index=i, file=name, sha256=sha, rows=part.shape[0], prompt_start=i, prompt_end=i + 1))
    params = CollectionParams(base_model="toy", base_model_hash=base_model_hash, hook_point=hookpoint, steps=10,
                              guidance=7.5, seed=0, height=32, width=32, prompts_sha256=prompts_sha256(prompts or []),
                              n_prompts=len(shards), prompts_per_shard=1)
    write_activation_manifest(folder, ActivationManifest(
        params=params, d_in=x.shape[1], spatial_shape=(8, 8), scheduler_class="DDIMScheduler", scheduler_config={},
        unet_calls_per_prompt=10, timesteps=[999 - i for i in range(len(shards))], prompts=prompts or [],
        shards=shards, n_shards=len(shards), total_rows=x.shape[0], complete=True))
    return folder
