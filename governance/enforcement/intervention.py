"""The SAeUron intervention as named, removable hooks on any SD 1.x diffusers pipeline.

For each UNet call, on the hooked block's output (both CFG halves, every token):

    z  = TopK_k(ReLU(W_enc (x - b_dec) + b_enc))          per-token TopK
    z'_i = z_i * s_i  where z_i > g_i (i in F_t), else z_i
    out  = x + (z' - z) W_dec                               faithful: the SAE's error is kept

Only the selected features' decoder rows are used (a sparse update). The reference code's
`x_hat' + (x_hat - x)` (which is `2 x_hat - x` when nothing fires) is available only as the
explicit `error_mode="reference"`.

Timesteps: the UNet's own `timestep` argument is read by a forward pre-hook. A call whose
timestep was not scored uses each mapping's nearest scored timestep (`schedule="nearest"`, the
default, recorded in the trace), or is refused (`schedule="strict"`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from governance.enforcement.spec import BlocklistSpec
from governance.hooks import TimestepReader, add_named_hook, block_output_map, from_tokens, remove_hooks, resolve_hook_point, to_tokens
from governance.sae.model import TopKSAE

HOOK_PREFIX = "saegov.enforce"
ATTR = "_saegov_enforcer"
ErrorMode = Literal["faithful", "reference"]
Schedule = Literal["nearest", "strict"]


class EnforcementError(RuntimeError):
    pass


@dataclass
class Blocklist:
    """A blocklist spec together with the SAE its feature IDs refer to."""

    spec: BlocklistSpec
    sae: TopKSAE

    @classmethod
    def load(cls, folder: str | Path, expected_sae_sha256: str | None = None) -> Blocklist:
        """From a deployment's `saegov/` folder (blocklist.json + sae/)."""
        folder = Path(folder)
        spec = BlocklistSpec.model_validate_json((folder / "blocklist.json").read_text())
        sae = TopKSAE.load(folder / "sae", expected_sha256=expected_sae_sha256 or spec.sae.weights_sha256)
        return cls(spec=spec, sae=sae)


@dataclass
class _Table:
    """Everything the hook needs at one call timestep, precomputed once per timestep value."""

    features: torch.Tensor  # [F] long
    scales: torch.Tensor  # [F]
    gates: torch.Tensor  # [F]
    w_dec: torch.Tensor  # [F, d]
    owners: list[int]  # entry index per feature
    scored: list[int]  # per entry, the scored timestep used (-1: entry has none)


@dataclass
class CallRecord:
    timestep: int
    scored_timesteps: list[int]
    fired: list[dict[str, Any]] = field(default_factory=list)


