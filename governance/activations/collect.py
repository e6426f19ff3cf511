"""Collect a hook point's activations over a prompt list into fp16 safetensors shards
(the folder's layout and manifest: governance.formats.activations).

Properties the design relies on:
- Shard i always holds prompts [i*P, (i+1)*P) and prompt j is generated with seed `seed + j`
  (its own generator), so the split into shards, ranks or resumed runs never changes a prompt's
  activations.
- Memory stays flat: only one shard's rows are held, then written and dropped.
- Resumable: a shard whose record exists and whose file's sha256 matches it is skipped; a shard
  is written to a temporary name and renamed, so a half-written one is never picked up; records
  and the manifest are written atomically.
- `torchrun`: shard i belongs to rank i % world_size; each rank writes its shards and records,
  rank 0 writes the final manifest after a barrier.
Rows are ordered by (batch of prompts, UNet call, sample, h, w).
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from pydantic import BaseModel, ConfigDict, Field

from governance.basemodel.loading import load_pipeline, model_folder_hash
from governance.common.errors import GovernanceError
from governance.common.hashing import sha256_file
from governance.common.jsonio import write_json_atomic
from governance.formats.activations import (
    FORMAT,
    MANIFEST_NAME,
    ActivationManifest,
    CollectionParams,
    ShardInfo,
    ShardRecord,
    prompts_sha256,
    read_activation_manifest,
    shard_name,
    shard_record_name,
    write_activation_manifest,
)
from governance.basemodel.hooks import (
    TimestepReader,
    add_named_hook,
    block_output_map,
    conditional_half,
    remove_hooks,
    resolve_hook_point,
    to_tokens,
)

Progress = Callable[[int, int], None]  # (prompts done by this rank, prompts of this rank)


class CollectionError(GovernanceError):
    """A collection request that cannot be honoured (one line for the CLI)."""


class CollectConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str
    hook_point: str
    prompts: list[str] = Field(min_length=1)
    out: Path
    steps: int = Field(default=50, gt=0)
    guidance: float = 9.0
    seed: int = 0
    height: int | None = None  # default: the UNet's sample size x the VAE factor
    width: int | None = None
    prompts_per_shard: int = Field(default=16, gt=0)
    batch_size: int = Field(default=8, gt=0)
    device: str = "cpu"
    dtype: str = "float32"


def _record_path(out: Path, index: int) -> Path:
    return out / shard_record_name(index)


def dist_info() -> tuple[int, int]:
    """(rank, world size); initialises the process group when launched by torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank(), dist.get_world_size()


def _barrier(world: int) -> None:
    if world > 1:
        import torch.distributed as dist

        dist.barrier()


@dataclass
class _Capture:
    """Forward hook on the hooked block: conditional-half tokens with their timestep and prompt."""

    reader: TimestepReader
    prompt_ids: list[int] = field(default_factory=list)
    acts: list[torch.Tensor] = field(default_factory=list)
    steps: list[torch.Tensor] = field(default_factory=list)
    pids: list[torch.Tensor] = field(default_factory=list)
    spatial: tuple[int, int] | None = None
    d_in: int = 0
    call_timesteps: list[int] = field(default_factory=list)  # of the current pipeline call

    def __call__(self, module: Any, args: Any, output: Any) -> None:
        x = block_output_map(output)
        n = len(self.prompt_ids)
        cond = conditional_half(x, n)
        t = self.reader.current
        if t is None:
            raise RuntimeError("the UNet timestep hook did not run before the block")
        t = conditional_half(t, n)
        _, _, h, w = cond.shape
        self.spatial, self.d_in = (h, w), int(cond.shape[1])
        self.call_timesteps.append(int(t[0]))
        self.acts.append(to_tokens(cond).to("cpu", torch.float16))
        self.steps.append(t.to(torch.int32).repeat_interleave(h * w))
        self.pids.append(torch.tensor(self.prompt_ids, dtype=torch.int32).repeat_interleave(h * w))
        return None

    def take(self) -> dict[str, torch.Tensor]:
        out = {
            "activations": torch.cat(self.acts).contiguous(),
            "timesteps": torch.cat(self.steps).contiguous(),
            "prompt_index": torch.cat(self.pids).contiguous(),
        }
        self.acts, self.steps, self.pids = [], [], []
        return out


def _generators(seeds: list[int], device: str) -> list[torch.Generator]:
    gen_device = "cpu" if device == "cpu" else device
    return [torch.Generator(device=gen_device).manual_seed(s) for s in seeds]


def _shard_done(out: Path, index: int) -> ShardRecord | None:
    rec_path = _record_path(out, index)
    if not rec_path.is_file():
        return None
    try:
        rec = ShardRecord.model_validate_json(rec_path.read_text())
    except ValueError:
        return None
    f = out / rec.info.file
    if not f.is_file() or sha256_file(f) != rec.info.sha256:
        return None  # missing or altered: redo it
    return rec


