"""Training a TopK SAE on an activation dataset, exactly SAEURON.md section 2:

- Batch-TopK during training (top k*N over the batch), per-token TopK for the final metrics;
- FVU loss + AuxK (latents silent for `dead_tokens` tokens reconstruct the residual with their
  top k_aux = d_in/2 pre-activations; weight 1/32);
- unit-norm decoder rows: gradient component parallel to each row removed before the step,
  rows renormalised after it; decoder initialised as the encoder's copy; b_dec = geometric
  median (Weiszfeld) of the first batch; encoder bias zero;
- Adam fp32 (eps 6.25e-10), linear decay to 0, grad-norm clip 1.0, 4096 tokens per step.

Data-parallel under `torchrun`: each rank streams a disjoint slice of every shard, gradients are
all-reduced by hand (simpler than DDP around the decoder-gradient surgery), rank 0 alone
reports. `batch_tokens` is the global batch, split over ranks.
"""
from __future__ import annotations

import math
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor

from governance.common.errors import GovernanceError
from governance.formats.sae_config import SaeConfig
from governance.sae.data import ActivationDataset, iter_batches, read_prompt_index, read_shard
from governance.sae.model import TopKSAE, batch_topk_indices
from governance.sae.supervision import (
    SupervisionTargets, forbidden, inference_firing, init_dedicated, supervision_losses,
)

REFERENCE_LATENTS = 20_480  # 1280 x 16: the width the reference lr 4e-4 was tuned for
REFERENCE_DEAD_TOKENS = 10_000_000

StepCallback = Callable[[int, int, dict[str, float]], None]


class TrainRefused(GovernanceError):
    """A training request refused before any work (bad output folder, a dataset too small ...)."""


class TrainConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    expansion_factor: int = Field(default=16, gt=0)
    num_latents: int = Field(default=0, ge=0)
    k: int = Field(default=32, gt=0)
    epochs: int = Field(default=5, gt=0)
    lr: float | None = Field(default=None, gt=0, description="None: 4e-4 * sqrt(20480 / n_latents)")
    batch_tokens: int = Field(default=4096, gt=0, description="global, over all ranks")
    adam_eps: float = 6.25e-10
    adam_betas: tuple[float, float] = (0.9, 0.999)
    grad_clip: float = 1.0
    auxk_alpha: float = 1 / 32
    k_aux: int | None = Field(default=None, description="None: d_in // 2")
    dead_tokens: int | None = Field(default=None, description="None: min(10M, total training tokens / 20)")
    warmup_steps: int = Field(default=0, ge=0)
    seed: int = 0
    buffer_tokens: int = Field(default=1 << 20, gt=0, description="shuffle buffer, rows per rank")
    eval_tokens: int = Field(default=1 << 18, gt=0, description="rows for the final per-token metrics")
    device: str | None = None

    def sae_config(self, d_in: int, hookpoint: str | None = None) -> SaeConfig:
        return SaeConfig(d_in=d_in, expansion_factor=self.expansion_factor, num_latents=self.num_latents,
                         k=self.k, batch_topk=True, normalize_decoder=True, hookpoint=hookpoint)

    def resolved_lr(self, n_latents: int) -> float:
        # sparsify's 1/sqrt(width) rule, anchored at the reference's 4e-4 for 20,480 latents.
        return self.lr if self.lr is not None else 4e-4 * math.sqrt(REFERENCE_LATENTS / n_latents)

    def resolved_dead_tokens(self, total_train_tokens: int) -> int:
        if self.dead_tokens is not None:
            return self.dead_tokens
        # 10M tokens is ~0.2 % of the reference run; a small dataset would never reach it, so
        # scale it down to 5 % of the run, but never below one batch.
        return max(self.batch_tokens, min(REFERENCE_DEAD_TOKENS, total_train_tokens // 20))


@dataclass
class TrainResult:
    sae: TopKSAE
    config: TrainConfig
    lr: float
    dead_tokens: int
    steps: int
    tokens: int
    seconds: float
    final: dict[str, float]
    history: list[dict[str, float]] = field(default_factory=list)

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / max(self.seconds, 1e-9)


# --- math ---------------------------------------------------------------------------------------

@torch.no_grad()
def geometric_median(points: Tensor, max_iter: int = 100, tol: float = 1e-6) -> Tensor:
    """Weiszfeld's algorithm: the point minimising the sum of Euclidean distances."""
    points = points.float()
    guess = points.mean(0)
    for _ in range(max_iter):
        prev = guess
        w = 1.0 / (points - guess).norm(dim=1).clamp_min(1e-8)
        guess = (w[:, None] * points).sum(0) / w.sum()
        if (guess - prev).norm() <= tol * max(1.0, prev.norm().item()):
            break
    return guess


def fvu(x: Tensor, x_hat: Tensor) -> Tensor:
    return (x_hat - x).pow(2).sum() / (x - x.mean(0)).pow(2).sum().clamp_min(1e-12)


def explained_variance(x: Tensor, x_hat: Tensor) -> Tensor:
    """1 - Var(residual) / Var(x), both summed over dimensions (residual mean removed, unlike FVU)."""
    return 1 - (x - x_hat).var(0).sum() / x.var(0).sum().clamp_min(1e-12)


def _csr(crow: Tensor, col: Tensor, values: Tensor, shape: tuple[int, int]) -> Tensor:
    # Built from indices we just computed (sorted, in range): the invariant check would only cost.
    # The CSR layout is "beta" in torch; the products used here are tested against the dense
    # definition (tests/governance/sae/test_trainer.py), so its notice is only noise.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta", category=UserWarning)
        return torch.sparse_csr_tensor(crow, col, values, shape, check_invariants=False)


def _crow(sorted_rows: Tensor, n_rows: int) -> Tensor:
    counts = torch.bincount(sorted_rows, minlength=n_rows)
    return torch.cat([counts.new_zeros(1), counts.cumsum(0)])


class _BatchTopKCode(torch.autograd.Function):
    """x_hat - b_dec = S W_dec, S = the Batch-TopK code (k*N selected entries of
    ReLU(x_c W_enc^T + b_enc)) as a CSR matrix.

    After the one dense product (the encoder's forward), everything touches only the selected
    entries: the decode and all four gradients are sparse-dense products (CSR by rows, and by
    latents for the weight gradients), and the code's gradient is the sampled product
    (G W_dec^T) at the selected entries. Exactly the gradients of the dense definition (tested),
    without the [N, n] gather / index_add traffic that dominated a step before."""

    @staticmethod
    def forward(ctx, x_c: Tensor, w_enc: Tensor, b_enc: Tensor, w_dec: Tensor, m: int,  # type: ignore[override]
                forbid: tuple[Tensor, Tensor] | None = None):
        n_tok, n = x_c.shape[0], w_enc.shape[0]
        pre = torch.addmm(b_enc, x_c, w_enc.t())
        saved = None
        if forbid is not None:
            # Supervision: a concept's dedicated latents never enter the code of a row whose
            # prompt lacks the concept, and always enter (with their own value, zero when
            # negative) the code of a row whose prompt has it. Finite extremes, so that the
            # selection's NaN guard does not see inf - inf.
            cols_f, mask = forbid
            saved = pre[:, cols_f]  # advanced indexing: already a copy
            pre[:, cols_f] = torch.where(mask, -1e30, 1e30).to(pre.dtype)
        flat = pre.view(-1)
        idx = batch_topk_indices(flat, m)  # in increasing order: CSR rows without a sort
        if saved is not None:
            pre[:, forbid[0]] = saved
        vals = flat[idx].clamp_min(0)
        rows, cols = idx // n, idx % n
        crow = _crow(rows, n_tok)
        x_hat = _csr(crow, cols, vals, (n_tok, n)) @ w_dec
        ctx.save_for_backward(x_c, w_enc, w_dec, rows, cols, vals, crow)
        # The code's values stay differentiable: the supervision's decorrelation loss is a
        # function of them (its gradient joins the decode's in backward).
        ctx.mark_non_differentiable(cols, rows)
        return x_hat, vals, cols, rows

    @staticmethod
    def backward(ctx, g: Tensor, g_vals: Tensor | None, _gc: Tensor, _gr: Tensor):  # type: ignore[override]
        x_c, w_enc, w_dec, rows, cols, vals, crow = ctx.saved_tensors
        n_tok, n = x_c.shape[0], w_enc.shape[0]
        g = g.contiguous()
        by_latent = torch.argsort(cols, stable=True)
        ccol = _crow(cols[by_latent], n)
        rows_t = rows[by_latent]
        grad_w_dec = _csr(ccol, rows_t, vals[by_latent], (n, n_tok)) @ g
        pattern = _csr(crow, cols, vals, (n_tok, n))
        gv = torch.sparse.sampled_addmm(pattern, g, w_dec.t(), beta=0.0).values()
        if g_vals is not None:
            gv = gv + g_vals
        gpre = gv * (vals > 0)
        grad_x_c = _csr(crow, cols, gpre, (n_tok, n)) @ w_enc
        grad_w_enc = _csr(ccol, rows_t, gpre[by_latent], (n, n_tok)) @ x_c
        grad_b_enc = torch.zeros(n, dtype=gpre.dtype, device=gpre.device).index_add_(0, cols, gpre)
        return grad_x_c, grad_w_enc, grad_b_enc, grad_w_dec, None, None


def sae_losses(sae: TopKSAE, x: Tensor, dead_mask: Tensor | None, k_aux: int,
               sup: SupervisionTargets | None = None, y: Tensor | None = None,
               ) -> tuple[Tensor, Tensor, Tensor, Tensor, dict[str, Tensor]]:
    """(fvu, auxk, active latent ids (one per non-zero activation), x_hat) on one batch with
    the Batch-TopK rule.

    Sparse in both directions (_BatchTopKCode): the top k*N entries are selected on the pre-ReLU
    encoder output (ReLU is monotone, so the selection is the same) and decoded, and
    differentiated, as a sparse matrix; no dense [N, n] tensor enters autograd. AuxK computes
    the dead latents' pre-activations alone (cost proportional to how many are dead)."""
    n_tok, n = x.shape[0], sae.n_latents
    x_c = x.to(sae.W_dec.dtype) - sae.b_dec
    m = min(sae.k * n_tok, n_tok * n)
    forbid = forbidden(sup, y) if sup is not None and y is not None else None
    x_hat_c, vals, cols, rows = _BatchTopKCode.apply(x_c, sae.encoder.weight, sae.encoder.bias, sae.W_dec, m, forbid)
    x_hat = x_hat_c + sae.b_dec
    total_var = (x - x.mean(0)).pow(2).sum().clamp_min(1e-12)
    loss_fvu = (x_hat - x).pow(2).sum() / total_var
    auxk = x.new_zeros(())
    if dead_mask is not None and (n_dead := int(dead_mask.sum())) > 0:
        # Dead latents' top pre-activations (per token) try to explain what the live ones missed;
        # the residual is a target, not a path for gradients into the live latents.
        ka = min(k_aux, n_dead)
        dead = dead_mask.nonzero().squeeze(1)
        pre = torch.relu(torch.addmm(sae.encoder.bias[dead], x_c, sae.encoder.weight[dead].t()))
        dvals, dpos = pre.topk(ka, dim=-1, sorted=False)
        # A weighted sum of ka decoder rows per token: embedding_bag's backward accumulates the
        # rows' gradients without the [N, ka, d] gather an einsum would differentiate through.
        e_hat = torch.nn.functional.embedding_bag(dpos, sae.W_dec[dead], per_sample_weights=dvals, mode="sum")
        residual = (x - x_hat).detach()
        scale = min(n_dead / k_aux, 1.0)  # fewer dead latents than k_aux: a weaker signal
        auxk = scale * (e_hat - residual).pow(2).sum() / total_var
    extra: dict[str, Tensor] = {}
    if sup is not None and y is not None:
        extra["assign_loss"], extra["decorrelation_loss"] = supervision_losses(
            x_c, sae.encoder.weight, sae.encoder.bias, rows, cols, vals, y, sup, total_var)
    return loss_fvu, auxk, cols[vals > 0], x_hat, extra


# --- distributed ----------------------------------------------------------------------------------

def dist_info() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def init_distributed_from_env() -> bool:
    """Join the torchrun process group if launched by torchrun; True if we created it."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return False
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend=backend)
    return True


def _all_reduce_grads(params: list[torch.nn.Parameter], world: int) -> None:
    grads = [p.grad for p in params if p.grad is not None]
    flat = torch.cat([g.flatten() for g in grads])
    dist.all_reduce(flat)
    flat /= world
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()


def _default_device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


# --- training -------------------------------------------------------------------------------------

def train_sae(ds: ActivationDataset, cfg: TrainConfig, on_step: StepCallback | None = None,
              supervision: SupervisionTargets | None = None) -> TrainResult:
    """Train on `ds`; call `on_step(step, total_steps, metrics)` on rank 0 after every step.
    With `supervision` (governance.sae.supervision), its concepts' latents are trained as theirs."""
    rank, world = dist_info()
    device = torch.device(cfg.device) if cfg.device else _default_device()
    torch.manual_seed(cfg.seed)
    sae_cfg = cfg.sae_config(ds.d_in, ds.hookpoint)
    sae = TopKSAE(sae_cfg, device=device, dtype=torch.float32)
    n = sae_cfg.n_latents
    lr = cfg.resolved_lr(n)
    k_aux = cfg.k_aux or max(1, ds.d_in // 2)
    sup = supervision.to(device) if supervision is not None else None

    per_rank = cfg.batch_tokens // world
    if per_rank < 1:
        raise TrainRefused(f"batch of {cfg.batch_tokens} tokens cannot be split over {world} ranks")
    rows_min = min(ds.rows_for_rank(r, world) for r in range(world))
    steps_per_epoch = rows_min // per_rank
    if steps_per_epoch == 0:
        raise TrainRefused(f"dataset has {ds.total_rows} rows, fewer than one batch of {cfg.batch_tokens} tokens")
    total_steps = steps_per_epoch * cfg.epochs
    global_batch = per_rank * world
    dead_tokens = cfg.resolved_dead_tokens(total_steps * global_batch)

    opt = torch.optim.Adam(sae.parameters(), lr=lr, eps=cfg.adam_eps, betas=cfg.adam_betas)

    def lr_factor(step: int) -> float:
        if cfg.warmup_steps and step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        return max(0.0, 1.0 - step / total_steps)  # linear decay to 0 over the run

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor)
    since_fired = torch.zeros(n, dtype=torch.long, device=device)
    params = list(sae.parameters())
    history: list[dict[str, float]] = []
    step = 0
    t0 = time.perf_counter()
    for epoch in range(cfg.epochs):
        batches = iter_batches(ds, per_rank, steps_per_epoch, epoch, cfg.seed, rank, world, cfg.buffer_tokens,
                               with_prompt_index=sup is not None)
        for item in batches:
            xb, y = (item[0], sup.labels[item[1].to(device)]) if sup is not None else (item, None)
            x = xb.to(device=device, dtype=torch.float32, non_blocking=True)
            if step == 0:
                _init_b_dec(sae, x, world, sup, y)
            dead_mask = since_fired > dead_tokens
            if sup is not None:
                # A dedicated latent is the assignment's to train: AuxK would fit it on every
                # row, other concepts' included.
                dead_mask[sup.latents.reshape(-1)] = False
            loss_fvu, auxk, active, x_hat, sup_losses = sae_losses(sae, x, dead_mask, k_aux, sup, y)
            loss = loss_fvu + cfg.auxk_alpha * auxk
            if sup is not None:
                loss = (loss + sup.assign_weight * sup_losses["assign_loss"]
                        + sup.decorrelation_weight * sup_losses["decorrelation_loss"])
                if not bool(torch.isfinite(loss)):
                    raise TrainRefused(f"the supervised loss is not finite at step {step}; lower the weights")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if world > 1:
                _all_reduce_grads(params, world)
            sae.remove_gradient_parallel_to_decoder_directions()
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            cur_lr = opt.param_groups[0]["lr"]
            opt.step()
            sched.step()
            sae.set_decoder_norm_to_unit_norm()
            with torch.no_grad():
                fired = torch.bincount(active, minlength=n) > 0
                if world > 1:
                    fired_i = fired.to(torch.int32)
                    dist.all_reduce(fired_i, op=dist.ReduceOp.MAX)
                    fired = fired_i.bool()
                since_fired += global_batch
                since_fired[fired] = 0
            step += 1
            if rank == 0:
                with torch.no_grad():
                    m = {
                        "fvu": float(loss_fvu),
                        "auxk_loss": float(auxk),
                        "l0": active.numel() / x.shape[0],
                        "dead_pct": 100.0 * float((since_fired > dead_tokens).float().mean()),
                        "explained_variance": float(explained_variance(x, x_hat)),
                        "lr": cur_lr,
                        "epoch": float(epoch),
                        **{name: float(v) for name, v in sup_losses.items()},
                    }
                history.append(m)
                if on_step is not None:
                    on_step(step, total_steps, m)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - t0
    final: dict[str, float] = {}
    if rank == 0:
        final = sae_metrics(sae, ds, cfg.eval_tokens)
        final["train_dead_pct"] = 100.0 * float((since_fired > dead_tokens).float().mean())
        final["train_fvu_last"] = history[-1]["fvu"]
        final["tokens_per_s"] = step * global_batch / max(seconds, 1e-9)
        if sup is not None:
            final.update(_supervision_metrics(sae, ds, sup, cfg.eval_tokens))
    return TrainResult(sae=sae, config=cfg, lr=lr, dead_tokens=dead_tokens, steps=step,
                       tokens=step * global_batch, seconds=seconds, final=final, history=history)


def _init_b_dec(sae: TopKSAE, x: Tensor, world: int, sup: SupervisionTargets | None = None,
                y: Tensor | None = None) -> None:
    with torch.no_grad():
        sae.b_dec.data.copy_(geometric_median(x).to(sae.b_dec.dtype))
        if sup is not None and y is not None:
            init_dedicated(sae, x.to(sae.W_dec.dtype) - sae.b_dec, y, sup)
        if world > 1:
            # One model on every rank: rank 0's first batch and initial weights win.
            for p in sae.parameters():
                dist.broadcast(p.data, src=0)


@torch.no_grad()
def _supervision_metrics(sae: TopKSAE, ds: ActivationDataset, sup: SupervisionTargets, max_tokens: int) -> dict[str, float]:
    """Where each concept's latents fire under the inference rule, on the same strided rows as
    `sae_metrics`."""
    stride = max(1, math.ceil(ds.total_rows / max_tokens))
    x = torch.cat([read_shard(p, r, ds.d_in)[::stride] for p, r in ds.shards])
    pidx = torch.cat([read_prompt_index(p, r)[::stride] for p, r in ds.shards])
    device = sae.W_dec.device
    return inference_firing(sae, x.to(device=device, dtype=torch.float32), sup.labels[pidx.to(device)], sup)


@torch.no_grad()
def sae_metrics(sae: TopKSAE, ds: ActivationDataset, max_tokens: int, chunk: int = 8192) -> dict[str, float]:
    """Per-token TopK (the inference rule) metrics on up to `max_tokens` rows, taken with an
    even stride from every shard: fvu, explained variance, l0, and dead % = latents that never
    fired on those rows."""
    device = sae.W_dec.device
    stride = max(1, math.ceil(ds.total_rows / max_tokens))
    xs = [read_shard(p, r, ds.d_in)[::stride] for p, r in ds.shards]
    x_all = torch.cat(xs)
    sq_err = 0.0
    s1 = torch.zeros(ds.d_in, dtype=torch.float64, device=device)
    s2 = torch.zeros((), dtype=torch.float64, device=device)
    r1 = torch.zeros(ds.d_in, dtype=torch.float64, device=device)
    r2 = torch.zeros((), dtype=torch.float64, device=device)
    fired = torch.zeros(sae.n_latents, dtype=torch.bool, device=device)
    l0 = 0.0
    for i in range(0, x_all.shape[0], chunk):
        x = x_all[i:i + chunk].to(device=device, dtype=torch.float32)
        vals, idx = sae.encode(x)
        x_hat = sae.decode_sparse(vals, idx)
        res = (x - x_hat).double()
        sq_err += float(res.pow(2).sum())
        s1 += x.double().sum(0)
        s2 += x.double().pow(2).sum()
        r1 += res.sum(0)
        r2 += res.pow(2).sum()
        active = vals > 0
        fired[idx[active]] = True
        l0 += float(active.sum())
    n = x_all.shape[0]
    total_var = float(s2 - s1.pow(2).sum() / n)
    res_var = float(r2 - r1.pow(2).sum() / n)
    return {
        "fvu": sq_err / max(total_var, 1e-12),
        "explained_variance": 1.0 - res_var / max(total_var, 1e-12),
        "l0": l0 / n,
        "dead_pct": 100.0 * float((~fired).float().mean()),
        "eval_tokens": float(n),
    }
