from __future__ import annotations

import numpy as np
import pytest
import torch

from governance.enforcement import EnforcedBlocklist, EnforcementError, apply_blocklist, remove_blocklist
from governance.enforcement.intervention import HOOK_PREFIX, Enforcer
from governance.basemodel.hooks import from_tokens, hook_names, to_tokens
from tests.helpers.enforcement import HOOK, frequent_features, random_sae, spec_for

torch.set_num_threads(1)


def _gen(pipe, prompt="a red circle", steps=10, guidance=7.5, seed=0, n=1):
    g = [torch.Generator().manual_seed(seed + i) for i in range(n)]
    prompts = [prompt] * n if isinstance(prompt, str) else prompt
    return pipe(prompts, num_inference_steps=steps, guidance_scale=guidance, generator=g, output_type="np").images


def test_empty_blocklist_is_bit_identical(toy_pipe) -> None:
    plain = _gen(toy_pipe)
    apply_blocklist(toy_pipe, EnforcedBlocklist(spec_for([]), random_sae()))
    assert np.array_equal(plain, _gen(toy_pipe))


def test_hook_on_but_nothing_firing_changes_nothing(toy_pipe) -> None:
    sae = random_sae()
    plain = _gen(toy_pipe)
    enf = apply_blocklist(toy_pipe, EnforcedBlocklist(spec_for([0, 1, 2], gate=1e9), sae))
    assert f"{HOOK_PREFIX}.block:{HOOK}" in hook_names(toy_pipe.unet.get_submodule(HOOK))
    assert np.array_equal(plain, _gen(toy_pipe))
    assert len(enf.calls) == 10 and all(not c.fired for c in enf.calls)


def test_faithful_update_matches_dense_formula() -> None:
    sae = random_sae()
    feats = [3, 17, 42]
    spec = spec_for(feats, scale=-2.0, gate=0.05)

    class FakePipe:
        def __init__(self, unet):
            self.unet = unet

    from governance.toyworld.model import build_unet

    unet = build_unet()
    enf = Enforcer(FakePipe(unet), EnforcedBlocklist(spec, sae))
    t = sorted(spec.entries[0].timesteps)[0]
    x = torch.randn(2, 64, 8, 8) * 2
    # Make the chosen features fire on some tokens: push x along their encoder directions.
    x += sae.encoder.weight[feats].sum(0).view(1, -1, 1, 1) * torch.rand(2, 1, 8, 8) * 3
    enf.reader.current = torch.tensor([t, t])
    out = enf._hook(None, (), (x,))[0]
    tokens = to_tokens(x)
    z = sae.encode_dense(tokens)
    z2 = z.clone()
    for f in feats:
        sel = (z[:, f] > 0.05) & (z[:, f] > 0)
        z2[sel, f] = z[sel, f] * -2.0
    assert int(((z2 - z) != 0).sum()) > 0
    expected = tokens + (z2 - z) @ sae.W_dec
    assert torch.allclose(to_tokens(out), expected, atol=1e-5)
    # Everything outside the fired tokens is untouched.
    changed = (z2 - z).abs().sum(1) > 0
    assert torch.equal(to_tokens(out)[~changed], tokens[~changed])
    rec = enf.calls[-1]
    assert {f["feature"] for f in rec.fired} <= set(feats) and rec.fired[0]["concept"] == "red"


def test_reference_error_mode_is_two_xhat_minus_x_when_nothing_fires() -> None:
    sae = random_sae()
    spec = spec_for([5], gate=1e9)
    from governance.toyworld.model import build_unet

    unet = build_unet()
    enf = Enforcer(type("P", (), {"unet": unet})(), EnforcedBlocklist(spec, sae), error_mode="reference")
    x = torch.randn(1, 64, 8, 8)
    enf.reader.current = torch.tensor([sorted(spec.entries[0].timesteps)[0]])
    out = enf._hook(None, (), (x,))[0]
    x_hat, _ = sae(to_tokens(x))
    assert torch.allclose(to_tokens(out), 2 * x_hat - to_tokens(x), atol=1e-5)


@pytest.mark.parametrize("guidance", [7.5, 1.0])
def test_suppression_changes_output_with_and_without_guidance_and_batches(toy_pipe, guidance: float) -> None:
    sae = random_sae()
    feats = frequent_features(toy_pipe, sae)
    plain = _gen(toy_pipe, guidance=guidance, n=2)
    enf = apply_blocklist(toy_pipe, EnforcedBlocklist(spec_for(feats, scale=-5.0), sae))
    enforced = _gen(toy_pipe, guidance=guidance, n=2)
    assert enforced.shape == plain.shape == (2, 32, 32, 3)
    for i in range(2):
        assert not np.array_equal(plain[i], enforced[i])
    batch = 4 if guidance > 1 else 2  # CFG doubles the UNet batch
    fired_samples = {s for c in enf.calls for f in c.fired for s in f["samples"]}
    assert fired_samples == set(range(batch))
    remove_blocklist(toy_pipe)
    assert np.array_equal(plain, _gen(toy_pipe, guidance=guidance, n=2))


def test_apply_is_idempotent_and_remove_is_clean(toy_pipe) -> None:
    sae = random_sae()
    bl = EnforcedBlocklist(spec_for([1, 2]), sae)
    apply_blocklist(toy_pipe, bl)
    apply_blocklist(toy_pipe, bl)
    block = toy_pipe.unet.get_submodule(HOOK)
    assert len(block._forward_hooks) == 1 and len(toy_pipe.unet._forward_pre_hooks) == 1
    assert remove_blocklist(toy_pipe)
    assert len(block._forward_hooks) == 0 and len(toy_pipe.unet._forward_pre_hooks) == 0
    assert not remove_blocklist(toy_pipe)


@pytest.mark.parametrize("scheduler", ["DDIMScheduler", "PNDMScheduler", "EulerDiscreteScheduler", "HeunDiscreteScheduler"])
def test_other_schedulers_and_step_counts_use_nearest_scored_timestep(toy_pipe, scheduler: str) -> None:
    import diffusers

    toy_pipe.scheduler = getattr(diffusers, scheduler).from_config(toy_pipe.scheduler.config)
    sae = random_sae()
    feats = frequent_features(toy_pipe, sae, steps=5)
    spec = spec_for(feats, steps=10, scale=-5.0)
    scored = sorted(spec.entries[0].timesteps)
    enf = apply_blocklist(toy_pipe, EnforcedBlocklist(spec, sae))
    unet_calls = []
    h = toy_pipe.unet.register_forward_pre_hook(lambda m, a, kw: unet_calls.append(1), with_kwargs=True)
    try:
        _gen(toy_pipe, steps=7)
    finally:
        h.remove()
    assert len(enf.calls) == len(unet_calls)  # Heun: two UNet calls per step, both enforced
    for c in enf.calls:
        nearest = min(scored, key=lambda s: abs(s - c.timestep))
        assert c.scored_timesteps == [nearest]
    assert any(c.fired for c in enf.calls)


def test_strict_schedule_refuses_unscored_timesteps(toy_pipe) -> None:
    sae = random_sae()
    apply_blocklist(toy_pipe, EnforcedBlocklist(spec_for([1], steps=10), sae), schedule="strict")
    _gen(toy_pipe, steps=10)  # the scored schedule itself is fine
    with pytest.raises(EnforcementError, match="not scored"):
        _gen(toy_pipe, steps=7)


def test_feature_outside_sae_width_is_refused(toy_pipe) -> None:
    with pytest.raises(EnforcementError, match="outside the SAE"):
        apply_blocklist(toy_pipe, EnforcedBlocklist(spec_for([10_000]), random_sae()))