class Enforcer:
    """The state behind the hooks of one pipeline: compiled tables and the trace so far."""

    def __init__(self, pipe: Any, blocklist: Blocklist, *, error_mode: ErrorMode = "faithful",
                 schedule: Schedule = "nearest") -> None:
        if error_mode not in ("faithful", "reference"):
            raise EnforcementError(f"unknown error mode {error_mode!r}")
        if schedule not in ("nearest", "strict"):
            raise EnforcementError(f"unknown schedule rule {schedule!r}")
        self.pipe = pipe
        self.blocklist = blocklist
        self.error_mode: ErrorMode = error_mode
        self.schedule: Schedule = schedule
        self.unet = pipe.unet
        self.block = resolve_hook_point(self.unet, blocklist.spec.sae.hook_point)
        self.reader = TimestepReader(self.unet, name=f"{HOOK_PREFIX}.timestep")
        self.sae = blocklist.sae.eval().requires_grad_(False)
        self._tables: dict[int, _Table] = {}
        self._entry_steps = [
            torch.tensor(sorted(e.timesteps), dtype=torch.int64) for e in blocklist.spec.entries
        ]
        self.calls: list[CallRecord] = []
        width = self.sae.n_latents
        for e in blocklist.spec.entries:
            for entries in e.timesteps.values():
                for fe in entries:
                    if fe.feature >= width:
                        raise EnforcementError(f"feature {fe.feature} of {e.concept!r} is outside the SAE (width {width})")

    # -- hooks ----------------------------------------------------------------------------------
    def attach(self) -> Enforcer:
        self.reader.attach()
        add_named_hook(self.block, f"{HOOK_PREFIX}.block", self._hook)
        return self

    def remove(self) -> None:
        remove_hooks(self.block, f"{HOOK_PREFIX}.block")
        self.reader.remove()

    def reset_trace(self) -> None:
        self.calls = []

    # -- tables ---------------------------------------------------------------------------------
    def _nearest(self, entry: int, t: int) -> int:
        steps = self._entry_steps[entry]
        if steps.numel() == 0:
            return -1
        pos = int(torch.argmin((steps - t).abs()))
        nearest = int(steps[pos])
        if nearest != t and self.schedule == "strict":
            concept = self.blocklist.spec.entries[entry].concept
            raise EnforcementError(
                f"timestep {t} was not scored for {concept!r} (schedule='strict'); "
                "use the deployment's scheduler and step count")
        return nearest

    def table(self, t: int) -> _Table:
        if t in self._tables:
            return self._tables[t]
        feats: list[int] = []
        scales: list[float] = []
        gates: list[float] = []
        owners: list[int] = []
        scored: list[int] = []
        for i, e in enumerate(self.blocklist.spec.entries):
            st = self._nearest(i, t)
            scored.append(st)
            for fe in e.timesteps.get(st, []) if st >= 0 else []:
                if fe.feature in feats:  # several concepts select it: the first one's rule applies
                    continue
                feats.append(fe.feature)
                scales.append(fe.scale)
                gates.append(fe.gate)
                owners.append(i)
        dtype = self.sae.W_dec.dtype
        idx = torch.tensor(feats, dtype=torch.int64, device=self.sae.W_dec.device)
        tab = _Table(
            features=idx,
            scales=torch.tensor(scales, dtype=dtype, device=idx.device),
            gates=torch.tensor(gates, dtype=dtype, device=idx.device),
            w_dec=self.sae.W_dec.detach()[idx],
            owners=owners,
            scored=scored,
        )
        self._tables[t] = tab
        return tab

    # -- the intervention -----------------------------------------------------------------------
    # No torch.no_grad here: pipelines already sample under no_grad, and the white-box prompt
    # attack (governance.attack) needs gradients to flow through the intervention.
    def _hook(self, module: torch.nn.Module, args: tuple[Any, ...], output: Any) -> Any:
        x = block_output_map(output)
        b, _, h, w = x.shape
        timesteps = self.reader.current
        if timesteps is None or timesteps.numel() != b:
            raise EnforcementError("enforcement hook ran without the UNet's timestep (is the pre-hook attached?)")
        per_sample = h * w
        tokens = to_tokens(x).to(self.sae.W_dec.dtype)
        new_tokens: torch.Tensor | None = None
        for t in torch.unique(timesteps).tolist():
            tab = self.table(int(t))
            record = CallRecord(timestep=int(t), scored_timesteps=tab.scored)
            self.calls.append(record)
            if tab.features.numel() == 0:
                if self.error_mode == "faithful":
                    continue
            samples = (timesteps == t).nonzero().flatten().tolist()
            rows = torch.cat([torch.arange(s * per_sample, (s + 1) * per_sample) for s in samples])
            xs = tokens[rows]
            pre = self.sae.pre_acts(xs)
            vals, idx = pre.topk(self.sae.k, dim=-1, sorted=False)
            delta = None
            if tab.features.numel():
                member = (idx.unsqueeze(-1) == tab.features.view(1, 1, -1))  # [N, k, F]
                z_f = (vals.unsqueeze(-1) * member).sum(dim=1)  # [N, F]: 0 where not in the TopK
                fire = (z_f > tab.gates) & (z_f > 0)
                if bool(fire.any()):
                    z_new = torch.where(fire, z_f * tab.scales, z_f)
                    delta = (z_new - z_f) @ tab.w_dec
                    self._record(record, fire, samples, per_sample, tab)
            if self.error_mode == "reference":
                # Reference code: x_hat' + (x_hat - x) = 2 x_hat - x + (z' - z) W_dec.
                z = torch.zeros_like(pre).scatter_(-1, idx, vals)
                x_hat = self.sae.decode(z)
                out_rows = 2 * x_hat - xs + (delta if delta is not None else 0)
            elif delta is None:
                continue
            else:
                out_rows = xs + delta
            if new_tokens is None:
                new_tokens = tokens.clone()
            new_tokens[rows] = out_rows
        if new_tokens is None:
            return None  # nothing fired: the block's output is left untouched, bit for bit
        new_map = from_tokens(new_tokens.to(x.dtype), b, h, w)
        if isinstance(output, tuple):
            return (new_map, *output[1:])
        if hasattr(output, "sample"):
            output.sample = new_map
            return output
        return new_map

    def _record(self, record: CallRecord, fire: torch.Tensor, samples: list[int], per_sample: int, tab: _Table) -> None:
        per_token_sample = torch.tensor(samples).repeat_interleave(per_sample)
        for j in fire.any(dim=0).nonzero().flatten().tolist():
            entry = self.blocklist.spec.entries[tab.owners[j]]
            fired_rows = fire[:, j]
            record.fired.append({
                "feature": int(tab.features[j]),
                "concept": entry.concept,
                "mapping_id": entry.mapping_id,
                "approval_review_id": entry.approval.review_id,
                "scored_timestep": tab.scored[tab.owners[j]],
                "tokens": int(fired_rows.sum()),
                "samples": sorted(set(per_token_sample[fired_rows].tolist())),
            })


def apply_blocklist(pipe: Any, blocklist: Blocklist, *, error_mode: ErrorMode = "faithful",
                    schedule: Schedule = "nearest") -> Enforcer:
    """Attach the blocklist to `pipe` (idempotent: a previous one is removed first)."""
    remove_blocklist(pipe)
    enforcer = Enforcer(pipe, blocklist, error_mode=error_mode, schedule=schedule)
    if blocklist.spec.entries or error_mode == "reference":
        enforcer.attach()
    pipe.__dict__[ATTR] = enforcer
    return enforcer


def remove_blocklist(pipe: Any) -> bool:
    """Remove saegov's hooks from `pipe`; returns whether any were attached."""
    enforcer = pipe.__dict__.pop(ATTR, None)
    removed = remove_hooks(pipe.unet, prefix=HOOK_PREFIX)
    for module in pipe.unet.modules():
        removed += remove_hooks(module, prefix=HOOK_PREFIX) if module is not pipe.unet else 0
    return enforcer is not None or removed > 0


def enforcer_of(pipe: Any) -> Enforcer | None:
    return pipe.__dict__.get(ATTR)
