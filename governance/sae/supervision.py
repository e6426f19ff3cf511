"""Concept-supervised TopK SAE training (issue 14), in the spirit of SAEmnesia (SAEURON.md s. 6):
each supervising concept gets dedicated latents, so that blocking the concept is blocking them.

Labels come from the registry: a dataset row is labelled with concept c when its prompt is one of
the prompts registered for c (`concept add --prompts`); every other row is "not c". Labels are
per image, not per token (an image of a red circle on a plain background is "red" on every
token), so the losses never ask a latent to fire on every token of a labelled image:

- **Assignment** (the code): c's latents may enter the Batch-TopK code only on rows labelled c
  (`forbid`), and are trained silent elsewhere:
  `L_assign = sum over c, rows not labelled c of ReLU(pre(a_c))^2 / total variance`
  (the share of the batch's variance they would write where c is not).
- **Decorrelation** (everything else): no other latent may tell c's rows from the rest on
  average: with `D(i, c) = mean z_i on rows labelled c - mean z_i on the other rows`,
  `L_decor = sum over c and non-assigned i of D(i, c)^2 / (total variance / N)`.
  What distinguishes c's images, on average, must be written by c's own latents, or the
  reconstruction pays for it.

Both are added to FVU + AuxK with the weights recorded in the SAE's `supervision` record
(governance.formats.supervision), which also names each concept's latents: the first
`latents_per_concept` ids for the first concept, and so on.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from governance.common.errors import GovernanceError
from governance.formats.activations import prompts_sha256
from governance.formats.supervision import SupervisedConcept, SupervisionSpec


class SupervisionRefused(GovernanceError):
    """Supervision that cannot be honoured (a concept without rows, too many latents ...)."""


@dataclass(frozen=True)
class ConceptLabels:
    """One supervising concept as the registry holds it."""

    name: str
    kind: str
    prompts: tuple[str, ...]


@dataclass
class SupervisionTargets:
    """What the trainer needs: latents [C, m] and a label per dataset prompt [P, C]."""

    latents: Tensor
    labels: Tensor
    assign_weight: float
    decorrelation_weight: float
    names: tuple[str, ...] = ()

    def to(self, device: torch.device) -> SupervisionTargets:
        return SupervisionTargets(self.latents.to(device), self.labels.to(device), self.assign_weight,
                                  self.decorrelation_weight, self.names)


def plan_supervision(dataset_prompts: list[str], concepts: list[ConceptLabels], *, n_latents: int, k: int,
                     latents_per_concept: int = 1, assign_weight: float = 1.0,
                     decorrelation_weight: float = 10.0) -> tuple[SupervisionSpec, SupervisionTargets]:
    """The record and the training targets; refused (one line) before any training when a
    concept labels no row, or every row, of the dataset, or the latents do not fit: neither in
    the SAE nor in a row's code, where the latents forced in may take at most half of k."""
    if not concepts:
        raise SupervisionRefused("supervision needs at least one concept")
    if latents_per_concept <= 0:
        raise SupervisionRefused("latents per concept must be positive")
    names = [c.name for c in concepts]
    if len(set(names)) != len(names):
        raise SupervisionRefused("a supervising concept is named twice")
    total = len(concepts) * latents_per_concept
    if total > n_latents - k:
        raise SupervisionRefused(f"{total} dedicated latents leave fewer than k={k} of the SAE's {n_latents} "
                                 "for everything else")
    labels = torch.zeros(len(dataset_prompts), len(concepts), dtype=torch.bool)
    records = []
    for j, c in enumerate(concepts):
        mine = set(c.prompts)
        col = torch.tensor([p in mine for p in dataset_prompts], dtype=torch.bool)
        n_pos = int(col.sum())
        if n_pos == 0:
            raise SupervisionRefused(f"concept {c.name!r}: none of its registered prompts is in the activation "
                                     "dataset; collect on prompts that include them")
        if n_pos == len(dataset_prompts):
            raise SupervisionRefused(f"concept {c.name!r} labels every prompt of the dataset: nothing to "
                                     "contrast it with")
        labels[:, j] = col
        ids = list(range(j * latents_per_concept, (j + 1) * latents_per_concept))
        records.append(SupervisedConcept(name=c.name, kind=c.kind, latents=ids, prompts_sha256=prompts_sha256(list(c.prompts)),
                                         positive_prompts=len({p for p, y in zip(dataset_prompts, col.tolist()) if y})))
    forced = int(labels.sum(1).max()) * latents_per_concept
    if forced > k // 2:
        # Forced in with +inf-like priority, they would crowd the other latents out of the
        # Batch-TopK budget (k per row on average) and the SAE would stop reconstructing.
        raise SupervisionRefused(f"a prompt is labelled with {forced // latents_per_concept} supervising concept(s) x "
                                 f"{latents_per_concept} latent(s) = {forced} forced latents, more than half of k={k}; "
                                 "supervise fewer concepts per prompt or use fewer latents per concept")
    spec = SupervisionSpec(concepts=records, latents_per_concept=latents_per_concept, assign_weight=assign_weight,
                           decorrelation_weight=decorrelation_weight)
    latents = torch.arange(total, dtype=torch.long).view(len(concepts), latents_per_concept)
    return spec, SupervisionTargets(latents, labels, assign_weight, decorrelation_weight, tuple(names))


