"""Prompt attacks (governance.evaluation.attack) against a pipeline with a blocklist applied.

The pipeline is the committed toy world (the untrained architecture when it is not installed),
with a random SAE on the objects hook point and a blocklist for 'red' on the features that are
most often in the TopK there, so the hook fires on every call.
"""
from __future__ import annotations

from typing import Any, Iterator

import numpy as np
import pytest
import torch

from governance.evaluation.attack import (
    attack_mode, attack_unlearning, denoising_loss, encode_with_prefix, fits,
    initial_prefix, paraphrase_set, paraphrases, prefix_room, prefixed_ids, reference_latent, schedule_of,
    whitebox_attack, whitebox_prompts,
)
from governance.enforcement import EnforcedBlocklist, apply_blocklist, blocklist_suspended
from governance.enforcement.intervention import HOOK_PREFIX, enforcer_of
from governance.basemodel.hooks import hook_names
from governance.toyworld.grammar import ATTRIBUTES, ToyPrompt, attribute_of, parse_prompt, vocabulary
from tests.helpers.enforcement import HOOK, frequent_features, random_sae, spec_for

torch.set_num_threads(1)

STEPS = 10
GUIDANCE = 7.5


def _load_toy() -> Any:
    from governance.toyworld.paths import default_pipeline_path, is_trained

    if is_trained():
        from governance.basemodel.loading import load_pipeline

        pipe = load_pipeline(str(default_pipeline_path()))[0]
    else:
        from governance.toyworld.model import build_untrained_pipeline

        pipe = build_untrained_pipeline(seed=0)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    from governance.toyworld.paths import default_pipeline_path, is_trained

    if is_trained():
        from transformers import CLIPTokenizer

        return CLIPTokenizer.from_pretrained(str(default_pipeline_path() / "tokenizer"))
    from governance.toyworld.model import build_tokenizer

    return build_tokenizer()


@pytest.fixture(scope="module")
def blocked_pipe() -> Iterator[Any]:
    pipe = _load_toy()
    sae = random_sae()
    feats = frequent_features(pipe, sae, "a red circle", n=3, steps=4)
    apply_blocklist(pipe, EnforcedBlocklist(spec_for(feats, steps=STEPS, scale=-5.0, gate=0.0), sae))
    yield pipe


def _grad_flags(pipe: Any) -> list[bool]:
    return [p.requires_grad for m in (pipe.unet, pipe.text_encoder) for p in m.parameters()]


def _attached(pipe: Any) -> bool:
    return f"{HOOK_PREFIX}.block:{HOOK}" in hook_names(pipe.unet.get_submodule(HOOK))


# -- paraphrases --------------------------------------------------------------------------------
@pytest.mark.parametrize("concept", [c for names in ATTRIBUTES.values() for c in names])
def test_paraphrases_fit_the_tokenizer_and_keep_the_concept(concept: str, tokenizer: Any) -> None:
    pairs = paraphrases(concept)
    assert len(pairs) >= 10
    kind = attribute_of(concept)
    for text, truth in pairs:
        assert fits(tokenizer, text), text  # never truncated: the concept's words all reach the model
        assert getattr(truth, kind) == concept
        assert parse_prompt(truth.text) == truth  # the ground truth is a grammar prompt
    families = {p.family for p in paraphrase_set(concept)}
    assert families >= {"repeat", "reorder", "slot", "unknown-token", "case", "synonym"}
    assert len({t for t, _ in pairs}) == len(pairs)


def test_synonyms_and_punctuation_are_not_grammar_words(tokenizer: Any) -> None:
    words = {f"{w}</w>" for w in vocabulary()}
    for p in paraphrase_set("red"):
        pieces = tokenizer.convert_ids_to_tokens(tokenizer(p.text).input_ids[1:-1])
        if p.family == "synonym":
            assert "red</w>" not in pieces and any(x not in words for x in pieces), pieces
        if p.family == "unknown-token":  # punctuation is the unknown token, <|endoftext|>
            assert tokenizer.unk_token in pieces, pieces
    assert paraphrase_set("red", tokenizer) == paraphrase_set("red")


def test_prefix_takes_only_free_positions(tokenizer: Any) -> None:
    assert prefix_room(tokenizer, "a red circle") == 5
    assert prefix_room(tokenizer, "a red circle in striped style") == 2
    ids = prefixed_ids(tokenizer, "a red circle", 3)[0].tolist()
    real = tokenizer("a red circle").input_ids
    assert len(ids) == tokenizer.model_max_length
    assert ids[0] == real[0] and ids[4:4 + len(real) - 1] == real[1:]
    with pytest.raises(ValueError, match="no room"):
        prefixed_ids(tokenizer, "a red circle in striped style", 3)
    assert all(w.style is None for w in whitebox_prompts("red")) and len(whitebox_prompts("dotted")) == 4


