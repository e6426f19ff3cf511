"""Reading an activation dataset (governance.formats.activations) for SAE training.

Streaming: shards are visited in a seeded random order per epoch, each rank keeps its own
disjoint rows (`rank::world` of every shard), and a shuffle buffer of `buffer_tokens` rows
mixes tokens across shards before they are cut into batches. Memory is bounded by the buffer
(plus one shard), not by the dataset; with the buffer at least as large as the dataset (the toy
world) the shuffle is a full one.
"""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open

from governance.common.errors import FormatError, GovernanceError
from governance.common.hashing import sha256_bytes, sha256_file
from governance.formats.activations import MANIFEST_NAME, ActivationManifest, read_activation_manifest


class DatasetError(GovernanceError):
    """A malformed, incomplete or tampered activation dataset."""


@dataclass(frozen=True)
class ActivationDataset:
    folder: Path
    d_in: int
    hookpoint: str
    base_model_hash: str | None
    manifest_sha256: str  # lineage: sha256 of manifest.json bytes
    shards: tuple[tuple[Path, int], ...]  # (path, rows)
    manifest: ActivationManifest

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
    try:
        m, raw_bytes = read_activation_manifest(folder)
    except FormatError as exc:
        raise DatasetError(f"invalid manifest: {exc}") from None
    hookpoint = m.params.hook_point
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
        base_model_hash=m.params.base_model_hash,
        manifest_sha256=sha256_bytes(raw_bytes), shards=tuple(shards), manifest=m,
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


def read_prompt_index(path: Path, rows: int, rank: int = 0, world: int = 1) -> torch.Tensor:
    """This rank's rows of one shard's `prompt_index` (int64), shape-checked."""
    with safe_open(str(path), framework="pt") as f:
        if "prompt_index" not in f.keys():
            raise DatasetError(f"{path}: no 'prompt_index' tensor")
        idx = f.get_tensor("prompt_index")
    if tuple(idx.shape) != (rows,):
        raise DatasetError(f"{path}: prompt_index shape {list(idx.shape)}, manifest says {[rows]}")
    idx = idx.to(torch.long)
    return idx[rank::world] if world > 1 else idx


def iter_batches(ds: ActivationDataset, batch: int, n_batches: int, epoch: int, seed: int,
                 rank: int = 0, world: int = 1, buffer_tokens: int = 1 << 20,
                 with_prompt_index: bool = False) -> Iterator[Any]:
    """Exactly `n_batches` shuffled fp16 batches of `batch` rows for this rank and epoch; with
    `with_prompt_index`, (rows, their prompts' indices) pairs, shuffled together.

    Every rank must yield the same number of batches (their gradients are all-reduced step by
    step), so the caller computes `n_batches` from the smallest rank's row count."""
    if not with_prompt_index:
        for x, _ in _iter_batches(ds, batch, n_batches, epoch, seed, rank, world, buffer_tokens, False):
            yield x
        return
    n_prompts = len(ds.manifest.prompts)
    for x, idx in _iter_batches(ds, batch, n_batches, epoch, seed, rank, world, buffer_tokens, True):
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= n_prompts):
            raise DatasetError(f"{ds.folder}: a row's prompt index lies outside the manifest's {n_prompts} prompts")
        yield x, idx


def _iter_batches(ds: ActivationDataset, batch: int, n_batches: int, epoch: int, seed: int, rank: int, world: int,
                  buffer_tokens: int, with_index: bool) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch * 7919 + rank)
    order = torch.randperm(len(ds.shards), generator=torch.Generator().manual_seed(seed + epoch))
    pending: list[torch.Tensor] = []
    pending_rows = 0
    pending_idx: list[torch.Tensor] = []
    carry = torch.empty(0, ds.d_in, dtype=torch.float16)
    carry_idx = torch.empty(0, dtype=torch.long)
    emitted = 0

    def drain(buf: torch.Tensor, buf_idx: torch.Tensor, final: bool) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        nonlocal emitted, carry, carry_idx
        perm = torch.randperm(buf.shape[0], generator=g)
        buf = buf[perm]
        buf_idx = buf_idx[perm] if with_index else buf_idx
        n_full = buf.shape[0] // batch
        for i in range(n_full):
            if emitted == n_batches:
                return
            emitted += 1
            sl = slice(i * batch, (i + 1) * batch)
            yield buf[sl], (buf_idx[sl] if with_index else buf_idx)
        # The remainder is mixed into the next buffer rather than dropped.
        carry = buf[n_full * batch:] if not final else carry[:0]
        if with_index:
            carry_idx = buf_idx[n_full * batch:] if not final else carry_idx[:0]

    for si in order.tolist():
        path, rows = ds.shards[si]
        pending.append(read_shard(path, rows, ds.d_in, rank, world))
        if with_index:
            pending_idx.append(read_prompt_index(path, rows, rank, world))
        pending_rows += pending[-1].shape[0]
        if pending_rows >= buffer_tokens:
            yield from drain(torch.cat([carry, *pending]), torch.cat([carry_idx, *pending_idx]), final=False)
            pending, pending_idx, pending_rows = [], [], 0
            if emitted == n_batches:
                return
    yield from drain(torch.cat([carry, *pending]), torch.cat([carry_idx, *pending_idx]), final=True)
