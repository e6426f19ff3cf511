"""TopK SAE (SAEURON.md section 2) in the reference checkpoint layout.

    z = TopK_k(ReLU(W_enc (x - b_dec) + b_enc)),   x_hat = z W_dec + b_dec

Two sparsity rules, deliberately separate methods: `encode_batch_topk` (training: top k*N over a
batch of N tokens) and `encode` / `encode_dense` / `forward` (per-token TopK: inference,
statistics, enforcement).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from governance.common.errors import FormatError, GovernanceError
from governance.common.hashing import sha256_file
from governance.formats.sae_config import CFG_NAME, WEIGHTS_NAME, SaeConfig, read_sae_config, write_sae_config


class SaeLoadError(GovernanceError):
    """An SAE folder that is missing, malformed, or does not match its expected hash."""


class TopKSAE(nn.Module):
    def __init__(self, cfg: SaeConfig, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__()
        unsupported = [f for f in ("input_unit_norm", "sample_topk") if getattr(cfg, f)]
        if unsupported:
            # Each changes what x_hat means (and the intervention algebra); refuse, never ignore.
            raise SaeLoadError(f"unsupported SAE options: {', '.join(unsupported)}")
        self.cfg = cfg
        d, n = cfg.d_in, cfg.n_latents
        self.encoder = nn.Linear(d, n, device=device, dtype=dtype)
        self.encoder.bias.data.zero_()
        # Decoder starts as the encoder's transpose (rows = latents), unit-norm rows.
        self.W_dec = nn.Parameter(self.encoder.weight.data.clone())
        self.b_dec = nn.Parameter(torch.zeros(d, device=device, dtype=dtype))
        if cfg.normalize_decoder:
            self.set_decoder_norm_to_unit_norm()

    # --- shapes -------------------------------------------------------------------------------
    @property
    def d_in(self) -> int:
        return self.cfg.d_in

    @property
    def n_latents(self) -> int:
        return self.cfg.n_latents

    @property
    def k(self) -> int:
        return self.cfg.k

    # --- encode / decode ------------------------------------------------------------------------
    def pre_acts(self, x: Tensor) -> Tensor:
        x = x.to(self.W_dec.dtype)
        return torch.relu(self.encoder(x - self.b_dec))

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Per-token TopK: (values [N, k], indices [N, k])."""
        return self.pre_acts(x).topk(self.k, dim=-1, sorted=False)

    def encode_dense(self, x: Tensor) -> Tensor:
        vals, idx = self.encode(x)
        z = torch.zeros(*vals.shape[:-1], self.n_latents, dtype=vals.dtype, device=vals.device)
        return z.scatter_(-1, idx, vals)

    def encode_batch_topk(self, x: Tensor) -> Tensor:
        """Training rule: keep the top k*N pre-activations over the whole batch, dense [N, n]."""
        return batch_topk(self.pre_acts(x), self.k)

    def decode(self, z_dense: Tensor) -> Tensor:
        return z_dense @ self.W_dec + self.b_dec

    def decode_sparse(self, values: Tensor, indices: Tensor) -> Tensor:
        """Same as `decode` of the scattered code, without materialising [N, n]."""
        return torch.einsum("nk,nkd->nd", values, self.W_dec[indices]) + self.b_dec

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        z = self.encode_dense(x)
        return self.decode(z), z

    # --- decoder constraint -------------------------------------------------------------------
    @torch.no_grad()
    def set_decoder_norm_to_unit_norm(self) -> None:
        norm = self.W_dec.norm(dim=1, keepdim=True)
        self.W_dec.data /= norm.clamp_min(torch.finfo(self.W_dec.dtype).eps)

    @torch.no_grad()
    def remove_gradient_parallel_to_decoder_directions(self) -> None:
        """Project each decoder row's gradient onto the row's tangent space, so the step (mostly)
        keeps the unit norm and the renormalisation after it only corrects second-order drift."""
        if self.W_dec.grad is None:
            return
        parallel = (self.W_dec.grad * self.W_dec.data).sum(dim=1, keepdim=True)
        self.W_dec.grad -= parallel * self.W_dec.data

    # --- folders ------------------------------------------------------------------------------
    def save(self, folder: str | Path) -> str:
        """Write `cfg.json` + `sae.safetensors` (fp32, reference tensor names); return the
        sha256 of `sae.safetensors`."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        tensors = {
            "encoder.weight": self.encoder.weight,
            "encoder.bias": self.encoder.bias,
            "W_dec": self.W_dec,
            "b_dec": self.b_dec,
        }
        tensors = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in tensors.items()}
        save_file(tensors, str(folder / WEIGHTS_NAME))
        write_sae_config(folder, self.cfg)
        return sha256_file(folder / WEIGHTS_NAME)

    @classmethod
    def load(cls, folder: str | Path, expected_sha256: str | None = None,
             device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> TopKSAE:
        """Load a reference-layout folder; safetensors only (never pickle). With
        `expected_sha256`, refuse unless `sae.safetensors` hashes to it."""
        folder = Path(folder)
        cfg_path, weights_path = folder / CFG_NAME, folder / WEIGHTS_NAME
        for p in (cfg_path, weights_path):
            if not p.is_file():
                raise SaeLoadError(f"{folder}: missing {p.name}")
        if expected_sha256 is not None:
            actual = sha256_file(weights_path)
            if actual != expected_sha256.strip().lower():
                raise SaeLoadError(
                    f"{weights_path}: sha256 mismatch (expected {expected_sha256[:12]}, got {actual[:12]}); "
                    "refusing to load"
                )
        try:
            cfg, _ = read_sae_config(folder)
        except FormatError as exc:
            raise SaeLoadError(f"invalid config: {exc}") from None
        try:
            tensors = load_file(str(weights_path), device="cpu")
        except Exception as exc:  # safetensors raises its own error types for corrupt files
            raise SaeLoadError(f"{weights_path}: not a readable safetensors file ({exc})") from None
        expected = cfg.weight_shapes()
        for name, shape in expected.items():
            if name not in tensors:
                raise SaeLoadError(f"{weights_path}: missing tensor {name!r}")
            if tuple(tensors[name].shape) != shape:
                raise SaeLoadError(f"{weights_path}: tensor {name!r} has shape {list(tensors[name].shape)}, "
                                   f"cfg.json implies {list(shape)}")
            if not tensors[name].is_floating_point():
                raise SaeLoadError(f"{weights_path}: tensor {name!r} is not floating point")
        sae = cls(cfg, device="meta")  # skip a pointless random init of the full-size weights
        state: dict[str, Any] = {k: tensors[k] for k in expected}
        sae.load_state_dict(state, assign=True)
        return sae.to(device=device, dtype=dtype or torch.float32)


def batch_topk_indices(flat: Tensor, m: int) -> Tensor:
    """Flat indices of the m largest entries of `flat`, in increasing order (ties at the m-th
    value go to the lowest indices).

    A full topk over N*n entries is slow on CPU (~0.2 s for 4096 x 1024). Exact shortcut: a
    lower bound for the m-th value from a random sample's quantile (with a safety margin)
    leaves a small candidate set (in index order) that still contains all m winners; the m-th
    largest candidate (a linear-time selection, not a sort) is the threshold, and the winners
    are read off in index order, so a CSR code needs no sort. Falls back to the whole tensor
    when the bound turns out too high."""
    n = flat.numel()
    if m >= n:
        return torch.arange(n, device=flat.device)
    if bool(torch.isnan(flat.sum())):  # NaN ranks highest in topk, but no comparison below selects it
        return flat.topk(m, sorted=False).indices.sort().values
    cand = None
    if n > (1 << 16):
        sample = flat[torch.randint(n, (1 << 14,), device=flat.device)]
        # ~2x the needed entries: the sample quantile's error is ~16x smaller than that margin at
        # k/n_latents = 1/32 (the rare miss falls back to the whole tensor, still exact).
        q = max(0.0, 1.0 - 2.0 * m / n)
        lo = torch.quantile(sample.float(), q).to(flat.dtype)
        cand = (flat >= lo).nonzero().squeeze(1)
        if cand.numel() < m:
            cand = None
    values = flat if cand is None else flat[cand]
    threshold = torch.kthvalue(values.float(), values.numel() - m + 1).values.to(flat.dtype)
    keep = values > threshold
    missing = m - int(keep.sum())
    if missing > 0:  # entries equal to the threshold fill the rest, lowest index first
        keep[(values == threshold).nonzero().squeeze(1)[:missing]] = True
    pos = keep.nonzero().squeeze(1)
    return pos if cand is None else cand[pos]


def batch_topk(pre_acts: Tensor, k: int) -> Tensor:
    """Keep the k*N largest entries of [N, n], zero the rest (dense)."""
    flat = pre_acts.flatten()
    m = k * pre_acts.shape[0]
    if m >= flat.numel():
        return pre_acts.clone()
    idx = batch_topk_indices(flat, m)
    return torch.zeros_like(flat).scatter_(0, idx, flat[idx]).view_as(pre_acts)
