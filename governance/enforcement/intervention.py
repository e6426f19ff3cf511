"""The SAeUron intervention as named, removable hooks on any SD 1.x diffusers pipeline.

One enforcement site per hook point of the blocklist (each with its own SAE, hook name
`saegov.enforce.block:<hook point>`), all reading the UNet's one timestep pre-hook
(`saegov.enforce.timestep`). For each UNet call, on each hooked block's output (both CFG halves,
every token):

    z  = TopK_k(ReLU(W_enc (x - b_dec) + b_enc))          per-token TopK
    z'_i = z_i * s_i  where z_i > g_i (i in F_t), else z_i
    out  = x + (z' - z) W_dec                               faithful: the SAE's error is kept

Only the selected features' decoder rows are used (a sparse update), and only their TopK
membership is needed: each is compared with its token's k-th largest pre-activation (ties go to
the lower feature index), so no TopK indices are built. Every decision is the dense definition's
(the full encoder product of the call's tokens at a timestep, then per-token TopK), and most
calls decide it without that product: the selected features' columns for every token and the
full row of the tokens that can pass a gate, each with a bound on its rounding difference from
the dense product, settle every decision that does not lie within rounding of a gate or of a
token's k-th place; a call where one does takes the dense product itself
(`Enforcer._candidates`). The
reference code's `x_hat' + (x_hat - x)` (which is `2 x_hat - x` when nothing fires) is available
only as the explicit `error_mode="reference"`.

A feature selected by several concepts at one site fires for each concept whose gate it exceeds
and is scaled by the smallest of those concepts' scales (the most suppressive rule; the trace
lists every concept it fired for).

Timesteps: the UNet's own `timestep` argument is read by a forward pre-hook. A call whose
timestep was not scored uses each mapping's nearest scored timestep (`schedule="nearest"`, the
default, recorded in the trace), or is refused (`schedule="strict"`).
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
import functools
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from governance.basemodel.hooks import (
    TimestepReader, add_named_hook, block_channels, block_output_map, from_tokens, has_named_hook, remove_hooks,
    remove_named_hook, resolve_hook_point, to_tokens,
)
from governance.common.errors import GovernanceError
from governance.formats.blocklist import BlocklistSpec, read_blocklist
from governance.sae.model import TopKSAE

HOOK_PREFIX = "saegov.enforce"
ATTR = "_saegov_enforcer"
ErrorMode = Literal["faithful", "reference"]
Schedule = Literal["nearest", "strict"]


class EnforcementError(GovernanceError):
    """A blocklist that cannot be enforced on this pipeline or at this timestep."""


@dataclass
class EnforcedBlocklist:
    """A blocklist spec together with the SAEs its feature IDs refer to, one per hook point:
    what `apply_blocklist` attaches. (The registry's blocklist is a named, versioned list of
    approved mappings; its published version becomes a deployment's `blocklist.json`, this
    spec.) `saes` may be given as one TopKSAE when the spec has a single hook point."""

    spec: BlocklistSpec
    saes: dict[str, TopKSAE] | TopKSAE

    def __post_init__(self) -> None:
        hooks = self.spec.hook_points()
        if isinstance(self.saes, TopKSAE):
            if len(hooks) != 1:
                raise EnforcementError(f"blocklist {self.spec.name!r} has {len(hooks)} hook points; give an SAE for each")
            self.saes = {hooks[0]: self.saes}
        if sorted(self.saes) != sorted(hooks):
            raise EnforcementError(f"SAEs given for {sorted(self.saes)}, the blocklist needs {sorted(hooks)}")

    @property
    def sae(self) -> TopKSAE:
        """The SAE of a single-hook-point blocklist."""
        assert isinstance(self.saes, dict)
        if len(self.saes) != 1:
            raise EnforcementError(f"blocklist {self.spec.name!r} has {len(self.saes)} SAEs")
        return next(iter(self.saes.values()))

    @classmethod
    def load(cls, root: str | Path, saes: dict[str, tuple[str, str | None]] | None = None,
             spec: BlocklistSpec | None = None) -> EnforcedBlocklist:
        """From a deployment folder `root` (its `saegov/blocklist.json`); `saes`: hook point ->
        (SAE folder relative to `root`, expected sha256 of its weights), from the verified
        manifest. Without it, `saegov/saes/<hook point>` (or v1's `saegov/sae`) and the hashes
        the blocklist records. `spec`: the blocklist already read and verified (not read again)."""
        from governance.formats.deployment import SAE_DIR_V1, SAEGOV_DIR, sae_dir

        root = Path(root)
        spec = spec or read_blocklist(root / SAEGOV_DIR)
        if saes is None:
            v1 = (root / SAE_DIR_V1).is_dir() and len(spec.saes) == 1
            saes = {r.hook_point: (SAE_DIR_V1 if v1 else sae_dir(r.hook_point), r.weights_sha256) for r in spec.saes}
        loaded = {hook: TopKSAE.load(root / folder, expected_sha256=sha or spec.sae_at(hook).weights_sha256)
                  for hook, (folder, sha) in saes.items()}
        return cls(spec=spec, saes=loaded)


@dataclass
class _Table:
    """Everything one hook point's hook needs at one call timestep, precomputed once per value.

    Shared features: when several concepts select the same feature, each concept's own gate
    decides whether it fires for that concept; the feature fires if it fires for any, and is
    scaled by the smallest (most suppressive) scale among the concepts it fired for. `gates` holds
    the lowest gate of each feature, `shared` the (entry, scale, gate) of every concept of a
    feature selected by more than one."""

    features: torch.Tensor  # [F] long
    scales: torch.Tensor  # [F] (the only owner's scale; shared features: see `shared`)
    gates: torch.Tensor  # [F] lowest gate
    w_dec: torch.Tensor  # [F, d]
    w_enc: torch.Tensor  # [F, d]: the selected features' encoder rows (the pre-filter)
    b_enc: torch.Tensor  # [F]
    w_enc_abs: torch.Tensor  # [F, d]: |w_enc|, for the pre-filter's rounding margin
    b_enc_abs: torch.Tensor  # [F]
    owners: list[list[int]]  # per feature, the entry index of every concept selecting it
    shared: dict[int, list[tuple[int, float, float]]]  # column -> [(entry, scale, gate)], > 1 owner
    scored: dict[int, int]  # entry index -> the scored timestep used (-1: entry has none)
    row_bound: tuple[float, float]  # (max_j ||w_j||, max_j |b_j|) over the whole encoder


@dataclass
class _Settled:
    """What the bounded products decided (`Enforcer._certain`): `fire` [N, F] where a candidate
    surely fires; `undecided` [N, F] where only the dense product can tell; `exact` when nothing
    needs the dense values (no undecided candidate, no shared feature within rounding of one of
    its concepts' gates)."""

    fire: torch.Tensor
    undecided: torch.Tensor
    exact: bool


@dataclass
class CallRecord:
    timestep: int
    scored_timesteps: list[int]  # per entry at this hook point, the scored timestep used
    hook_point: str = ""
    call: int = 0  # the UNet call (counted by the shared timestep reader) this record belongs to
    fired: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class _Site:
    """One enforcement site: a hook point's block, its SAE and the entries at it."""

    hook_point: str
    block: torch.nn.Module
    sae: TopKSAE
    entries: list[int]
    tables: dict[int, _Table] = field(default_factory=dict)
    _row_bound: tuple[float, float] | None = None

    @property
    def hook_name(self) -> str:
        return f"{HOOK_PREFIX}.block:{self.hook_point}"

    def row_bound(self) -> tuple[float, float]:
        """(max_j ||w_j||, max_j |b_j|) over the SAE's encoder, rounded up a little (the norms are
        computed in floating point too); cleared with the tables when the SAE moves."""
        if self._row_bound is None:
            w, b = self.sae.encoder.weight.detach().double(), self.sae.encoder.bias.detach().double()
            self._row_bound = (float(torch.linalg.vector_norm(w, dim=1).max()) * (1 + 1e-6),
                               float(b.abs().max()) * (1 + 1e-6))
        return self._row_bound


class Enforcer:
    """The state behind the hooks of one pipeline: one site per hook point, all reading the
    UNet's one timestep reader, their compiled tables, and the trace so far."""

    # The largest share of a call's tokens for which step 2 of `_candidates` runs (speed only: the
    # decisions are the same either way; tests set 1.0 to run it on every call).
    bounded_rows: float = 0.5

    def __init__(self, pipe: Any, blocklist: EnforcedBlocklist, *, error_mode: ErrorMode = "faithful",
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
        self.reader = TimestepReader(self.unet, name=f"{HOOK_PREFIX}.timestep")
        entries = blocklist.spec.entries
        assert isinstance(blocklist.saes, dict)
        self.sites: dict[str, _Site] = {}
        for hook in blocklist.spec.hook_points():
            sae = blocklist.saes[hook].eval().requires_grad_(False)
            self.sites[hook] = _Site(hook, resolve_hook_point(self.unet, hook), sae,
                                     [i for i, e in enumerate(entries) if e.hook_point == hook])
        self._entry_steps = [torch.tensor(sorted(e.timesteps), dtype=torch.int64) for e in entries]
        self.calls: list[CallRecord] = []
        self._handles: dict[str, Any] = {}
        for site in self.sites.values():
            channels = block_channels(site.block)
            if channels is not None and channels != site.sae.d_in:
                raise EnforcementError(f"the SAE at {site.hook_point} reads {site.sae.d_in} channels, the block "
                                       f"outputs {channels}")
            width = site.sae.n_latents
            for i in site.entries:
                for fes in entries[i].timesteps.values():
                    for fe in fes:
                        if fe.feature >= width:
                            raise EnforcementError(f"feature {fe.feature} of {entries[i].concept!r} is outside the "
                                                   f"SAE at {site.hook_point} (width {width})")

    # -- single-site conveniences (one hook point) ----------------------------------------------
    def _only_site(self) -> _Site:
        if len(self.sites) != 1:
            raise EnforcementError(f"the blocklist has {len(self.sites)} hook points; name one")
        return next(iter(self.sites.values()))

    @property
    def block(self) -> torch.nn.Module:
        return self._only_site().block

    @property
    def sae(self) -> TopKSAE:
        return self._only_site().sae

    @property
    def blocks(self) -> list[torch.nn.Module]:
        return [s.block for s in self.sites.values()]

    # -- hooks ----------------------------------------------------------------------------------
    def attach(self) -> Enforcer:
        """Attach every site's hook (all or none: a name already taken by another hook is refused).
        Idempotent; re-attaches what was removed from under it (e.g. by `remove_blocklist`)."""
        self.reader.attach()
        try:
            for site in self.sites.values():
                handle = self._handles.get(site.hook_point)
                if handle is not None and has_named_hook(site.block, site.hook_name, handle):
                    continue
                self._handles[site.hook_point] = add_named_hook(
                    site.block, site.hook_name, functools.partial(self._hook, site=site))
        except BaseException:
            self.remove()
            raise
        return self

    def remove(self) -> None:
        """Remove the hooks this enforcer attached (never another's of the same name)."""
        for hook, handle in sorted(self._handles.items()):
            remove_named_hook(self.sites[hook].block, self.sites[hook].hook_name, handle)
        self._handles.clear()
        self.reader.remove()

    def attached(self) -> bool:
        """Whether every site's hook of this enforcer is in place."""
        return bool(self.sites) and all(
            hook in self._handles and has_named_hook(site.block, site.hook_name, self._handles[hook])
            for hook, site in self.sites.items())

    def reset_trace(self) -> None:
        self.calls = []

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> Enforcer:
        """Move every site's SAE; the compiled tables hold tensors of the old device and dtype,
        so they are compiled again on the next call."""
        for site in self.sites.values():
            site.sae.to(device=device, dtype=dtype)
            site.tables.clear()
            site._row_bound = None  # noqa: SLF001
        return self

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

    def table(self, t: int, hook_point: str | None = None) -> _Table:
        site = self.sites[hook_point] if hook_point is not None else self._only_site()
        return self._table(site, t)

    def _table(self, site: _Site, t: int) -> _Table:
        if t in site.tables:
            return site.tables[t]
        column: dict[int, int] = {}
        feats: list[int] = []
        rules: list[list[tuple[int, float, float]]] = []
        scored: dict[int, int] = {}
        for i in site.entries:
            st = self._nearest(i, t)
            scored[i] = st
            for fe in self.blocklist.spec.entries[i].timesteps.get(st, []) if st >= 0 else []:
                if fe.feature not in column:
                    column[fe.feature] = len(feats)
                    feats.append(fe.feature)
                    rules.append([])
                rules[column[fe.feature]].append((i, fe.scale, fe.gate))
        dtype = site.sae.W_dec.dtype
        idx = torch.tensor(feats, dtype=torch.int64, device=site.sae.W_dec.device)
        tab = _Table(
            features=idx,
            scales=torch.tensor([r[0][1] for r in rules], dtype=dtype, device=idx.device),
            gates=torch.tensor([min(g for _, _, g in r) for r in rules], dtype=dtype, device=idx.device),
            w_dec=site.sae.W_dec.detach()[idx],
            w_enc=site.sae.encoder.weight.detach()[idx],
            b_enc=site.sae.encoder.bias.detach()[idx],
            w_enc_abs=site.sae.encoder.weight.detach()[idx].abs(),
            b_enc_abs=site.sae.encoder.bias.detach()[idx].abs(),
            owners=[[o for o, _, _ in r] for r in rules],
            shared={j: r for j, r in enumerate(rules) if len(r) > 1},
            scored=scored,
            row_bound=site.row_bound(),
        )
        site.tables[t] = tab
        return tab

    # -- the intervention -----------------------------------------------------------------------
    # No torch.no_grad here: pipelines already sample under no_grad, and the white-box prompt
    # attack (governance.evaluation.attack) needs gradients to flow through the intervention.
    def _hook(self, module: torch.nn.Module, args: tuple[Any, ...], output: Any, *, site: _Site | None = None) -> Any:
        site = site or self._only_site()
        x = block_output_map(output)
        b, c, h, w = x.shape
        timesteps = self.reader.current
        if timesteps is None or timesteps.numel() != b:
            raise EnforcementError("enforcement hook ran without the UNet's timestep (is the pre-hook attached?)")
        per_sample = h * w
        steps = [int(t) for t in timesteps.flatten().tolist()]
        if all(t == steps[0] for t in steps):
            groups: list[tuple[int, list[int] | None]] = [(steps[0], None)]  # the common case: all tokens
        else:
            groups = [(t, [i for i, s in enumerate(steps) if s == t]) for t in sorted(set(steps))]
        tokens: torch.Tensor | None = None
        new_tokens: torch.Tensor | None = None
        for t, samples in groups:
            tab = self._table(site, t)
            record = CallRecord(timestep=t, scored_timesteps=[tab.scored[i] for i in site.entries],
                                hook_point=site.hook_point,
                                call=self.reader.calls)
            self.calls.append(record)
            if tab.features.numel() == 0 and self.error_mode == "faithful":
                continue
            if tokens is None:
                tokens = to_tokens(x).to(site.sae.W_dec.dtype)
            if samples is None:
                xs = tokens
            else:
                sel = torch.tensor(samples, dtype=torch.int64, device=tokens.device)
                xs = tokens.reshape(b, per_sample, c).index_select(0, sel).reshape(-1, c)
            out_rows = self._apply(site.sae, xs, tab, record, samples, per_sample)
            if out_rows is None:
                continue
            if samples is None:
                new_tokens = out_rows
            else:  # out of place: fine for autograd
                base = tokens if new_tokens is None else new_tokens
                new_tokens = base.reshape(b, per_sample, c).index_copy(
                    0, sel, out_rows.reshape(len(samples), per_sample, c)).reshape(-1, c)
        if new_tokens is None:
            return None  # nothing fired: the block's output is left untouched, bit for bit
        new_map = from_tokens(new_tokens.to(x.dtype), b, h, w)
        if isinstance(output, tuple):
            return (new_map, *output[1:])
        if hasattr(output, "sample"):
            output.sample = new_map
            return output
        return new_map

    def _apply(self, sae: TopKSAE, xs: torch.Tensor, tab: _Table, record: CallRecord, samples: list[int] | None,
               per_sample: int) -> torch.Tensor | None:
        """The new token rows for the tokens `xs` of one timestep, or None where they stay as they are."""
        delta = None
        if self.error_mode == "reference":
            pre = sae.pre_acts(xs)
            vals, idx = pre.topk(sae.k, dim=-1, sorted=False)
            z = torch.zeros_like(pre).scatter(-1, idx, vals)
            z_f = z.index_select(1, tab.features)  # [N, F]: 0 where not in the TopK
            fire = (z_f > tab.gates) & (z_f > 0)
        else:
            z_f, fire = self._candidates(sae, xs, tab)
        if fire is not None and bool(fire.any()):
            scales, fired_for = self._scales(tab, z_f.detach(), fire)
            z_new = torch.where(fire, z_f * scales, z_f)
            delta = (z_new - z_f) @ tab.w_dec
            self._record(record, fire, fired_for, samples, per_sample, tab)
        if self.error_mode == "reference":
            # Reference code: x_hat' + (x_hat - x) = 2 x_hat - x + (z' - z) W_dec.
            x_hat = sae.decode(z)
            return 2 * x_hat - xs + (delta if delta is not None else 0)
        return None if delta is None else xs + delta

    def _candidates(self, sae: TopKSAE, xs: torch.Tensor, tab: _Table
                    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """(z_f [N, F], fire [N, F]) in faithful mode: the selected features' activations and where
        they fire (gate passed and in the token's TopK); (None, None) where none fires.

        Every decision is the dense definition's (a full encoder product over `xs`, the call's
        tokens at one timestep: all of them unless the call mixes timesteps, then per-token TopK),
        exactly. Computing it costs less in three steps:
        1. the selected features' columns alone (F of the n latents) for every token, with a bound
           on their rounding difference from the dense product: a call where no token can pass a
           gate stops here, untouched;
        2. the full product of the tokens that can (a product over fewer rows than the dense one,
           which may round differently: on some CPUs a GEMM's rounding depends on its row count),
           with a bound per token, and each candidate's TopK test against it: where every
           decision is certain by those bounds, they are the dense definition's;
        3. otherwise (a value within rounding of a gate or of a token's k-th value: ties, NaN,
           infinities, reduced-precision matmuls), the dense definition itself: the full product
           over every token of `xs`, every decision and value taken from it.
        In steps 1-2 the values the edit scales come from step 1's product, within the matmul's
        rounding of the dense ones (which depend on the rows in the product anyway).
        """
        xc = xs - sae.b_dec  # xs is already in the SAE's dtype
        pre_f = torch.addmm(tab.b_enc, xc, tab.w_enc.T)  # [N, F], carries the gradient
        settled: _Settled | None = None
        c, a = _rounding_bound(xc)
        if math.isfinite(c):  # else no bound holds at this width and precision: the dense product
            with torch.no_grad():
                xd, small = xc.detach(), pre_f.detach()
                err = torch.addmm(tab.b_enc_abs, xd.abs(), tab.w_enc_abs.T).mul_(c).add_(a)
                floor = tab.gates.clamp(min=0)  # firing needs relu(y) > gate and > 0: y > max(gate, 0)
                reach = small + err
                rows = ((reach > floor) | reach.isnan()).any(1).nonzero().flatten()  # NaN: the dense product decides
                if rows.numel() == 0:
                    return None, None
                # Past half of the tokens, step 2's product costs most of the dense one it may still
                # need (a stateless rule: the same call always takes the same path).
                if rows.numel() <= self.bounded_rows * xd.shape[0]:
                    settled = self._certain(sae, xd, tab, small, err, floor, rows, c, a)
        if settled is not None and settled.exact:
            return (None, None) if not bool(settled.fire.any()) else (torch.relu(pre_f), settled.fire)
        # The dense definition (TopKSAE.pre_acts without its ReLU) over every token of xs.
        # Only the selected columns are ReLU'd (and carry the gradient); the TopK test needs each
        # token's k-th largest y, as relu is monotone, and only for the tokens with a candidate:
        # those step 2 left undecided, when it ran.
        y = sae.encoder(xc)
        z_f = torch.relu(y.index_select(1, tab.features))
        with torch.no_grad():
            cand = (z_f > tab.gates) & (z_f > 0)
            if settled is not None:
                cand &= settled.undecided
            fire = self._in_topk(sae.k, y.detach(), z_f.detach(), cand, tab.features)
            if settled is not None:
                fire = settled.fire if fire is None else fire | settled.fire
                if not bool(fire.any()):
                    return None, None
        return z_f, fire

    def _certain(self, sae: TopKSAE, xd: torch.Tensor, tab: _Table, small: torch.Tensor, err: torch.Tensor,
                 floor: torch.Tensor, rows: torch.Tensor, c: float, a: float) -> _Settled | None:
        """Step 2 of `_candidates`: the decisions that are certain from the bounded products, or
        None where no bound holds (NaN, infinities, a sum that may overflow). |small - y| <= err
        for the dense definition's y (per element); the rows' full product `yr` is within `m` of
        it (per token, every column).

        A candidate of value v past its gate (so v = y > 0) is in the token's TopK when fewer than k
        other latents rank above it, and out when k do. Counting its row against two thresholds
        settles that without the k-th value: latents with yr - m > v + err are surely above it (k
        of them: out, past the gate or not); at most k with yr + m >= v - err, itself included,
        means fewer than k can be above (in, whatever the tie-breaking, if surely past the gate)."""
        xr = xd.index_select(0, rows)
        yr = torch.addmm(sae.encoder.bias.detach(), xr, sae.encoder.weight.detach().T)  # [R, n]
        # sum_i |x_i w_ji| + |b_j| <= ||x|| ||w_j|| + |b_j| (Cauchy-Schwarz), bounded over j. The norm
        # in float64, scaled by the row's largest entry, so that no square underflows.
        w_max, b_max = tab.row_bound
        x64 = xr.double()
        scale = x64.abs().amax(dim=1)
        norm = torch.linalg.vector_norm(x64 / scale.clamp(min=torch.finfo(torch.float64).tiny)[:, None], dim=1) * scale
        total = norm * w_max + b_max  # [R], >= sum|terms| of every column
        top = torch.finfo(xd.dtype).max / 4
        v, e = small.index_select(0, rows), err.index_select(0, rows)  # [R, F]
        # The bounds hold where no partial sum can overflow, in either product; NaN ranks highest.
        # A NaN or infinity in yr makes its sum one (half precision summed in float32; a finite
        # sum that overflows is a false alarm, which costs the dense product only); 10x cheaper
        # than isfinite over [R, n].
        if not (bool((total < top).all()) and bool((e < c * top).all()) and bool(torch.isfinite(v).all())
                and bool(torch.isfinite(yr.sum(dtype=torch.float32 if yr.element_size() < 4 else None)))):
            return None
        m = (total * c + a).to(yr.dtype)  # rounding it is covered by c's slack
        lo, hi = v - e, v + e
        passes, maybe_passes = lo > floor, hi > floor  # surely past its gate; possibly
        fire = torch.zeros_like(small, dtype=torch.bool)
        undecided = torch.zeros_like(fire)
        pr, pc = maybe_passes.nonzero(as_tuple=True)
        if pr.numel() == 0:
            return _Settled(fire, undecided, True)
        # Counted column by column over yr's rows (a threshold per row, infinite where the row has
        # no candidate in that column): no [candidates, n] copy of yr. Most candidates on a
        # concept's tokens are surely in: only the others are counted for the second threshold.
        at_least = torch.zeros(pr.shape, dtype=torch.int64, device=yr.device)  # yr + m >= v - err
        above = torch.zeros_like(at_least)  # yr - m > v + err
        for j in pc.unique().tolist():
            sel = (pc == j).nonzero().flatten()
            r_j = pr.index_select(0, sel)
            lo_t = torch.full_like(m, math.inf).index_copy_(0, r_j, lo[r_j, j] - m[r_j])
            at_least[sel] = (yr >= lo_t[:, None]).sum(1).index_select(0, r_j)
            rest = (~(passes[r_j, j] & (at_least[sel] <= sae.k))).nonzero().flatten()
            if rest.numel():
                r_o = r_j.index_select(0, rest)
                above[sel[rest]] = (yr.index_select(0, r_o) > (hi[r_o, j] + m[r_o])[:, None]).sum(1)
        sure_in, sure_out = passes[pr, pc] & (at_least <= sae.k), above >= sae.k
        tok = rows.index_select(0, pr)
        fire[tok[sure_in], pc[sure_in]] = True
        open_ = ~(sure_in | sure_out)  # within rounding of its gate or of the token's k-th place
        undecided[tok[open_], pc[open_]] = True
        exact = not bool(open_.any())
        if exact and tab.shared:  # a shared feature also decides at each concept's gate (in _scales)
            lo_p, hi_p = lo[pr, pc], hi[pr, pc]
            exact = not any(bool((sure_in & (pc == j) & (lo_p <= max(gate, 0.0)) & (hi_p > max(gate, 0.0))).any())
                            for j, rules in tab.shared.items() for _, _, gate in rules)
        return _Settled(fire, undecided, exact)

    @staticmethod
    def _scales(tab: _Table, z_f: torch.Tensor, fire: torch.Tensor
                ) -> tuple[torch.Tensor, dict[int, dict[int, torch.Tensor]]]:
        """Per (token, feature) scale, and for shared features which of their concepts each
        token fired for (column -> entry -> [N] bool). A shared feature fires for a concept where
        it exceeds that concept's gate; the smallest scale among those concepts applies."""
        if not tab.shared:
            return tab.scales, {}
        scales = tab.scales.expand(fire.shape[0], -1).clone()
        fired_for: dict[int, dict[int, torch.Tensor]] = {}
        for j, rules in tab.shared.items():
            col, on = z_f[:, j], fire[:, j]
            best = torch.full_like(col, float("inf"))
            fired_for[j] = {}
            for entry, scale, gate in rules:
                mine = on & (col > gate)
                fired_for[j][entry] = mine
                best = torch.where(mine & (scale < best), torch.full_like(best, scale), best)
            scales[:, j] = torch.where(torch.isinf(best), tab.scales[j], best)
        return scales, fired_for

    def _in_topk(self, k: int, y: torch.Tensor, z_f: torch.Tensor, cand: torch.Tensor,
                 features: torch.Tensor) -> torch.Tensor | None:
        """`cand` [N, F] restricted to the (token, feature) pairs whose feature is in the token's
        per-token TopK of relu(y); None if no candidate is. `y` [N, n] (every token's full
        pre-activations) and `z_f` carry no gradient.

        Feature i with value v is in the TopK of its token iff fewer than k of the token's
        pre-activations rank above it: those > v (NaN ranks highest, as in torch.topk) and, among
        those equal to v, those with a lower feature index (ties go to the lower index; torch.topk
        leaves that unspecified). With T the token's k-th largest pre-activation: v > T is in,
        v < T is out, and only v == T needs counting. No [N, k, F] tensor, no TopK indices, and T
        only for the tokens with a candidate.
        """
        pairs = cand.nonzero()
        if pairs.shape[0] == 0:
            return None
        tok, col = pairs[:, 0], pairs[:, 1]  # row-major: tok is sorted
        v = z_f[tok, col]  # [P]
        rows, inverse = torch.unique_consecutive(tok, return_inverse=True)
        kth = torch.relu(self._kth_largest(k, y, None if rows.numel() == y.shape[0] else rows))[inverse]
        keep = v > kth
        tied = (v == kth).nonzero().flatten()
        if tied.numel():
            r, vt = torch.relu(y.index_select(0, tok[tied])), v[tied]
            n = r.shape[1]
            above = n - (r <= vt[:, None]).sum(-1)  # strictly above, NaN included
            lower = torch.arange(n, device=r.device).view(1, -1) < features[col[tied]].view(-1, 1)
            before = ((r == vt[:, None]) & lower).sum(-1)  # equal, with a lower feature index
            keep[tied] = above + before < k
        fire = torch.zeros_like(cand)
        fire[tok[keep], col[keep]] = True
        return fire

    @staticmethod
    def _kth_largest(k: int, y: torch.Tensor, rows: torch.Tensor | None) -> torch.Tensor:
        """The k-th largest value of each row of `y` [M, n] (or of its `rows`); NaN ranks highest."""
        n = y.shape[1]
        k = min(k, n)
        if y.device.type == "cpu" and y.dtype in (torch.float32, torch.float64) and n <= 4096:
            # On rows of up to ~4,096 latents numpy's introselect (np.partition) beats torch.topk
            # whatever the row count; on wider rows (8,192; SD width, 20,480) torch.topk wins
            # (`benchmarks/enforce.py --kth`, docs/performance.md).
            # It runs on -y with the k-th smallest as the pivot, which stays fast on rows with many
            # equal values (on +y with n-k as the pivot it did not). numpy sorts NaN last, so rows
            # with NaN are left to torch.topk: a NaN makes the sum NaN (a false alarm only costs time).
            neg = torch.neg(y) if rows is None else y.index_select(0, rows).neg_()
            if not bool(torch.isnan(neg.sum())):
                a = neg.numpy()
                a.partition(k - 1, axis=-1)
                return torch.from_numpy(-a[:, k - 1])
        sub = y if rows is None else y.index_select(0, rows)
        return sub.topk(k, dim=-1, sorted=True).values[:, -1]

    def _record(self, record: CallRecord, fire: torch.Tensor, fired_for: dict[int, dict[int, torch.Tensor]],
                samples: list[int] | None, per_sample: int, tab: _Table) -> None:
        """One record per (feature, concept it was suppressed for)."""
        entries = self.blocklist.spec.entries
        for j in fire.any(dim=0).nonzero().flatten().tolist():
            per_owner = fired_for.get(j) or {tab.owners[j][0]: fire[:, j]}
            for owner, mask in per_owner.items():
                fired_rows = mask.nonzero().flatten()
                if fired_rows.numel() == 0:
                    continue
                entry = entries[owner]
                local = sorted(set((fired_rows // per_sample).tolist()))
                record.fired.append({
                    "hook_point": record.hook_point,
                    "feature": int(tab.features[j]),
                    "concept": entry.concept,
                    "mapping_id": entry.mapping_id,
                    "approval_review_id": entry.approval.review_id,
                    "scored_timestep": tab.scored[owner],
                    "tokens": int(fired_rows.numel()),
                    "samples": local if samples is None else [samples[i] for i in local],
                })


def _rounding_bound(x: torch.Tensor) -> tuple[float, float]:
    """(c, a) with |p - q| <= c sum|terms| + a for two computations p, q of one dot product of
    x's width d plus a bias, in any order: each is within (d + 1) u sum|terms| of the exact value
    (while (d + 1) u is small: past (d + 2) u = 0.5 no such bound holds, and c is infinite), twice
    that, doubled again for safety; `a` covers products and sums that underflow (each operation's
    absolute error is at most the smallest normal number)."""
    u = _matmul_rounding(x.dtype)
    d = x.shape[1]
    if (d + 2) * u > 0.5:
        return math.inf, math.inf
    return 4 * (d + 2) * u, 4 * (d + 2) * torch.finfo(x.dtype).tiny


def _matmul_rounding(dtype: torch.dtype) -> float:
    """The relative precision a matmul in `dtype` may round to. Float32 products run in TF32 or
    bfloat16 when `torch.set_float32_matmul_precision` allows it (as some pipelines set for
    speed); the pre-filter's margin must cover that, or it could drop a token that fires."""
    eps = torch.finfo(dtype).eps
    if dtype == torch.float32:
        reduced = {"high": 2.0 ** -10, "medium": 2.0 ** -7}.get(torch.get_float32_matmul_precision(), 0.0)
        return max(eps, reduced)
    return eps


def apply_blocklist(pipe: Any, blocklist: EnforcedBlocklist, *, error_mode: ErrorMode = "faithful",
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
    if enforcer is not None:
        enforcer.remove()
    removed = remove_hooks(pipe.unet, prefix=HOOK_PREFIX)
    for module in pipe.unet.modules():
        removed += remove_hooks(module, prefix=HOOK_PREFIX) if module is not pipe.unet else 0
    return enforcer is not None or removed > 0


def enforcer_of(pipe: Any) -> Enforcer | None:
    return pipe.__dict__.get(ATTR)


def _hooks_attached(pipe: Any) -> bool:
    enforcer = enforcer_of(pipe)
    return enforcer is not None and enforcer.attached()


@contextmanager
def blocklist_suspended(pipe: Any) -> Iterator[None]:
    """The pipeline without its enforcement hooks inside the block; the same enforcer re-attached
    after (the "before" images of an evaluation, an attack's reference latent)."""
    enforcer = enforcer_of(pipe)
    attached = _hooks_attached(pipe)
    if attached:
        enforcer.remove()  # type: ignore[union-attr]
    try:
        yield
    finally:
        if attached:
            enforcer.attach()  # type: ignore[union-attr]
