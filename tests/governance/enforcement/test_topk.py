"""The enforcement hook against a straightforward dense computation of SAEURON.md section 4.

The hook never materialises the TopK indices (it compares each candidate with its token's k-th
largest pre-activation), so these tests pin its decisions to the plain definition: rank every
latent of every token (stable descending sort: ties go to the lower feature index, NaN ranks
highest, as in torch.sort/topk), keep ranks < k, then gate, scale and decode.

Every decision (which feature fires on which token) must be the dense definition's exactly.
Where the hook decides from its bounded partial products, the values it scales are within the
matmul's rounding of the dense product's (which itself rounds differently with its row count on
some CPUs); where a decision lies within rounding, it takes the dense product, bit for bit.
"""
from __future__ import annotations

import pytest
import torch

from governance.enforcement import EnforcedBlocklist
from governance.enforcement.intervention import Enforcer
from governance.formats.blocklist import Approval, BlockedConcept, BlocklistSpec, SaeRef
from governance.basemodel.hooks import from_tokens, to_tokens
from governance.formats.sae_config import SaeConfig
from governance.sae.model import TopKSAE
from governance.formats.mapping import FeatureEntry
from tests.helpers.enforcement import HOOK, ddim_timesteps

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def unet():
    from governance.toyworld.model import build_unet

    return build_unet()


@pytest.fixture(autouse=True, params=["default", "bounded"])
def bounded_rows(request, monkeypatch):
    """Each test twice: with the hook's default rule, and with its bounded products (step 2 of
    Enforcer._candidates) run on every call, however many tokens pass a gate."""
    if request.param == "bounded":
        monkeypatch.setattr(Enforcer, "bounded_rows", 1.0)
    return request.param


def tied_sae(n_latents: int = 48, k: int = 8, distinct: int = 6, seed: int = 0,
             dtype: torch.dtype = torch.float32) -> TopKSAE:
    """An SAE whose encoder has only `distinct` different rows: latents in a group are exactly
    tied on every token, so ties straddle the k-th place all the time."""
    g = torch.Generator().manual_seed(seed)
    sae = TopKSAE(SaeConfig(d_in=64, expansion_factor=1, num_latents=n_latents, k=k))
    with torch.no_grad():
        base_w = torch.randn(distinct, 64, generator=g) / 8
        base_b = torch.randn(distinct, generator=g) * 0.1
        group = torch.arange(n_latents) % distinct
        sae.encoder.weight.copy_(base_w[group])
        sae.encoder.bias.copy_(base_b[group])
        sae.b_dec.copy_(torch.randn(64, generator=g) * 0.1)
    return sae.to(dtype)


def random_sae(n_latents: int = 256, k: int = 16, seed: int = 1) -> TopKSAE:
    torch.manual_seed(seed)
    sae = TopKSAE(SaeConfig(d_in=64, expansion_factor=1, num_latents=n_latents, k=k))
    with torch.no_grad():
        sae.encoder.bias.normal_(0, 0.1)
        sae.b_dec.normal_(0, 0.1)
    return sae


def spec(rules: dict[int, tuple[float, float]], steps: list[int], *, second: dict[int, tuple[float, float]] | None = None
         ) -> BlocklistSpec:
    """rules: feature -> (scale, gate) for every timestep in `steps`; `second`: a second concept."""
    def concept(name: str, mapping: int, r: dict[int, tuple[float, float]]) -> BlockedConcept:
        return BlockedConcept(
            concept=name, kind="colour", mapping_id=mapping, gamma=-1.0, scheduler="DDIMScheduler",
            num_steps=len(steps), approval=Approval(review_id=mapping, by="rob", justification="test"),
            timesteps={t: [FeatureEntry(feature=f, score=0.1, scale=s, gate=gt) for f, (s, gt) in r.items()]
                       for t in steps})

    entries = [concept("red", 1, rules)] + ([concept("blue", 2, second)] if second else [])
    return BlocklistSpec(name="test", version=1, sae=SaeRef(hook_point=HOOK), entries=entries)


