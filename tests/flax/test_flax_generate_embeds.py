"""Flax generate() with a prompt given as inputs_embeds, and with token_type_ids, against our PyTorch generate() (itself
tested against transformers 4.57.6's in tests/torch/test_generate_hooks.py) on the same random tiny checkpoint
(test_flax_generate.py's module-scoped pair): the same token ids in greedy decoding, beam search and with processors;
what a streamer and stop strings see; the refusals of bad inputs by name. And the compiled code itself: the prefill
and the loop lower without a host callback (generate() validates on the host before tracing).

inputs_embeds: only the new ids come back, and lengths (max_length, min_length) count the prompt's positions, as in
transformers. token_type_ids: every new token takes the type of the prompt's last column.
"""

from __future__ import annotations

import numpy as np
import pytest

from conftest import requires_flax, requires_torch

pytestmark = [requires_flax, requires_torch]
jax = pytest.importorskip("jax")
torch = pytest.importorskip("torch")

from test_flax_generate import IDS, MASK, PAD, Letters, Recorder, assert_same_ids, np_of, pair, run  # noqa: E402, F401

TYPES = np.array([[1, 1, 2, 2, 2, 2], [3, 3, 3, 4, 4, 4], [5, 5, 5, 5, 5, 6]])


@pytest.fixture(scope="module")
def embeds(pair):
    """(embeddings (3, 6, 32) near the prompt's tokens', eos: a token greedy decoding from them makes early in row
    0)."""
    tm, _, _ = pair
    rng = np.random.default_rng(0)
    x = tm.transformer.wte.weight.detach().numpy()[IDS] + 0.1 * rng.standard_normal((*IDS.shape, 32))
    x = x.astype(np.float32)
    free = np_of(generate(tm, inputs_embeds=x, attention_mask=MASK, max_new_tokens=8))
    return x, int(free[0, 2])


def generate(model, **kwargs):
    """run() with every numpy argument as a torch tensor for the torch model."""
    if isinstance(model, torch.nn.Module):
        kwargs = {k: torch.tensor(v) if isinstance(v, np.ndarray) else v for k, v in kwargs.items()}
        return model.generate(**kwargs) if kwargs.get("return_dict_in_generate") else run(model, **kwargs)
    return run(model, **kwargs)


# -- inputs_embeds ---------------------------------------------------------------------------------------------------
STRATEGIES = [dict(), dict(num_beams=2, num_return_sequences=2),
              dict(repetition_penalty=1.5, no_repeat_ngram_size=2, min_new_tokens=4)]


@pytest.mark.parametrize("strategy", STRATEGIES, ids=["greedy", "beams", "processors"])
def test_inputs_embeds_like_torch(pair, embeds, strategy):
    """Only the new ids come back, the same as torch's; processors see only them (repetition penalty, n-grams,
    min_new_tokens); rows stop at eos and are padded."""
    tm, fm, _ = pair
    x, eos = embeds
    kwargs = dict(inputs_embeds=x, attention_mask=MASK, max_new_tokens=7, pad_token_id=PAD, eos_token_id=eos,
                  **strategy)
    expected = np_of(generate(tm, **kwargs))
    assert_same_ids(generate(fm, **kwargs), expected)
    assert expected.shape[1] <= 7


def test_inputs_embeds_lengths_scores_streamer_and_stop_strings(pair, embeds):
    """max_length counts the prompt's positions (6 embedded + 4 new ids); the per-step scores are torch's; the
    streamer first gets the prompt's (empty) ids, then each new token; stop strings read only the new ids."""
    tm, fm, _ = pair
    x, _ = embeds
    kwargs = dict(inputs_embeds=x, attention_mask=MASK, max_length=10, pad_token_id=PAD,
                  return_dict_in_generate=True, output_scores=True)
    a, b = generate(tm, **kwargs), generate(fm, **kwargs)
    assert np_of(a.sequences).shape == (3, 4)
    assert_same_ids(a, b)
    assert len(a.scores) == len(b.scores) == 4
    for s, t in zip(a.scores, b.scores):
        assert np.abs(np_of(s) - np_of(t)).max() < 1e-4
    ta, fa = Recorder(), Recorder()
    kwargs = dict(inputs_embeds=x, attention_mask=MASK, max_new_tokens=7, pad_token_id=PAD)
    assert_same_ids(generate(tm, streamer=ta, **kwargs), generate(fm, streamer=fa, **kwargs))
    assert len(ta.calls) == len(fa.calls) and fa.calls[0].shape == (3, 0) and fa.calls[-1] == "end"
    for s, t in zip(ta.calls[:-1], fa.calls[:-1]):
        assert np.array_equal(s, t)
    free = np_of(generate(tm, **kwargs))
    text = Letters().decode(free[1, 1:3])  # two tokens row 1 makes
    kwargs = dict(kwargs, stop_strings=[text], tokenizer=Letters(), eos_token_id=PAD)
    assert_same_ids(generate(tm, **kwargs), generate(fm, **kwargs))


