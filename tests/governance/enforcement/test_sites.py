"""Several SAEs, one per hook point: one enforcement site each on one shared timestep reader,
named hooks that refuse collisions, the shared-feature rule, traces per hook point."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from governance.basemodel.hooks import HookNameTaken, add_named_hook, hook_names, to_tokens
from governance.enforcement import EnforcedBlocklist, apply_blocklist, remove_blocklist
from governance.enforcement.intervention import HOOK_PREFIX, Enforcer
from governance.enforcement.trace import build_traces
from governance.formats.blocklist import Approval, BlockedConcept, BlocklistSpec, SaeRef
from governance.formats.mapping import FeatureEntry
from tests.helpers.enforcement import ddim_timesteps, frequent_features, frequent_features_at, random_sae

torch.set_num_threads(1)

A, B = "up_blocks.1.attentions.1", "up_blocks.1.attentions.2"
DEPLOYMENT = {"path": "/d", "manifest_sha256": "0" * 64, "deployment_id": None, "blocklist": "t@1", "built_by": "e",
              "built_at": "now"}


def entry(concept: str, hook: str, feats: list[int], steps: int = 10, scale: float = -5.0, gate: float = 0.0,
          mapping_id: int = 1) -> BlockedConcept:
    ts = {t: [FeatureEntry(feature=f, score=0.1, scale=scale, gate=gate) for f in feats] for t in ddim_timesteps(steps)}
    return BlockedConcept(concept=concept, kind="colour", mapping_id=mapping_id, hook_point=hook, gamma=-1.0,
                          scheduler="DDIMScheduler", num_steps=steps, approval=Approval(review_id=mapping_id), timesteps=ts)


def two_site_spec(*entries: BlockedConcept) -> BlocklistSpec:
    return BlocklistSpec(name="t", version=1, saes=[SaeRef(hook_point=A), SaeRef(hook_point=B)], entries=list(entries))


def _gen(pipe, guidance=7.5, steps=10, n=2):
    g = [torch.Generator().manual_seed(i) for i in range(n)]
    return pipe(["a red circle"] * n, num_inference_steps=steps, guidance_scale=guidance, generator=g,
                output_type="np").images


@pytest.fixture
def two_saes(toy_pipe):
    sa, sb = random_sae(seed=0), random_sae(seed=1)
    return sa, sb, frequent_features(toy_pipe, sa, n=3), frequent_features_at(toy_pipe, sb, B)


@pytest.mark.parametrize("guidance", [7.5, 1.0])
def test_two_saes_at_two_blocks(toy_pipe, two_saes, guidance: float) -> None:
    sa, sb, fa, fb = two_saes
    plain = _gen(toy_pipe, guidance)
    spec = two_site_spec(entry("red", A, fa, mapping_id=1), entry("dotted", B, fb, mapping_id=2))
    enf = apply_blocklist(toy_pipe, EnforcedBlocklist(spec, {A: sa, B: sb}))
    assert hook_names(toy_pipe.unet) == [f"{HOOK_PREFIX}.timestep"]  # one shared reader
    for hook in (A, B):
        assert hook_names(toy_pipe.unet.get_submodule(hook)) == [f"{HOOK_PREFIX}.block:{hook}"]
    enforced = _gen(toy_pipe, guidance)
    assert not np.array_equal(plain, enforced)
    assert {c.hook_point for c in enf.calls} == {A, B}
    assert len(enf.calls) == 2 * 10  # every UNet call at both sites
    fired = {(f["hook_point"], f["concept"]) for c in enf.calls for f in c.fired}
    assert fired == {(A, "red"), (B, "dotted")}
    traces = build_traces(enf.calls, 2, guidance > 1, DEPLOYMENT, ["a red circle"] * 2, [0, 1])
    assert len(traces[0].unet_calls) == 10  # the two sites' records of a call merge into one entry
    assert {(s.hook_point, s.concept) for c in traces[0].unet_calls for s in c.suppressed} == fired
    assert remove_blocklist(toy_pipe)
    assert all(not n.startswith(HOOK_PREFIX) for m in toy_pipe.unet.modules() for n in hook_names(m))
    assert np.array_equal(plain, _gen(toy_pipe, guidance))


def test_empty_two_site_blocklist_is_bit_identical(toy_pipe, two_saes) -> None:
    sa, sb, _, _ = two_saes
    plain = _gen(toy_pipe)
    apply_blocklist(toy_pipe, EnforcedBlocklist(two_site_spec(), {A: sa, B: sb}))
    assert np.array_equal(plain, _gen(toy_pipe))


def test_a_concept_blocked_at_two_blocks_and_a_second_order_scheduler(toy_pipe, two_saes) -> None:
    from diffusers import HeunDiscreteScheduler

    sa, sb, fa, fb = two_saes
    toy_pipe.scheduler = HeunDiscreteScheduler.from_config(toy_pipe.scheduler.config)
    spec = two_site_spec(entry("red", A, fa, mapping_id=1), entry("red", B, fb, mapping_id=2))
    enf = apply_blocklist(toy_pipe, EnforcedBlocklist(spec, {A: sa, B: sb}))
    calls: list[int] = []
    h = toy_pipe.unet.register_forward_pre_hook(lambda m, a, kw: calls.append(1), with_kwargs=True)
    try:
        _gen(toy_pipe, steps=5, n=1)
    finally:
        h.remove()
    assert len(calls) > 5  # Heun: two UNet calls per step
    assert len(enf.calls) == 2 * len(calls) and {c.call for c in enf.calls} == set(range(1, len(calls) + 1))
    assert {(f["hook_point"], f["mapping_id"]) for c in enf.calls for f in c.fired} == {(A, 1), (B, 2)}


def test_a_hook_name_that_is_taken_is_refused(toy_pipe, two_saes) -> None:
    sa, sb, fa, fb = two_saes
    block = toy_pipe.unet.get_submodule(A)
    add_named_hook(block, f"{HOOK_PREFIX}.block:{A}", lambda m, a, o: None)
    enf = Enforcer(toy_pipe, EnforcedBlocklist(two_site_spec(entry("red", A, fa)), {A: sa, B: sb}))
    with pytest.raises(HookNameTaken, match="already registered"):
        enf.attach()
    # the failed attach left nothing of its own behind
    assert hook_names(toy_pipe.unet) == [] and hook_names(toy_pipe.unet.get_submodule(B)) == []
    assert hook_names(block) == [f"{HOOK_PREFIX}.block:{A}"]


def test_shared_feature_fires_per_concept_and_takes_the_smallest_scale() -> None:
    """Red selects feature f with scale -1, gate g_lo; blue selects it with scale -4, gate g_hi.
    Tokens above g_hi fire for both (scale -4 applies, the record names both concepts); tokens
    between the gates fire for red only (scale -1); below both, nothing."""
    from governance.toyworld.model import build_unet

    sae = random_sae()
    f = 7
    x = torch.randn(2, 64, 8, 8) * 2 + sae.encoder.weight[f].view(1, -1, 1, 1) * torch.rand(2, 1, 8, 8) * 4
    tokens = to_tokens(x)
    z = sae.encode_dense(tokens)
    on = z[:, f][z[:, f] > 0]
    assert on.numel() > 8
    g_lo, g_hi = float(on.detach().quantile(0.2)), float(on.detach().quantile(0.6))
    spec = BlocklistSpec(name="t", saes=[SaeRef(hook_point=A)], entries=[
        entry("red", A, [f], scale=-1.0, gate=g_lo, mapping_id=1),
        entry("blue", A, [f], scale=-4.0, gate=g_hi, mapping_id=2)])
    enf = Enforcer(type("P", (), {"unet": build_unet()})(), EnforcedBlocklist(spec, sae))
    t = ddim_timesteps(10)[0]
    enf.reader.current = torch.tensor([t, t])
    out = to_tokens(enf._hook(None, (), (x,))[0])
    zf = z[:, f]
    scale = torch.where(zf > g_hi, -4.0, torch.where(zf > g_lo, -1.0, 1.0))
    z2 = z.clone()
    z2[:, f] = zf * scale
    assert torch.allclose(out, tokens + (z2 - z) @ sae.W_dec, atol=1e-5)
    fired = {r["concept"]: r["tokens"] for r in enf.calls[-1].fired}
    assert fired == {"red": int((zf > g_lo).sum()), "blue": int((zf > g_hi).sum())}
    assert 0 < fired["blue"] < fired["red"]


def test_a_leftover_enforcer_never_removes_or_fakes_the_current_ones_hooks(toy_pipe, two_saes) -> None:
    sa, sb, fa, fb = two_saes
    bl = EnforcedBlocklist(two_site_spec(entry("red", A, fa), entry("dotted", B, fb, mapping_id=2)), {A: sa, B: sb})
    old = apply_blocklist(toy_pipe, bl)
    new = apply_blocklist(toy_pipe, bl)  # replaces `old` (its hooks were removed with it)
    assert not old.attached() and new.attached()
    old.remove()  # must not take the current enforcer's hooks with it
    assert new.attached() and hook_names(toy_pipe.unet) == [f"{HOOK_PREFIX}.timestep"]
    remove_blocklist(toy_pipe)
    assert not new.attached()
    new.attach()  # re-attaches every site, not only the timestep reader
    assert new.attached() and all(hook_names(toy_pipe.unet.get_submodule(h)) == [f"{HOOK_PREFIX}.block:{h}"]
                                  for h in (A, B))
    new.remove()


def test_an_sae_of_another_width_than_its_block_is_refused(toy_pipe) -> None:
    from governance.enforcement import EnforcementError

    wide = random_sae(d_in=32)
    spec = BlocklistSpec(name="t", saes=[SaeRef(hook_point=A)], entries=[entry("red", A, [1])])
    with pytest.raises(EnforcementError, match="reads 32 channels, the block outputs 64"):
        apply_blocklist(toy_pipe, EnforcedBlocklist(spec, wide))