def forbidden(targets: SupervisionTargets, y: Tensor) -> tuple[Tensor, Tensor]:
    """(dedicated latent columns [C*m], [N, C*m] True where the row lacks that latent's concept)."""
    m = targets.latents.shape[1]
    return targets.latents.reshape(-1), (~y).repeat_interleave(m, dim=1)


@torch.no_grad()
def init_dedicated(sae: torch.nn.Module, x_c: Tensor, y: Tensor, targets: SupervisionTargets) -> None:
    """Start each concept's latents on the direction that tells its rows from the others in the
    first batch (the difference of their means), encoder and decoder alike, so that they fire on
    the concept's tokens from the first step: a latent that starts silent there gets no gradient
    from the reconstruction and would never learn the concept. Several latents of one concept
    start on the same direction, slightly apart."""
    w_enc, b_enc, w_dec = sae.encoder.weight, sae.encoder.bias, sae.W_dec
    row_norm = w_enc.norm(dim=1).mean()
    g = torch.Generator(device="cpu").manual_seed(0)
    for j in range(targets.latents.shape[0]):
        pos, neg = y[:, j], ~y[:, j]
        if not bool(pos.any()) or not bool(neg.any()):
            continue  # the random start; the losses still apply
        direction = x_c[pos].mean(0) - x_c[neg].mean(0)
        if float(direction.norm()) == 0.0:
            continue
        direction = direction / direction.norm()
        for lat in targets.latents[j].tolist():
            jitter = 0.05 * torch.randn(direction.shape, generator=g).to(direction)
            v = direction + (jitter if targets.latents.shape[1] > 1 else 0)
            v = v / v.norm()
            w_enc[lat] = v * row_norm
            b_enc[lat] = 0.0
            w_dec[lat] = v


@torch.no_grad()
def inference_firing(sae: torch.nn.Module, x: Tensor, y: Tensor, targets: SupervisionTargets) -> dict[str, float]:
    """Under the inference rule (per-token TopK, no forcing): per concept, the share of its rows
    where one of its latents is in the code, and the share of the other rows. A supervised SAE
    whose latents never win a token's TopK would give mappings that block nothing."""
    vals, idx = sae.encode(x)  # type: ignore[attr-defined]
    out: dict[str, float] = {}
    for j in range(targets.latents.shape[0]):
        lat = targets.latents[j].to(idx.device)
        on = ((vals > 0) & torch.isin(idx, lat)).any(-1)
        pos = y[:, j]
        name = targets.names[j] if j < len(targets.names) else str(j)
        out[f"supervision.{name}.fires_on_concept_pct"] = 100.0 * float(on[pos].float().mean()) if bool(pos.any()) else 0.0
        out[f"supervision.{name}.fires_elsewhere_pct"] = (100.0 * float(on[~pos].float().mean())
                                                         if bool((~pos).any()) else 0.0)
    return out


def supervision_losses(x_c: Tensor, w_enc: Tensor, b_enc: Tensor, rows: Tensor, cols: Tensor, vals: Tensor,
                       y: Tensor, targets: SupervisionTargets, total_var: Tensor) -> tuple[Tensor, Tensor]:
    """(L_assign, L_decor) of one batch; `rows`, `cols`, `vals` are the Batch-TopK code's
    entries (vals differentiable), `y` the rows' labels [N, C] (bool)."""
    n_tok = x_c.shape[0]
    cols_f, off = forbidden(targets, y)
    pre = torch.addmm(b_enc[cols_f], x_c, w_enc[cols_f].t())
    l_assign = (torch.relu(pre) * off).pow(2).sum() / total_var
    yf = y.to(vals.dtype)
    n_pos = yf.sum(0)
    n_neg = n_tok - n_pos
    present = (n_pos > 0) & (n_neg > 0)  # a batch without both sides says nothing about c
    # D(i, c) = sum over entries of z * (y_c / n_pos - (1 - y_c) / n_neg): zero entries add nothing.
    w = yf / n_pos.clamp_min(1) - (1 - yf) / n_neg.clamp_min(1)
    w = w * present
    diff = torch.zeros(w_enc.shape[0], y.shape[1], dtype=vals.dtype, device=vals.device)
    diff = diff.index_add(0, cols, vals[:, None] * w[rows])
    keep = torch.ones(w_enc.shape[0], dtype=torch.bool, device=vals.device)
    keep[cols_f] = False
    l_decor = diff[keep].pow(2).sum() / (total_var / n_tok)
    return l_assign, l_decor