def test_inputs_embeds_refusals(pair, embeds):
    _, fm, _ = pair
    x, _ = embeds
    with pytest.raises(ValueError, match="give input_ids or inputs_embeds to generate\\(\\), not both"):
        fm.generate(IDS, inputs_embeds=x, max_new_tokens=2)
    with pytest.raises(ValueError, match="inputs_embeds must be a float tensor \\(batch, length, 32\\)"):
        fm.generate(inputs_embeds=x[..., :8], max_new_tokens=2)
    with pytest.raises(ValueError, match="inputs_embeds must be a float tensor"):
        fm.generate(inputs_embeds=IDS, max_new_tokens=2)
    with pytest.raises(ValueError, match="reads inputs_embeds on the host"):
        jax.jit(lambda e: fm.generate(inputs_embeds=e, max_new_tokens=2))(x)


# -- token_type_ids --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("strategy", [dict(), dict(num_beams=2)], ids=["greedy", "beams"])
def test_token_type_ids_like_torch(pair, strategy):
    """The prompt's token types; every new token takes the last one's (an embedding of the token table added in
    the compiled step); they change the ids."""
    tm, fm, _ = pair
    kwargs = dict(input_ids=IDS, attention_mask=MASK, token_type_ids=TYPES, max_new_tokens=7, pad_token_id=PAD,
                  **strategy)
    expected = np_of(generate(tm, **kwargs))
    assert_same_ids(generate(fm, **kwargs), expected)
    without = {k: v for k, v in kwargs.items() if k != "token_type_ids"}
    assert not np.array_equal(np_of(generate(tm, **without)), expected)


def test_token_type_ids_with_inputs_embeds(pair, embeds):
    tm, fm, _ = pair
    x, _ = embeds
    kwargs = dict(inputs_embeds=x, attention_mask=MASK, token_type_ids=TYPES, max_new_tokens=7, pad_token_id=PAD)
    assert_same_ids(generate(fm, **kwargs), generate(tm, **kwargs))


def test_token_type_ids_refusals(pair):
    _, fm, _ = pair
    with pytest.raises(ValueError, match="token_type_ids must be a tensor of the prompt's shape"):
        fm.generate(IDS, token_type_ids=TYPES[:, :2], max_new_tokens=2)
    with pytest.raises(ValueError, match="token_type_ids must be ids in 0..99 .* got values 101..106"):
        fm.generate(IDS, token_type_ids=TYPES + 100, max_new_tokens=2)
    with pytest.raises(ValueError, match="got values -1..4"):
        fm.generate(IDS, token_type_ids=TYPES - 2, max_new_tokens=2)
    with pytest.raises(TypeError, match="token_type_ids must hold integer ids, got float"):
        fm.generate(IDS, token_type_ids=TYPES.astype(np.float32), max_new_tokens=2)


# -- the compiled code holds no host callback ------------------------------------------------------------------------
def test_compiled_prefill_and_loop_have_no_host_callback(pair, embeds, monkeypatch):
    """generate() validates every input on the host before tracing; its compiled functions run the trunk's embed
    and core, not the checked __call__, whose range checks under a trace are jax.debug.callback host calls. Each
    function generate() calls is lowered with the arguments of the call (ids, types, embeds; greedy and beams) and
    its StableHLO must hold no callback; the model's own forward under jax.jit does (the check can fail)."""
    from gpt2.flax import generation

    _, fm, _ = pair
    x, _ = embeds
    lowered = {}
    real = generation._function

    def spy(model, key, build):
        function = real(model, key, build)

        def call(*args):
            lowered.setdefault(key[0], []).append(function.lower(*args).as_text())
            return function(*args)
        return call

    monkeypatch.setattr(generation, "_function", spy)
    fm.generate(IDS, attention_mask=MASK, token_type_ids=TYPES, max_new_tokens=7, pad_token_id=PAD)
    fm.generate(inputs_embeds=x, attention_mask=MASK, max_new_tokens=7, pad_token_id=PAD, num_beams=2)
    assert sorted(lowered) == ["beam", "prefill", "sample"] and len(lowered["prefill"]) == 2
    for kind, texts in lowered.items():
        for text in texts:
            assert "callback" not in text, f"the compiled {kind} function holds a host callback"
    forward = jax.jit(lambda ids, types: fm(ids, token_type_ids=types).logits).lower(IDS, TYPES).as_text()
    assert "callback" in forward