def dense_reference(sae: TopKSAE, tokens: torch.Tensor, feats: list[int], scales: list[float],
                    gates: list[float]) -> tuple[torch.Tensor, torch.Tensor]:
    """(new tokens, fire [N, F]) by the book: full pre-activations, full ranking, dense masks."""
    tokens = tokens.to(sae.W_dec.dtype)
    pre = sae.pre_acts(tokens)
    order = torch.sort(pre.detach(), dim=-1, descending=True, stable=True).indices
    rank = torch.empty_like(order).scatter_(-1, order, torch.arange(pre.shape[1]).expand_as(order))
    in_topk = rank < sae.k
    z = pre * in_topk  # per-token TopK code (dense)
    f = torch.tensor(feats)
    z_f = z[:, f]
    s = torch.tensor(scales, dtype=pre.dtype)
    g = torch.tensor(gates, dtype=pre.dtype)
    fire = in_topk[:, f] & (z_f > g) & (z_f > 0)
    z_new = torch.where(fire, z_f * s, z_f)
    return tokens + (z_new - z_f) @ sae.W_dec.detach()[f], fire


# How far an edited token may be from the dense definition's when the hook scaled values from
# its own (bounded) product of the selected columns: a few roundings of z times |s - 1| ||w_dec||.
TOL = {torch.float32: 1e-4, torch.float64: 1e-12, torch.bfloat16: 0.25}


def hook_fire(enf: Enforcer, tokens: torch.Tensor, t: int) -> torch.Tensor:
    """The hook's own decisions for one timestep's tokens: fire [N, F]."""
    site = enf._only_site()
    tab = enf.table(t)
    _, fire = enf._candidates(site.sae, tokens.to(site.sae.W_dec.dtype), tab)
    return torch.zeros(tokens.shape[0], tab.features.numel(), dtype=torch.bool) if fire is None else fire


def assert_as_dense(enf: Enforcer, x: torch.Tensor, t: int, out: torch.Tensor | None, expected: torch.Tensor,
                    fire: torch.Tensor) -> None:
    """Every decision the dense definition's, exactly; a token not edited left bit for bit; an
    edited one within the matmul's rounding of the dense definition's."""
    assert torch.equal(hook_fire(enf, to_tokens(x), t), fire)
    if not fire.any():
        assert out is None
        return
    got, exp = to_tokens(out), expected.to(x.dtype)
    edited = fire.any(1)
    assert torch.equal(got[~edited], exp[~edited])
    assert torch.allclose(got, exp, rtol=0, atol=TOL[enf._only_site().sae.W_dec.dtype])


def encoder_rows(sae: TopKSAE) -> tuple[list[int], object]:
    """How many tokens each call of the SAE's full encoder product saw."""
    seen: list[int] = []
    handle = sae.encoder.register_forward_hook(lambda m, args, out: seen.append(args[0].shape[0]))
    return seen, handle


def run_hook(enf: Enforcer, x: torch.Tensor, t: torch.Tensor):
    enf.reader.current = t
    out = enf._hook(None, (), (x,))
    return None if out is None else out[0]