def _collect_shard(
    pipe: Any, cfg: CollectConfig, capture: _Capture, start: int, end: int, progress: Callable[[int], None]
) -> tuple[dict[str, torch.Tensor], list[int]]:
    """The shard's rows, and the timestep of every UNet call of one pipeline run."""
    timesteps: list[int] | None = None
    for b0 in range(start, end, cfg.batch_size):
        ids = list(range(b0, min(b0 + cfg.batch_size, end)))
        capture.prompt_ids = ids
        capture.call_timesteps = []
        pipe(
            [cfg.prompts[i] for i in ids],
            num_inference_steps=cfg.steps,
            guidance_scale=cfg.guidance,
            generator=_generators([cfg.seed + i for i in ids], cfg.device),
            height=cfg.height,
            width=cfg.width,
            output_type="latent",  # activations only; skip the VAE decode
        )
        if timesteps is None:
            timesteps = list(capture.call_timesteps)
        elif timesteps != capture.call_timesteps:
            raise CollectionError("the scheduler produced different timesteps for two batches")
        progress(len(ids))
    return capture.take(), timesteps or []


def _write_shard(out: Path, index: int, tensors: dict[str, torch.Tensor], start: int, end: int) -> ShardInfo:
    from safetensors.torch import save_file

    name = shard_name(index)
    tmp = out / f".{name}.tmp-{os.getpid()}"
    # One metadata key only: safetensors writes the metadata map in hash order, so several keys
    # would make the bytes (and the sha256) of identical shards differ between processes.
    meta = json.dumps({"format": FORMAT, "prompt_start": start, "prompt_end": end}, sort_keys=True)
    save_file(tensors, str(tmp), metadata={"saegov": meta})
    os.chmod(tmp, 0o644)
    digest = sha256_file(tmp)
    os.replace(tmp, out / name)
    return ShardInfo(index=index, file=name, sha256=digest, rows=int(tensors["activations"].shape[0]),
                     prompt_start=start, prompt_end=end)


def _manifest(
    cfg: CollectConfig, params: CollectionParams, scheduler: Any, records: list[ShardRecord], n_shards: int
) -> ActivationManifest:
    records = sorted(records, key=lambda r: r.info.index)
    first = records[0] if records else None
    for r in records[1:]:
        if (r.d_in, r.spatial_shape, r.timesteps) != (first.d_in, first.spatial_shape, first.timesteps):
            raise CollectionError(f"shard {r.info.index} disagrees with shard {first.info.index} on shape or timesteps")
    return ActivationManifest(
        params=params,
        d_in=first.d_in if first else 1,
        spatial_shape=first.spatial_shape if first else (0, 0),
        scheduler_class=type(scheduler).__name__,
        scheduler_config={k: v for k, v in dict(scheduler.config).items() if not k.startswith("_")},
        unet_calls_per_prompt=first.unet_calls_per_prompt if first else 0,
        timesteps=first.timesteps if first else [],
        prompts=cfg.prompts,
        shards=[r.info for r in records],
        n_shards=n_shards,
        total_rows=sum(r.info.rows for r in records),
        complete=len(records) == n_shards,
    )


def collect(cfg: CollectConfig, progress: Progress | None = None, *, track: bool = False,
            actor: str | None = None) -> ActivationManifest:
    """Run the collection (or resume it); returns the manifest (complete on rank 0). With
    `track`, rank 0 records it as an MLflow run whose input is the collected dataset."""
    rank, world = dist_info()
    track = track and rank == 0
    if track:
        from governance.tracking.runs import check_tracking

        check_tracking()  # an unreachable server is refused before loading the model, not after hours
    device = cfg.device
    if world > 1 and device.startswith("cuda"):
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', rank))}"
    dtype = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[cfg.dtype]
    pipe, folder = load_pipeline(cfg.model, device=device, dtype=dtype)
    resolve_hook_point(pipe.unet, cfg.hook_point)  # a bad hook point fails before hashing GBs
    base_model_hash = model_folder_hash(folder)
    cfg = cfg.model_copy(update={"device": device})
    if not track:
        return collect_with_pipeline(pipe, base_model_hash, cfg, progress)
    return _tracked_collect(pipe, base_model_hash, cfg, progress, actor, world)