# -- white-box ----------------------------------------------------------------------------------
def test_gradient_reaches_the_prefix_through_the_enforcement_hook(blocked_pipe: Any) -> None:
    pipe = blocked_pipe
    prompt = ToyPrompt("red", "circle", None)
    x0 = reference_latent(pipe, prompt.text, 0, STEPS, GUIDANCE)
    assert _attached(pipe)  # re-attached after the blocklist-free reference
    scheduler, timesteps = schedule_of(pipe, STEPS)
    t = timesteps[[2, 6]]
    noise = torch.randn((2, *x0.shape[1:]), generator=torch.Generator().manual_seed(0))
    ids = prefixed_ids(pipe.tokenizer, prompt.text, 5)
    enforcer = enforcer_of(pipe)

    def grad() -> torch.Tensor:
        prefix = initial_prefix(pipe, 5, seed=0).requires_grad_(True)
        with attack_mode(pipe), torch.enable_grad():
            loss = denoising_loss(pipe, scheduler, x0, encode_with_prefix(pipe.text_encoder, ids, prefix), t, noise)
            loss.backward()
        assert prefix.grad is not None
        return prefix.grad

    enforcer.reset_trace()
    on = grad()
    assert enforcer.calls and all(c.fired for c in enforcer.calls)  # the hook fired in the backward-enabled forward
    with blocklist_suspended(pipe):
        enforcer.reset_trace()
        off = grad()
        assert not enforcer.calls
    assert torch.isfinite(on).all() and on.abs().sum() > 0
    # The hook is on the gradient's path: with it attached the gradient is a different one.
    assert (on - off).norm() > 1e-3 * off.norm()


def test_whitebox_attack_lowers_the_loss_and_restores_the_pipeline(blocked_pipe: Any) -> None:
    pipe = blocked_pipe
    flags = _grad_flags(pipe)
    res = whitebox_attack(pipe, ToyPrompt("red", "circle", None), 0, steps=STEPS, guidance=GUIDANCE,
                          iterations=4, lr=0.05)
    print(f"white-box loss {res.initial_loss:.4f} -> {res.final_loss:.4f}, prefix ~ {res.nearest_tokens}")
    assert res.final_loss < res.initial_loss
    assert res.n_tokens == 5 and res.prefix.shape == (5, pipe.text_encoder.config.hidden_size)
    assert res.prompt_embeds.shape == (1, pipe.tokenizer.model_max_length, pipe.text_encoder.config.hidden_size)
    assert res.hook_calls == 4 and res.hook_fired_calls == 4 and len(res.losses) == 4
    assert res.image.dtype == np.uint8 and res.image.shape[2] == 3 and res.reference_image is not None
    assert _attached(pipe) and _grad_flags(pipe) == flags
    assert not pipe.unet.training and not pipe.text_encoder.training
    styled = whitebox_attack(pipe, ToyPrompt("red", "circle", "striped"), 0, steps=STEPS, guidance=GUIDANCE,
                             iterations=1, reference=torch.zeros(1, 4, 16, 16))
    assert styled.n_tokens == 2 and styled.reference_image is None


def test_pipeline_state_is_restored_when_the_attack_fails(blocked_pipe: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    import governance.evaluation.attack as attack

    pipe = blocked_pipe
    flags = _grad_flags(pipe)

    def boom(*args: Any, **kwargs: Any) -> None:
        assert all(not f for f in _grad_flags(pipe))  # frozen while attacking
        raise RuntimeError("boom")

    monkeypatch.setattr(attack, "denoising_loss", boom)
    with pytest.raises(RuntimeError, match="boom"):
        whitebox_attack(pipe, ToyPrompt("red", "circle", None), 0, steps=STEPS, guidance=GUIDANCE,
                        iterations=2, reference=torch.zeros(1, 4, 16, 16))
    with pytest.raises(RuntimeError, match="inside"):
        with blocklist_suspended(pipe):
            assert not _attached(pipe)
            raise RuntimeError("inside")
    assert _attached(pipe) and _grad_flags(pipe) == flags


def test_attack_unlearning_reports_ua_in_unit_interval(blocked_pipe: Any) -> None:
    res = attack_unlearning(blocked_pipe, ["red"], seeds=(0,), steps=4, guidance=GUIDANCE, iterations=2,
                            max_prompts=1)
    r = res["red"]
    print({k: v for k, v in r.items() if k.startswith(("UA", "n_"))})
    assert r["kind"] == "colour"
    for key in ("UA_no_attack", "UA_paraphrase", "UA_whitebox"):
        assert 0.0 <= r[key] <= 1.0
    assert r["n_paraphrase"] == len(paraphrases("red")) and r["n_whitebox"] == 1
    truths = {t for _, t in paraphrases("red")} | {ToyPrompt("red", "circle", None)}
    assert r["n_no_attack"] == len(truths)
    for block in ("paraphrase", "whitebox"):
        assert 0.0 <= r[block]["UA_no_attack"] <= 1.0 and 0.0 <= r[block]["UA_unprotected"] <= 1.0
    assert set(r["paraphrase"]["by_family"]) >= {"synonym", "reorder"}
    assert r["whitebox"]["hook_fired_fraction"] == 1.0
    assert _attached(blocked_pipe)
