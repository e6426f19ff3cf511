"""Trains the toy world from scratch: the VAE first, then the UNet and text encoder together.

Every random draw is derived from (seed, step), so a run interrupted and resumed from its last
checkpoint continues exactly as an uninterrupted one would. The learning-rate schedule is fixed
at the start from the time budget (the measured step time), and stored in the checkpoint.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from governance.common.errors import GovernanceError
from governance.toyworld import model as tw
from governance.toyworld.grammar import ToyPrompt
from governance.toyworld.render import IMAGE_SIZE, random_concepts, render

Progress = Callable[[str, int, int, dict[str, float]], None]


@dataclass
class TrainConfig:
    seed: int = 0
    minutes: float = 40.0
    vae_steps: int = 500
    vae_batch: int = 32
    vae_lr: float = 1e-3
    pool_size: int = 24576
    batch: int = 64
    lr: float = 6e-4
    warmup: int = 100
    cfg_dropout: float = 0.1
    style_free_fraction: float = 0.25
    # Captions leave attributes out, as real ones do; the model learns each kind's neutral value.
    colour_free_fraction: float = 0.2
    shape_free_fraction: float = 0.2
    min_snr_gamma: float = 5.0
    high_noise_bias: float = 1.5  # t ~ 1000 * (1 - (1 - u)^bias): > 1 samples noisier steps more
    ema_decay: float = 0.999
    checkpoint_every_s: float = 120.0
    max_steps: int | None = None  # overrides the time budget (tests)
    extra: dict[str, object] = field(default_factory=dict)


def _gen(seed: int, *salt: int) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(hash((seed, *salt)) & 0x7FFF_FFFF_FFFF)
    return g


def _render_batch(rng: np.random.Generator, n: int, cfg: TrainConfig) -> tuple[np.ndarray, list[str]]:
    """Rendered images with their captions; an omitted attribute is rendered as its neutral value."""
    images, prompts = [], []
    for _ in range(n):
        colour, shape, style = random_concepts(rng)
        omit = rng.uniform(size=3) < (cfg.colour_free_fraction, cfg.shape_free_fraction, cfg.style_free_fraction)
        prompt = ToyPrompt(None if omit[0] else colour, None if omit[1] else shape, None if omit[2] else style)
        images.append(render(prompt.colour, prompt.shape, prompt.style, rng))
        prompts.append(prompt.text)
    return np.stack(images), prompts


def _to_tensor(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def _save_state(path: Path, tensors: dict[str, torch.Tensor], meta: dict[str, object]) -> None:
    """Atomic: write to temporaries, then rename, so a crash never leaves a half checkpoint."""
    path.mkdir(parents=True, exist_ok=True)
    tmp = path / "state.safetensors.tmp"
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp))
    tmp_meta = path / "state.json.tmp"
    tmp_meta.write_text(json.dumps(meta, indent=2, sort_keys=True))
    tmp.replace(path / "state.safetensors")
    tmp_meta.replace(path / "state.json")


def _optimizer_tensors(opt: torch.optim.Optimizer, prefix: str) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for gi, group in enumerate(opt.param_groups):
        for pi, p in enumerate(group["params"]):
            st = opt.state.get(p, {})
            for key in ("exp_avg", "exp_avg_sq", "step"):
                if key in st:
                    v = st[key]
                    out[f"{prefix}.{gi}.{pi}.{key}"] = v if torch.is_tensor(v) else torch.tensor(float(v))
    return out


def _load_optimizer(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], prefix: str) -> None:
    for gi, group in enumerate(opt.param_groups):
        for pi, p in enumerate(group["params"]):
            key = f"{prefix}.{gi}.{pi}"
            if f"{key}.exp_avg" in tensors:
                opt.state[p] = {
                    "exp_avg": tensors[f"{key}.exp_avg"].clone(),
                    "exp_avg_sq": tensors[f"{key}.exp_avg_sq"].clone(),
                    "step": tensors[f"{key}.step"].clone().float(),
                }


def _prefixed(module: torch.nn.Module, prefix: str) -> dict[str, torch.Tensor]:
    return {f"{prefix}.{k}": v for k, v in module.state_dict().items()}


def _unprefixed(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    n = len(prefix) + 1
    return {k[n:]: v for k, v in tensors.items() if k.startswith(prefix + ".")}


class CheckpointMismatch(GovernanceError):
    """A checkpoint made with another recipe: resuming it would mix two trainings."""


# Settings that only pace a run, not shape its result; they may change between resumptions.
_PACING = {"checkpoint_every_s", "minutes"}


class Trainer:
    def __init__(self, out: Path, cfg: TrainConfig, progress: Progress | None = None) -> None:
        self.out = out
        self.cfg = cfg
        self.progress = progress or (lambda stage, step, total, metrics: None)
        self.ckpt = out / "checkpoint"
        torch.manual_seed(cfg.seed)
        self.tokenizer = tw.build_tokenizer()
        self.vae = tw.build_vae()
        self.unet = tw.build_unet()
        self.text = tw.build_text_encoder(len(self.tokenizer))
        self.scheduler = tw.build_scheduler()
        self.alphas = self.scheduler.alphas_cumprod.float()
        self.losses: list[float] = []

    # ----------------------------------------------------------------- VAE
    def train_vae(self, start: int, state: dict[str, torch.Tensor] | None) -> None:
        cfg = self.cfg
        opt = torch.optim.AdamW(self.vae.parameters(), lr=cfg.vae_lr, weight_decay=0.0)
        if state is not None:
            _load_optimizer(opt, state, "vae_opt")
        self.vae.train()
        last_ckpt = time.monotonic()
        for step in range(start, cfg.vae_steps):
            rng = np.random.default_rng([cfg.seed, 1, step])
            images, _ = _render_batch(rng, cfg.vae_batch, cfg)
            x = _to_tensor(images)
            lr = cfg.vae_lr * 0.5 * (1 + math.cos(math.pi * step / cfg.vae_steps))
            for g in opt.param_groups:
                g["lr"] = lr
            torch.manual_seed(hash((cfg.seed, 2, step)) & 0x7FFF_FFFF)
            post = self.vae.encode(x).latent_dist
            recon = self.vae.decode(post.sample()).sample
            rec = F.mse_loss(recon, x) + 0.5 * F.l1_loss(recon, x)
            kl = post.kl().mean() / (tw.LATENT_CHANNELS * tw.LATENT_SIZE**2)
            loss = rec + 1e-4 * kl
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.vae.parameters(), 1.0)
            opt.step()
            self.progress("vae", step + 1, cfg.vae_steps, {"loss": rec.item()})
            if time.monotonic() - last_ckpt > cfg.checkpoint_every_s:
                self._checkpoint("vae", step + 1, {**_prefixed(self.vae, "vae"), **_optimizer_tensors(opt, "vae_opt")})
                last_ckpt = time.monotonic()
        self.vae.eval()

    # ------------------------------------------------------------- latents
    @torch.no_grad()
    def build_pool(self) -> tuple[torch.Tensor, torch.Tensor, float]:
        cfg = self.cfg
        rng = np.random.default_rng([cfg.seed, 3])
        latents, ids = [], []
        for start in range(0, cfg.pool_size, 512):
            n = min(512, cfg.pool_size - start)
            images, prompts = _render_batch(rng, n, cfg)
            latents.append(self.vae.encode(_to_tensor(images)).latent_dist.mean)
            ids.append(self._tokens(prompts))
            self.progress("encode", start + n, cfg.pool_size, {})
        lat = torch.cat(latents)
        scale = float(1.0 / lat.std())
        return lat * scale, torch.cat(ids), scale

    def _tokens(self, prompts: list[str]) -> torch.Tensor:
        return self.tokenizer(
            prompts, padding="max_length", max_length=tw.MAX_TOKENS, truncation=True, return_tensors="pt"
        ).input_ids

    # ---------------------------------------------------------------- UNet
    def train_unet(self, start: int, state: dict[str, torch.Tensor] | None, meta: dict[str, object]) -> None:
        cfg = self.cfg
        latents, ids, scale = self.build_pool()
        self.vae.register_to_config(scaling_factor=scale)
        empty = self._tokens([""])[0]
        params = list(self.unet.parameters()) + list(self.text.parameters())
        opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.01)
        ema = [p.detach().clone() for p in params]
        total = int(meta.get("unet_total_steps", 0)) or cfg.max_steps
        if state is not None and "ema.0" in state:
            _load_optimizer(opt, state, "opt")
            for i, e in enumerate(ema):
                e.copy_(state[f"ema.{i}"])
        self.unet.train()
        self.text.train()
        t_start = time.monotonic()
        last_ckpt = t_start
        step = start
        while total is None or step < total:
            g = _gen(cfg.seed, 4, step)
            idx = torch.randint(0, latents.shape[0], (cfg.batch,), generator=g)
            x0 = latents[idx]
            tok = ids[idx].clone()
            drop = torch.rand(cfg.batch, generator=g) < cfg.cfg_dropout
            tok[drop] = empty
            u = torch.rand(cfg.batch, generator=g)
            t = (1000 * (1 - (1 - u) ** cfg.high_noise_bias)).long().clamp(0, 999)
            noise = torch.randn(x0.shape, generator=g)
            a = self.alphas[t].view(-1, 1, 1, 1)
            xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
            lr = self._lr(step, total)
            for grp in opt.param_groups:
                grp["lr"] = lr
            cond = self.text(tok).last_hidden_state
            pred = self.unet(xt, t, cond).sample
            snr = self.alphas[t] / (1 - self.alphas[t])
            w = torch.clamp(snr, max=cfg.min_snr_gamma) / snr
            loss = (w * ((pred - noise) ** 2).mean(dim=(1, 2, 3))).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            decay = min(cfg.ema_decay, (1 + step) / (10 + step))
            with torch.no_grad():
                for e, p in zip(ema, params):
                    e.lerp_(p.detach(), 1 - decay)
            self.losses.append(loss.item())
            step += 1
            if total is None and step - start == 20:
                total = self._plan_total(step, time.monotonic() - t_start)
            meta["unet_total_steps"] = total or 0
            self.progress("unet", step, total or step + 1, {"loss": float(np.mean(self.losses[-50:]))})
            if time.monotonic() - last_ckpt > cfg.checkpoint_every_s:
                self._checkpoint_unet(step, opt, ema, meta)
                last_ckpt = time.monotonic()
        with torch.no_grad():
            for e, p in zip(ema, params):
                p.copy_(e)
        self.unet.eval()
        self.text.eval()

    def _plan_total(self, steps_done: int, seconds: float) -> int:
        if self.cfg.max_steps is not None:
            return self.cfg.max_steps
        per_step = seconds / 20
        return max(steps_done + 1, int(self.cfg.minutes * 60 / per_step))

    def _lr(self, step: int, total: int | None) -> float:
        cfg = self.cfg
        if step < cfg.warmup:
            return cfg.lr * (step + 1) / cfg.warmup
        if total is None:
            return cfg.lr
        frac = min(1.0, (step - cfg.warmup) / max(1, total - cfg.warmup))
        return cfg.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * frac)))

    # ----------------------------------------------------------- checkpoints
    def _checkpoint(self, stage: str, step: int, tensors: dict[str, torch.Tensor], meta: dict[str, object] | None = None) -> None:
        info = {"stage": stage, "step": step, "config": asdict(self.cfg), **(meta or {})}
        _save_state(self.ckpt, tensors, info)

    def _checkpoint_unet(self, step: int, opt: torch.optim.Optimizer, ema: list[torch.Tensor], meta: dict[str, object]) -> None:
        tensors = {
            **_prefixed(self.vae, "vae"),
            **_prefixed(self.unet, "unet"),
            **_prefixed(self.text, "text"),
            **_optimizer_tensors(opt, "opt"),
            **{f"ema.{i}": e for i, e in enumerate(ema)},
        }
        self._checkpoint("unet", step, tensors, {"unet_total_steps": meta.get("unet_total_steps", 0), "vae_scaling_factor": self.vae.config.scaling_factor})

    def run(self) -> Path:
        stage, step, state, meta = "vae", 0, None, {}
        if (self.ckpt / "state.json").exists():
            meta = json.loads((self.ckpt / "state.json").read_text())
            ours, theirs = asdict(self.cfg), dict(meta.get("config", {}))
            differ = sorted(k for k in (set(ours) | set(theirs)) - _PACING if ours.get(k) != theirs.get(k))
            if differ:
                raise CheckpointMismatch(
                    f"the checkpoint in {self.ckpt} was made with another recipe ({', '.join(differ)} differ): "
                    "resume with the same settings, or train into another --out")
            state = load_file(str(self.ckpt / "state.safetensors"))
            stage, step = str(meta["stage"]), int(meta["step"])
            self.vae.load_state_dict(_unprefixed(state, "vae"))
            if stage == "unet" and any(k.startswith("unet.") for k in state):
                self.unet.load_state_dict(_unprefixed(state, "unet"))
                self.text.load_state_dict(_unprefixed(state, "text"))
        if stage == "vae":
            self.train_vae(step, state)
            self._checkpoint("unet", 0, _prefixed(self.vae, "vae"))
            step, state = 0, None
        t0 = time.monotonic()
        self.train_unet(step, state, meta)
        self.train_seconds = time.monotonic() - t0
        return self.save()

    def save(self) -> Path:
        pipe = tw.assemble_pipeline(self.unet, self.vae, self.text, self.tokenizer)
        final = self.out / "pipeline"
        tmp = self.out / "pipeline.tmp"
        pipe.save_pretrained(str(tmp), safe_serialization=True)
        tw.write_model_card(
            tmp,
            {
                "image_size": IMAGE_SIZE,
                "config": asdict(self.cfg),
                "final_loss": float(np.mean(self.losses[-200:])) if self.losses else None,
            },
        )
        if final.exists():
            import shutil

            shutil.rmtree(final)
        tmp.replace(final)
        return final