def _tracked_collect(pipe: Any, base_model_hash: str, cfg: CollectConfig, progress: Progress | None,
                     actor: str | None, world: int) -> ActivationManifest:
    import tempfile
    import time

    from governance.common.hashing import sha256_bytes
    from governance.tracking.runs import Tracker, activation_dataset_ref

    with Tracker("activation-collection", base_model_hash, run_name=f"collect {cfg.hook_point}", actor=actor,
                 tags={"saegov.hookpoint": cfg.hook_point, "saegov.activation_dataset": str(cfg.out.resolve())}) as tr:
        tr.log_params({"collect": cfg.model_dump(mode="json", exclude={"prompts"}), "n_prompts": len(cfg.prompts),
                       "prompts_sha256": prompts_sha256(cfg.prompts), "base_model_hash": base_model_hash,
                       "world_size": world})
        start = time.monotonic()
        collect_with_pipeline(pipe, base_model_hash, cfg, progress)
        seconds = time.monotonic() - start
        manifest, raw = read_activation_manifest(cfg.out)
        digest = sha256_bytes(raw)
        tr.log_params({"activation_dataset_sha256": digest, "resolved.height": manifest.params.height,
                       "resolved.width": manifest.params.width})
        tr.set_tags({"saegov.activation_dataset_sha256": digest})
        tr.log_metrics({"rows": manifest.total_rows, "shards": len(manifest.shards), "d_in": manifest.d_in,
                        "seconds": seconds, "rows_per_s": manifest.total_rows / max(seconds, 1e-9)})
        # The manifest by content (it names every shard's sha256): any machine can fetch it.
        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / "manifest.json").write_bytes(raw)
            tr.log_artifacts(tmp, "activations")
        # What `sae train` logs as its input too: the UI links the dataset's collection and trainings.
        tr.log_dataset_input(activation_dataset_ref(cfg.out, manifest, digest), "collection")
        return manifest


def collect_with_pipeline(pipe: Any, base_model_hash: str, cfg: CollectConfig,
                          progress: Progress | None = None) -> ActivationManifest:
    """`collect` on an already loaded pipeline whose weights hash to `base_model_hash`."""
    rank, world = dist_info()
    block = resolve_hook_point(pipe.unet, cfg.hook_point)
    vae_factor = 2 ** (len(pipe.vae.config.block_out_channels) - 1)
    default_px = int(pipe.unet.config.sample_size) * vae_factor
    cfg = cfg.model_copy(update={"height": cfg.height or default_px, "width": cfg.width or default_px})

    out = cfg.out
    out.mkdir(parents=True, exist_ok=True)
    params = CollectionParams(
        base_model=str(cfg.model), base_model_hash=base_model_hash, hook_point=cfg.hook_point,
        steps=cfg.steps, guidance=cfg.guidance, seed=cfg.seed, height=cfg.height, width=cfg.width,
        prompts_sha256=prompts_sha256(cfg.prompts), n_prompts=len(cfg.prompts),
        prompts_per_shard=cfg.prompts_per_shard,
    )
    if (out / MANIFEST_NAME).is_file():
        old = read_activation_manifest(out)[0].params
        if old.comparable() != params.comparable():
            diff = sorted(k for k, v in params.comparable().items() if old.comparable().get(k) != v)
            raise CollectionError(f"{str(out)!r} holds a different collection (differs in: {', '.join(diff)}); use another --out")
    _barrier(world)  # every rank has checked the old manifest before rank 0 may rewrite it

    n = len(cfg.prompts)
    P = cfg.prompts_per_shard
    n_shards = math.ceil(n / P)
    mine = [i for i in range(n_shards) if i % world == rank]
    total = sum(min((i + 1) * P, n) - i * P for i in mine)
    done = 0

    def tick(k: int) -> None:
        nonlocal done
        done += k
        if progress:
            progress(done, total)

    reader = TimestepReader(pipe.unet, name="saegov.collect.timestep")
    capture = _Capture(reader)
    records: dict[int, ShardRecord] = {}
    try:
        reader.attach()
        add_named_hook(block, "saegov.collect.capture", capture)
        for i in mine:
            start, end = i * P, min((i + 1) * P, n)
            rec = _shard_done(out, i)
            if rec is None:
                tensors, ts = _collect_shard(pipe, cfg, capture, start, end, tick)
                info = _write_shard(out, i, tensors, start, end)
                del tensors
                rec = ShardRecord(info=info, d_in=capture.d_in, spatial_shape=capture.spatial or (0, 0),
                                  timesteps=ts, unet_calls_per_prompt=len(ts))
                write_json_atomic(_record_path(out, i), rec.model_dump(mode="json"))
            else:
                tick(end - start)
            records[i] = rec
            if world == 1:  # progress is visible in the manifest; with several ranks only rank 0 merges
                write_activation_manifest(out, _manifest(cfg, params, pipe.scheduler, list(records.values()), n_shards))
    finally:
        remove_hooks(block, "saegov.collect.capture")
        reader.remove()

    _barrier(world)
    if rank == 0:
        all_records = [r for r in (_read_record(out, i) for i in range(n_shards)) if r is not None]
        manifest = _manifest(cfg, params, pipe.scheduler, all_records, n_shards)
        write_activation_manifest(out, manifest)
    _barrier(world)
    return read_activation_manifest(out)[0]


def _read_record(out: Path, index: int) -> ShardRecord | None:
    p = _record_path(out, index)
    return ShardRecord.model_validate_json(p.read_text()) if p.is_file() else None