def fake_pipe(unet):
    return type("P", (), {"unet": unet})()


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("k", [1, 8, 47, 48])
def test_ties_match_the_dense_definition(unet, seed: int, k: int) -> None:
    sae = tied_sae(k=k, seed=seed)
    t = ddim_timesteps(10)[0]
    # Every tie group is represented by a low and a high feature index; gates around the median.
    feats = [0, 6, 42, 1, 43, 5, 47, 2]
    rules = {f: (-1.5 - 0.1 * i, 0.02 * (i % 3)) for i, f in enumerate(feats)}
    enf = Enforcer(fake_pipe(unet), EnforcedBlocklist(spec(rules, [t]), sae))
    g = torch.Generator().manual_seed(100 + seed)
    x = torch.randn(3, 64, 6, 5, generator=g)
    x[0, :, 0, 0] = 0  # a token at x = 0
    x[1, :, 1, :] = sae.b_dec.detach().view(-1, 1)  # tokens whose pre-activations are ReLU(b_enc)
    out = run_hook(enf, x, torch.full((3,), t))
    tokens = to_tokens(x)
    expected, fire = dense_reference(sae, tokens, feats, [rules[f][0] for f in feats], [rules[f][1] for f in feats])
    assert_as_dense(enf, x, t, out, expected, fire)
    if not fire.any():
        return
    rec = enf.calls[-1]
    assert {r["feature"]: r["tokens"] for r in rec.fired} == {
        feats[j]: int(fire[:, j].sum()) for j in range(len(feats)) if fire[:, j].any()}
    for r in rec.fired:
        j = feats.index(r["feature"])
        assert r["samples"] == sorted(set((fire[:, j].nonzero().flatten() // 30).tolist()))


def test_ties_are_actually_exercised() -> None:
    """The tied SAE does put ties across the k-th place, selected features on both sides."""
    sae = tied_sae(k=8)
    x = torch.randn(200, 64)
    pre = sae.pre_acts(x)
    kth = pre.topk(8, dim=-1).values[:, -1:]
    straddle = ((pre == kth).sum(-1) > 1) & ((pre > kth).sum(-1) < 7)
    assert int(straddle.sum()) > 10


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_random_sae_matches_dense_definition(unet, dtype: torch.dtype) -> None:
    sae = random_sae().to(dtype)
    t = ddim_timesteps(10)[3]
    feats = [3, 17, 42, 99, 200]
    rules = {3: (-2.0, 0.05), 17: (-1.0, 0.0), 42: (0.5, 0.1), 99: (-3.0, -1.0), 200: (2.0, 0.3)}
    enf = Enforcer(fake_pipe(unet), EnforcedBlocklist(spec(rules, [t]), sae))
    x = torch.randn(4, 64, 8, 8) * 2
    x += sae.encoder.weight.detach().float()[feats].sum(0).view(1, -1, 1, 1) * torch.rand(4, 1, 8, 8) * 3
    out = run_hook(enf, x, torch.full((4,), t))
    expected, fire = dense_reference(sae, to_tokens(x), feats, [rules[f][0] for f in feats], [rules[f][1] for f in feats])
    assert fire.any() and not fire.all()
    assert out is not None and out.dtype == x.dtype
    assert_as_dense(enf, x, t, out, expected, fire)


@pytest.mark.parametrize("distinct", [48, 6])
def test_nan_ranks_highest_like_topk(unet, distinct: int) -> None:
    """Latents that are NaN on every token take TopK places (torch.topk/sort rank NaN first)."""
    sae = tied_sae(n_latents=48, k=5, distinct=distinct, seed=3)
    with torch.no_grad():
        sae.encoder.weight[[7, 30]] = float("nan")
    t = ddim_timesteps(10)[0]
    feats = [f for f in range(48) if f not in (7, 30)][::2]
    rules = {f: (-1.0, 0.0) for f in feats}
    enf = Enforcer(fake_pipe(unet), EnforcedBlocklist(spec(rules, [t]), sae))
    x = torch.randn(2, 64, 4, 4)
    seen, handle = encoder_rows(sae)
    try:
        out = run_hook(enf, x, torch.full((2,), t))
    finally:
        handle.remove()
    expected, fire = dense_reference(sae, to_tokens(x), feats, [-1.0] * len(feats), [0.0] * len(feats))
    assert fire.any()
    assert seen == [32]  # NaN: no bound holds, so the dense product decides
    assert torch.equal(to_tokens(out), expected)


def test_several_timesteps_in_one_call_and_shared_features(unet) -> None:
    sae = random_sae()
    t0, t1 = ddim_timesteps(10)[:2]
    red = {3: (-2.0, 0.05), 17: (-1.0, 0.0)}
    blue = {17: (5.0, 0.0), 42: (-1.0, 0.0)}  # 17 is red's: red's rule applies
    enf = Enforcer(fake_pipe(unet), EnforcedBlocklist(spec(red, [t0, t1], second=blue), sae))
    x = torch.randn(4, 64, 8, 8) * 2
    x += sae.encoder.weight.detach()[[3, 17, 42]].sum(0).view(1, -1, 1, 1) * torch.rand(4, 1, 8, 8) * 3
    out = run_hook(enf, x, torch.tensor([t1, t0, t1, t0]))
    feats, scales, gates = [3, 17, 42], [-2.0, -1.0, -1.0], [0.05, 0.0, 0.0]
    tokens = to_tokens(x).view(4, 64, 64)
    expected = tokens.clone()
    recs = {c.timestep: c for c in enf.calls[-2:]}
    assert [c.timestep for c in enf.calls[-2:]] == sorted([t0, t1])
    for t, samples in ((t0, [1, 3]), (t1, [0, 2])):
        new, fire = dense_reference(sae, tokens[samples].reshape(-1, 64), feats, scales, gates)
        expected[samples] = new.view(2, 64, 64)
        got = {r["feature"]: (r["tokens"], r["samples"]) for r in recs[t].fired}
        want = {}
        for j, f in enumerate(feats):
            if fire[:, j].any():
                want[f] = (int(fire[:, j].sum()), sorted({samples[i] for i in (fire[:, j].nonzero().flatten() // 64).tolist()}))
        assert got == want and got
        assert {r["concept"] for r in recs[t].fired} == {"red", "blue"}
    got, exp = to_tokens(out), expected.view(-1, 64)
    edited = (exp != tokens.reshape(-1, 64)).any(1)
    assert torch.equal(got[~edited], exp[~edited])
    assert torch.allclose(got, exp, rtol=0, atol=TOL[torch.float32])


def test_gradient_flows_like_the_dense_definition(unet) -> None:
    sae = random_sae()
    t = ddim_timesteps(10)[0]
    rules = {3: (-2.0, 0.05), 17: (-1.0, 0.0), 42: (0.5, 0.0)}
    enf = Enforcer(fake_pipe(unet), EnforcedBlocklist(spec(rules, [t]), sae))
    x = torch.randn(2, 64, 8, 8) * 2
    x += sae.encoder.weight.detach()[[3, 17, 42]].sum(0).view(1, -1, 1, 1) * torch.rand(2, 1, 8, 8) * 3
    x1 = x.clone().requires_grad_(True)
    out = run_hook(enf, x1, torch.full((2,), t))
    w = torch.randn_like(x)
    (out * w).sum().backward()
    x2 = x.clone().requires_grad_(True)
    expected, fire = dense_reference(sae, to_tokens(x2), list(rules), [r[0] for r in rules.values()],
                                     [r[1] for r in rules.values()])
    assert fire.any()
    (from_tokens(expected, 2, 8, 8) * w).sum().backward()
    assert torch.allclose(x1.grad, x2.grad, atol=1e-6)
    assert not torch.equal(x1.grad, w)  # the intervention's Jacobian is not the identity


def test_certain_decisions_skip_the_dense_product_and_no_candidate_skips_every_product(unet) -> None:
    """A call whose every decision is certain from the bounded products (the selected columns
    for every token, the full row of the tokens that can pass a gate) takes no dense product, and
    decides as the dense definition does; a call where no token can pass a gate takes no full
    row at all and is left untouched."""
    sae = random_sae()
    t = ddim_timesteps(10)[0]
    feats = [3, 17, 42]
    x = torch.randn(2, 64, 8, 8)
    concept = torch.rand(2, 1, 8, 8) < 0.25  # the concept's tokens: a quarter of the map
    x += sae.encoder.weight.detach()[feats].sum(0).view(1, -1, 1, 1) * concept * 4
    pre = sae.pre_acts(to_tokens(x))[:, feats].detach()
    off = pre[~concept.permute(0, 2, 3, 1).reshape(-1)]
    rules = {f: (-2.0, float(off[:, j].max()) + 0.05) for j, f in enumerate(feats)}  # above every other token
    enf = Enforcer(fake_pipe(unet), EnforcedBlocklist(spec(rules, [t]), sae))
    seen, handle = encoder_rows(sae)
    rows: list[int] = []
    certain = enf._certain

    def spy(*args):  # the rows whose full product the hook took
        rows.append(int(args[6].numel()))  # (sae, xd, tab, small, err, floor, rows, c, a)
        return certain(*args)

    enf._certain = spy
    try:
        out = run_hook(enf, x, torch.full((2,), t))
    finally:
        handle.remove()
        del enf._certain
    expected, fire = dense_reference(sae, to_tokens(x), feats, [-2.0] * 3, [rules[f][1] for f in feats])
    assert fire.any()
    assert seen == [] and 0 < rows[0] <= int(concept.sum()) < 128  # the concept's tokens only
    assert_as_dense(enf, x, t, out, expected, fire)
    assert sum(r["tokens"] for r in enf.calls[-1].fired) == int(fire.sum())
    # A map where no token reaches a gate costs no full row at all, and is left untouched.
    seen, handle = encoder_rows(sae)
    rows.clear()
    try:
        assert run_hook(enf, torch.randn(2, 64, 8, 8) * 0.1, torch.full((2,), t)) is None
    finally:
        handle.remove()
    assert seen == [] and rows == []


def test_a_decision_within_rounding_takes_the_dense_product_for_itself_only(unet) -> None:
    """One token sits exactly at its gate (only the dense product can tell: z > g is false), the
    others are settled by the bounds: the call takes the dense product once, its values bit for
    bit, and the k-th value of the undecided token's row only."""
    sae = random_sae()
    t = ddim_timesteps(10)[0]
    x = torch.randn(2, 64, 8, 8)
    concept = torch.zeros(2, 1, 8, 8, dtype=torch.bool)
    concept[0, 0, :2, :3] = True  # 6 of 128 tokens carry the feature strongly
    x += sae.encoder.weight.detach()[3].view(1, -1, 1, 1) * concept * 6
    pre = sae.pre_acts(to_tokens(x))[:, 3].detach()
    on = concept.permute(0, 2, 3, 1).reshape(-1)
    at = int(torch.where(on, pre, torch.full_like(pre, float("inf"))).argmin())  # the weakest of them
    gate = float(pre[at])  # exactly its value: it does not fire, the others do
    enf = Enforcer(fake_pipe(unet), EnforcedBlocklist(spec({3: (-1.0, gate)}, [t]), sae))
    seen, handle = encoder_rows(sae)
    kth_rows: list[int] = []
    kth = enf._kth_largest
    enf._kth_largest = lambda k, y, rows: (kth_rows.append(y.shape[0] if rows is None else rows.numel()),
                                            kth(k, y, rows))[1]
    try:
        out = run_hook(enf, x, torch.full((2,), t))
    finally:
        handle.remove()
    expected, fire = dense_reference(sae, to_tokens(x), [3], [-1.0], [gate])
    assert not fire[at, 0] and int(fire.sum()) == 5
    assert seen == [128] and kth_rows == []  # z > g settles it on the dense value: no k-th value needed
    assert torch.equal(to_tokens(out), expected)


@pytest.mark.parametrize("scale", [1.0, 2.0 ** -100])
def test_a_near_tie_at_the_kth_place_decides_as_the_dense_definition_at_any_scale(unet, scale: float) -> None:
    """Adversarial near-ties: token 0's selected feature sits just below another latent's value in
    the dense product but above that latent's value in a one-row product (where this CPU's GEMM
    rounds differently), with k putting the other latent at the k-th place. At 2^-100 a float32
    norm of the token underflowed and the per-token bound became 0 (found by review, stop 33)."""
    n = d = 64
    c = 4 * (d + 2) * torch.finfo(torch.float32).eps
    cases = 0
    for seed in range(12):
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(n, d, generator=g)
        w = torch.randn(n, d, generator=g) * 4
        x0 = x[0].clone()
        x[1:] -= (x[1:] @ x0 / x0.dot(x0) + 1.0)[:, None] * x0  # the other tokens stay below the gate
        xs = x * scale
        for j in range(1, n):
            wt = w.clone()
            wt[j] -= (wt[j].dot(x0) - 1e-2) / x0.dot(x0) * x0
            sae = TopKSAE(SaeConfig(d_in=d, expansion_factor=1, num_latents=n, k=1))
            with torch.no_grad():
                sae.encoder.weight.copy_(wt)
                sae.encoder.bias.zero_()
                sae.b_dec.zero_()
                yj, yrj = float(sae.encoder(xs)[0, j]), float(sae.encoder(xs[:1])[0, j])
                if not (yj > 0 and yrj < yj * (1 - 3 * c)):
                    continue  # this CPU rounds the two alike here
                # Feature 0 along token 0, between the two values of latent j.
                sae.encoder.weight[0] = x0 / x0.dot(x0) * ((yj + yrj * (1 + 3 * c)) / 2 / scale)
                y0 = sae.encoder(xs)[0]
            sae.cfg.k = int((y0 > y0[0]).sum())  # f just out of the dense TopK, j at its k-th place
            t = ddim_timesteps(10)[0]
            enf = Enforcer(fake_pipe(unet), EnforcedBlocklist(spec({0: (-1.0, 0.0)}, [t]), sae))
            _, fire = dense_reference(sae, xs, [0], [-1.0], [0.0])
            assert torch.equal(hook_fire(enf, xs, t), fire)
            cases += 1
    print(f"near-ties constructed: {cases}")  # none on a CPU whose GEMM rounds one row like many


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gates_exactly_at_a_tokens_value_decide_as_the_dense_definition(unet, dtype: torch.dtype) -> None:
    """The pre-filter's product may round differently from the full one; its margin must never
    drop a token that fires, nor change a decision taken exactly at a gate."""
    sae = random_sae().to(dtype)
    t = ddim_timesteps(10)[0]
    feats = [3, 17, 42]
    x = torch.randn(2, 64, 8, 8) * 2
    x += sae.encoder.weight.detach().float()[feats].sum(0).view(1, -1, 1, 1) * torch.rand(2, 1, 8, 8) * 3
    pre = sae.pre_acts(to_tokens(x).to(dtype))[:, feats].detach().float()
    # Gates at a token's own value (it does not fire: z > g is false), and one ulp below another's.
    g0 = float(pre[:, 0].max())
    g1 = float(torch.nextafter(pre[:, 1].max(), torch.tensor(-1.0)))
    g2 = float(pre[:, 2].median())
    gates = [g0, g1, g2]
    rules = {f: (-1.5, g) for f, g in zip(feats, gates)}
    enf = Enforcer(fake_pipe(unet), EnforcedBlocklist(spec(rules, [t]), sae))
    seen, handle = encoder_rows(sae)
    try:
        out = run_hook(enf, x, torch.full((2,), t))
    finally:
        handle.remove()
    expected, fire = dense_reference(sae, to_tokens(x), feats, [-1.5] * 3, gates)
    assert fire.any()
    assert seen == [128]  # decisions within rounding of a gate: the dense product over every token
    assert out is not None and torch.equal(to_tokens(out), expected.to(x.dtype))


def test_prefilter_margin_covers_a_rounding_difference(unet) -> None:
    """The pre-filter's product of the selected columns may differ from the full product in the
    last bits; a token that fires by the full product must survive the pre-filter even when the
    pre-filter's value lands just below the gate (simulated: its bias lowered by 1e-5)."""
    sae = random_sae()
    t = ddim_timesteps(10)[0]
    x = torch.randn(1, 64, 4, 4) * 2
    x += sae.encoder.weight.detach()[3].view(1, -1, 1, 1) * 3
    pre = sae.pre_acts(to_tokens(x))[:, 3].detach()
    top = int(pre.argmax())
    gate = float(torch.nextafter(pre[top], torch.tensor(-1.0)))  # only the top token passes
    rules = {3: (-1.0, gate)}
    enf = Enforcer(fake_pipe(unet), EnforcedBlocklist(spec(rules, [t]), sae))
    tab = enf.table(t)
    tab.b_enc = tab.b_enc - 1e-5  # the pre-filter now reads the top token below its gate
    out = run_hook(enf, x, torch.full((1,), t))
    expected, fire = dense_reference(sae, to_tokens(x), [3], [-1.0], [gate])
    assert fire[top, 0] and int(fire.sum()) == 1
    assert out is not None and torch.equal(to_tokens(out), expected)


def test_prefilter_margin_widens_when_float32_matmuls_may_run_in_reduced_precision() -> None:
    from governance.enforcement.intervention import _matmul_rounding

    before = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("highest")
        assert _matmul_rounding(torch.float32) == torch.finfo(torch.float32).eps
        torch.set_float32_matmul_precision("high")  # TF32: 10 mantissa bits
        assert _matmul_rounding(torch.float32) == 2.0 ** -10
        torch.set_float32_matmul_precision("medium")  # bfloat16 products
        assert _matmul_rounding(torch.float32) == 2.0 ** -7
        assert _matmul_rounding(torch.bfloat16) == torch.finfo(torch.bfloat16).eps
    finally:
        torch.set_float32_matmul_precision(before)
