"""Reading an activation dataset (folder with `manifest.json` + fp16 safetensors shards) for
SAE training.

The manifest is read with a minimal model that tolerates extra keys, so this reader does not
depend on every field of `governance.activations.manifest` (it accepts both that layout, with
`params.hook_point`, and a flat one with `hookpoint` / `base_model_hash`).

Streaming: shards are visited in a seeded random order per epoch, each rank keeps its own
disjoint rows (`rank::world` of every shard), and a shuffle buffer of `buffer_tokens` rows
mixes tokens across shards before they are cut into batches. Memory is bounded by the buffer
(plus one shard), not by the dataset; with the buffer at least as large as the dataset (the toy
world) the shuffle is a full one.
"""
from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from safetensors import safe_open

from governance.hashing import sha256_bytes, sha256_file

MANIFEST_NAME = "manifest.json"


class DatasetError(ValueError):
    """A malformed, incomplete or tampered activation dataset."""


class _Shard(BaseModel):
    model_config = ConfigDict(extra="ignore")
    file: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    rows: int = Field(ge=0)


class _Manifest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    d_in: int = Field(gt=0)
    shards: list[_Shard]
    hookpoint: str | None = None
    hook_point: str | None = None
    base_model_hash: str | None = None
    params: dict[str, Any] | None = None
    complete: bool = True


@dataclass(frozen=True)
class ActivationDataset:
    folder: Path
    d_in: int
    hookpoint: str
    base_model_hash: str | None
    manifest_sha256: str  # lineage: sha256 of manifest.json bytes
    shards: tuple[tuple[Path, int], ...]  # (path, rows)
    raw_manifest: dict[str, Any]

    @property
    def total_rows(self) -> int:
        return sum(r for _, r in self.shards)

    def rows_for_rank(self, rank: int, world: int) -> int:
        """Rows a rank sees per epoch under the `rank::world` split of every shard."""
        return sum(len(range(rank, r, world)) for _, r in self.shards)


def open_dataset(folder: str | Path, verify: bool = True) -> ActivationDataset:
    """Parse the manifest and (by default) verify every shard's sha256 before any use."""
    folder = Path(folder)
    path = folder / MANIFEST_NAME
    if not path.is_file():
        raise DatasetError(f"{folder}: no {MANIFEST_NAME} (not an activation dataset)")
    raw_bytes = path.read_bytes()
    try:
        raw = json.loads(raw_bytes)
        m = _Manifest.model_validate(raw)
    except (json.JSONDecodeError, ValidationError) as exc:
        raise DatasetError(f"{path}: invalid manifest ({str(exc).splitlines()[0]})") from None
    params = m.params or {}
    hookpoint = m.hookpoint or m.hook_point or params.get("hook_point") or params.get("hookpoint")
    if not hookpoint:
        raise DatasetError(f"{path}: manifest names no hook point")
    if not m.complete:
        raise DatasetError(f"{path}: collection is incomplete (resume it first)")
    if not m.shards or sum(s.rows for s in m.shards) == 0:
        raise DatasetError(f"{path}: dataset has no rows")
    shards = []
    for s in m.shards:
        p = (folder / s.file).resolve()
        if folder.resolve() not in p.parents:
            raise DatasetError(f"{path}: shard path {s.file!r} escapes the dataset folder")
        if not p.is_file():
            raise DatasetError(f"{folder}: missing shard {s.file}")
        if verify and sha256_file(p) != s.sha256:
            raise DatasetError(f"{p}: sha256 does not match the manifest; refusing to train on it")
        shards.append((p, s.rows))
    return ActivationDataset(
        folder=folder, d_in=m.d_in, hookpoint=str(hookpoint),
        base_model_hash=m.base_model_hash or params.get("base_model_hash"),
        manifest_sha256=sha256_bytes(raw_bytes), shards=tuple(shards), raw_manifest=raw,
    )


def read_shard(path: Path, rows: int, d_in: int, rank: int = 0, world: int = 1) -> torch.Tensor:
    """This rank's rows of one shard's `activations` (fp16, [rows_r, d_in]), shape-checked."""
    with safe_open(str(path), framework="pt") as f:
        if "activations" not in f.keys():
            raise DatasetError(f"{path}: no 'activations' tensor")
        acts = f.get_slice("activations")
        shape = tuple(acts.get_shape())
        if shape != (rows, d_in):
            raise DatasetError(f"{path}: activations shape {list(shape)}, manifest says {[rows, d_in]}")
        x = f.get_tensor("activations")
    return x[rank::world] if world > 1 else x


def iter_batches(ds: ActivationDataset, batch: int, n_batches: int, epoch: int, seed: int,
                 rank: int = 0, world: int = 1, buffer_tokens: int = 1 << 20) -> Iterator[torch.Tensor]:
    """Exactly `n_batches` shuffled fp16 batches of `batch` rows for this rank and epoch.

    Every rank must yield the same number of batches (their gradients are all-reduced step by
    step), so the caller computes `n_batches` from the smallest rank's row count."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch * 7919 + rank)
    order = torch.randperm(len(ds.shards), generator=torch.Generator().manual_seed(seed + epoch))
    pending: list[torch.Tensor] = []
    pending_rows = 0
    carry = torch.empty(0, ds.d_in, dtype=torch.float16)
    emitted = 0

    def drain(buf: torch.Tensor, final: bool) -> Iterator[torch.Tensor]:
        nonlocal emitted, carry
        buf = buf[torch.randperm(buf.shape[0], generator=g)]
        n_full = buf.shape[0] // batch
        for i in range(n_full):
            if emitted == n_batches:
                return
            emitted += 1
            yield buf[i * batch:(i + 1) * batch]
        # The remainder is mixed into the next buffer rather than dropped.
        carry = buf[n_full * batch:] if not final else carry[:0]

    for si in order.tolist():
        path, rows = ds.shards[si]
        pending.append(read_shard(path, rows, ds.d_in, rank, world))
        pending_rows += pending[-1].shape[0]
        if pending_rows >= buffer_tokens:
            yield from drain(torch.cat([carry, *pending]), final=False)
            pending, pending_rows = [], 0
            if emitted == n_batches:
                return
    yield from drain(torch.cat([carry, *pending]), final=True)
