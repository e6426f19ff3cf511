"""Concept-supervised SAE training (governance.sae.supervision): labels from prompts, the code's
forced inclusion and exclusion of a concept's latents, gradients equal to the dense definition,
and a planted concept direction ending up in its dedicated latent."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from governance.common.errors import FormatError
from governance.formats.sae_config import SaeConfig
from governance.formats.supervision import SupervisionSpec, supervision_of
from governance.sae.data import open_dataset
from governance.sae.model import TopKSAE
from governance.sae.supervision import ConceptLabels, SupervisionRefused, forbidden, plan_supervision
from governance.sae.trainer import TrainConfig, _BatchTopKCode, sae_losses, train_sae
from tests.helpers.activations import sparse_toy_activations, write_dataset

torch.set_num_threads(1)
PROMPTS = [f"a {c} {s}" for c in ("red", "blue", "green") for s in ("circle", "square")] + ["a circle"]
RED = ConceptLabels("red", "colour", ("a red circle", "a red square", "a red star"))
BLUE = ConceptLabels("blue", "colour", ("a blue circle", "a blue square"))


def test_labels_come_from_registered_prompts_and_bad_plans_are_refused() -> None:
    spec, t = plan_supervision(PROMPTS, [RED, BLUE], n_latents=64, k=4, latents_per_concept=2)
    assert t.labels[:, 0].tolist() == [True, True, False, False, False, False, False]
    assert t.labels[:, 1].tolist() == [False, False, True, True, False, False, False]
    assert t.latents.tolist() == [[0, 1], [2, 3]]
    assert [c.latents for c in spec.concepts] == [[0, 1], [2, 3]]
    assert spec.concepts[0].positive_prompts == 2  # "a red star" is not in the dataset
    with pytest.raises(SupervisionRefused, match="none of its registered prompts"):
        plan_supervision(PROMPTS, [ConceptLabels("pink", "colour", ("a pink circle",))], n_latents=64, k=4)
    with pytest.raises(SupervisionRefused, match="every prompt"):
        plan_supervision(PROMPTS, [ConceptLabels("any", "colour", tuple(PROMPTS))], n_latents=64, k=4)
    with pytest.raises(SupervisionRefused, match="fewer than k"):
        plan_supervision(PROMPTS, [RED, BLUE], n_latents=8, k=6, latents_per_concept=2)
    with pytest.raises(SupervisionRefused, match="twice"):
        plan_supervision(PROMPTS, [RED, RED], n_latents=64, k=4)
    # Forced into every labelled row's code, they may take at most half of k: two concepts on
    # one prompt x 2 latents = 4 > 6 // 2.
    circle = ConceptLabels("circle", "shape", ("a red circle", "a blue circle", "a circle"))
    with pytest.raises(SupervisionRefused, match="more than half of k=6"):
        plan_supervision(PROMPTS, [RED, circle], n_latents=64, k=6, latents_per_concept=2)
    assert plan_supervision(PROMPTS, [RED, circle], n_latents=64, k=8, latents_per_concept=2)[0]


def test_supervision_record_in_cfg_is_validated() -> None:
    spec, _ = plan_supervision(PROMPTS, [RED, BLUE], n_latents=64, k=4)
    cfg = SaeConfig(d_in=16, num_latents=64, k=4, supervision=spec.model_dump(mode="json"))
    assert supervision_of(cfg, 64) == spec and supervision_of(SaeConfig(d_in=16), 256) is None
    assert supervision_of(cfg.to_json_dict()) == spec
    bad = spec.model_dump(mode="json")
    bad["concepts"][1]["latents"] = [0]  # two concepts on one latent
    with pytest.raises(FormatError, match="share a latent"):
        supervision_of({"supervision": bad})
    with pytest.raises(FormatError, match="beyond"):
        supervision_of(cfg, 1)
    with pytest.raises(ValueError):
        SupervisionSpec.model_validate({**spec.model_dump(mode="json"), "labels": "guesses"})


def _batch(seed: int = 0) -> tuple[TopKSAE, torch.Tensor, torch.Tensor, object]:
    torch.manual_seed(seed)
    sae = TopKSAE(SaeConfig(d_in=12, num_latents=48, k=4), dtype=torch.float64)
    with torch.no_grad():
        sae.encoder.bias.normal_(0, 0.1)
        sae.b_dec.normal_(0, 0.1)
    x = torch.randn(40, 12, dtype=torch.float64)
    _, t = plan_supervision(PROMPTS, [RED, BLUE], n_latents=48, k=4, latents_per_concept=2,
                            assign_weight=1.0, decorrelation_weight=1.0)
    y = t.labels[torch.arange(40) % len(PROMPTS)]
    return sae, x, y, t


def test_code_forces_a_concepts_latents_in_on_its_rows_and_out_elsewhere() -> None:
    sae, x, y, t = _batch()
    x_c = x - sae.b_dec
    cols_f, off = forbidden(t, y)
    _, vals, cols, rows = _BatchTopKCode.apply(x_c, sae.encoder.weight, sae.encoder.bias, sae.W_dec,
                                               4 * 40, (cols_f, off))
    pre = torch.addmm(sae.encoder.bias, x_c, sae.encoder.weight.t())
    code = torch.zeros_like(pre, dtype=torch.bool)
    code[rows, cols] = True
    for j, col in enumerate(cols_f.tolist()):
        on = ~off[:, j]
        assert code[on, col].all() and not code[~on, col].any()
        # In the code with their own value (zero when negative), not the forcing one.
        sel = cols == col
        assert torch.allclose(vals[sel], pre[rows[sel], col].clamp_min(0))


def test_supervised_gradients_equal_the_dense_definition() -> None:
    sae, x, y, t = _batch(1)
    fvu, _, _, _, extra = sae_losses(sae, x, None, 6, t, y)
    loss = fvu + extra["assign_loss"] + 3.0 * extra["decorrelation_loss"]
    params = list(sae.parameters())
    got = torch.autograd.grad(loss, params)

    # Dense: the same selection (taken from the sparse path), every term written out.
    x_c = x - sae.b_dec
    cols_f, off = forbidden(t, y)
    with torch.no_grad():
        _, _, cols, rows = _BatchTopKCode.apply(x_c, sae.encoder.weight, sae.encoder.bias, sae.W_dec,
                                                4 * 40, (cols_f, off))
    pre = x_c @ sae.encoder.weight.t() + sae.encoder.bias
    mask = torch.zeros_like(pre)
    mask[rows, cols] = 1.0
    z = torch.relu(pre) * mask
    x_hat = z @ sae.W_dec + sae.b_dec
    total_var = (x - x.mean(0)).pow(2).sum()
    d_fvu = (x_hat - x).pow(2).sum() / total_var
    d_assign = ((torch.relu(pre[:, cols_f]) * off).pow(2)).sum() / total_var
    yf = y.double()
    diff = z.t() @ (yf / yf.sum(0)) - z.t() @ ((1 - yf) / (1 - yf).sum(0))  # [n, C]
    keep = torch.ones(48, dtype=torch.bool)
    keep[cols_f] = False
    d_decor = diff[keep].pow(2).sum() / (total_var / 40)
    assert torch.allclose(d_fvu, fvu) and torch.allclose(d_assign, extra["assign_loss"])
    assert torch.allclose(d_decor, extra["decorrelation_loss"])
    dense = torch.autograd.grad(d_fvu + d_assign + 3.0 * d_decor, params)
    for g, dg in zip(got, dense):
        assert torch.allclose(g, dg, atol=1e-10), (g - dg).abs().max()


def test_a_planted_concept_direction_lands_in_its_dedicated_latent(tmp_path: Path) -> None:
    # 6 prompts x 400 rows; "red" prompts carry a fixed direction on a third of their rows (the
    # object's tokens), the other prompts never do.
    g = torch.Generator().manual_seed(3)
    prompts = ["a red circle", "a red square", "a blue circle", "a blue square", "a green circle", "a circle"]
    n_rows = 400
    x = sparse_toy_activations(len(prompts) * n_rows, d_in=16, n_atoms=48, active=3, seed=2)
    pidx = torch.arange(len(prompts) * n_rows) // n_rows
    v = torch.randn(16, generator=g)
    v /= v.norm()
    planted = (pidx < 2) & (torch.rand(len(pidx), generator=g) < 1 / 3)
    x[planted] += 2.5 * v
    ds = open_dataset(write_dataset(tmp_path / "ds", x, shard_rows=800, prompts=prompts, prompt_index=pidx))
    concepts = [ConceptLabels("red", "colour", ("a red circle", "a red square")),
                ConceptLabels("blue", "colour", ("a blue circle", "a blue square"))]
    spec, targets = plan_supervision(ds.manifest.prompts, concepts, n_latents=96, k=4, latents_per_concept=1,
                                     assign_weight=10.0, decorrelation_weight=100.0)
    res = train_sae(ds, TrainConfig(num_latents=96, k=4, epochs=30, batch_tokens=256, lr=1e-3), supervision=targets)
    assert "decorrelation_loss" in res.history[-1] and "assign_loss" in res.history[-1]
    sae = res.sae
    red = spec.latents_of("red")[0]
    cos = float(torch.nn.functional.cosine_similarity(sae.W_dec[red].detach().double(), v.double(), dim=0))
    with torch.no_grad():
        vals, idx = sae.encode(x)
    z = (vals * (idx == red)).sum(-1)
    on_planted = float((z[planted] > 0).float().mean())
    off_concept = float((z[pidx >= 2] > 0).float().mean())
    assert cos > 0.95, cos
    assert on_planted > 0.95 and off_concept < 0.08, (on_planted, off_concept)
    # The final metrics say the same, per concept, under the inference rule.
    assert res.final["supervision.red.fires_on_concept_pct"] > 30  # a third of red's rows are planted
    assert res.final["supervision.red.fires_elsewhere_pct"] < 8
