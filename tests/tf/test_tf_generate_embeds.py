"""TF generate() with a prompt given as inputs_embeds, and with token_type_ids, against our PyTorch generate() (itself
tested against transformers 4.57.6's in tests/torch/test_generate_hooks.py) on the same random tiny checkpoints:
greedy and beam search give the same token ids, eager and XLA-compiled; the refusals of bad inputs by name.

inputs_embeds: only the new ids come back, and lengths (max_length, min_length) count the prompt's positions, as
in transformers. token_type_ids: every new token takes the type of the prompt's last column.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from conftest import requires_tf, requires_torch

pytestmark = [requires_tf, requires_torch]
tf = pytest.importorskip("tensorflow")
torch = pytest.importorskip("torch")

from test_tf_generate import IDS, MASK, PAD, assert_same_ids, make_pair  # noqa: E402

TYPES = np.array([[1, 1, 2, 2, 2, 2], [3, 3, 3, 4, 4, 4], [5, 5, 5, 5, 5, 6]])


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """(torch model, TF model, embeddings (3, 6, 32) near the prompt's tokens', eos: a token greedy decoding from
    them produces early in row 0)."""
    ours, tfm = make_pair(tmp_path_factory.mktemp("embeds"), 1)
    rng = np.random.default_rng(0)
    embeds = ours.transformer.wte.weight.detach().numpy()[IDS] + 0.1 * rng.standard_normal((*IDS.shape, 32))
    embeds = embeds.astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        free = ours.generate(inputs_embeds=torch.tensor(embeds), attention_mask=torch.tensor(MASK), max_new_tokens=8)
    return ours, tfm, embeds, int(free[0, 2])


def generate(model, **kwargs):
    """generate() on either framework with numpy inputs; the ids as numpy."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if isinstance(model, torch.nn.Module):
            kwargs = {k: torch.tensor(v) if isinstance(v, np.ndarray) else v for k, v in kwargs.items()}
        out = model.generate(**kwargs)
    out = getattr(out, "sequences", out)
    return out.numpy() if hasattr(out, "numpy") else np.asarray(out)


STRATEGIES = [dict(), dict(num_beams=2), dict(num_beams=2, num_return_sequences=2),
              dict(repetition_penalty=1.5, no_repeat_ngram_size=2, min_new_tokens=4)]


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("with_eos", [False, True])
def test_inputs_embeds_like_torch(pair, strategy, with_eos):
    """Only the new ids come back, the same as torch's; processors see only them (repetition penalty, n-grams,
    min_new_tokens); rows stop at eos and are padded."""
    ours, tfm, embeds, eos = pair
    kwargs = dict(inputs_embeds=embeds, attention_mask=MASK, max_new_tokens=7, pad_token_id=PAD,
                  eos_token_id=eos if with_eos else None, **strategy)
    expected = generate(ours, **kwargs)
    got = generate(tfm, disable_compile=True, **kwargs)
    assert_same_ids(got, expected)
    assert expected.shape[1] <= 7


def test_inputs_embeds_compiled_and_lengths(pair):
    """The XLA-compiled loop gives the eager one's ids; max_length counts the prompt's positions (transformers' rule):
    6 embedded positions + 4 new ids."""
    ours, tfm, embeds, _ = pair
    kwargs = dict(inputs_embeds=embeds, attention_mask=MASK, max_length=10, pad_token_id=PAD)
    expected = generate(ours, **kwargs)
    assert expected.shape == (3, 4)
    assert_same_ids(generate(tfm, **kwargs), expected)
    assert_same_ids(generate(tfm, **kwargs), expected)  # the second call: the prompt's forward as a TF graph


def test_inputs_embeds_refusals(pair):
    _, tfm, embeds, _ = pair
    with pytest.raises(ValueError, match="give input_ids or inputs_embeds to generate\\(\\), not both"):
        tfm.generate(IDS, inputs_embeds=embeds, max_new_tokens=2)
    with pytest.raises(ValueError, match="inputs_embeds must be a float tensor \\(batch, length, 32\\)"):
        tfm.generate(inputs_embeds=embeds[..., :8], max_new_tokens=2)
    with pytest.raises(ValueError, match="inputs_embeds must be a float tensor"):
        tfm.generate(inputs_embeds=IDS, max_new_tokens=2)


@pytest.mark.parametrize("strategy", [dict(), dict(num_beams=2), dict(repetition_penalty=1.5)])
def test_token_type_ids_like_torch(pair, strategy):
    """The prompt's token types; every new token takes the last one's (an embedding of the token table added in
    the compiled step); they change the ids."""
    ours, tfm, _, _ = pair
    kwargs = dict(input_ids=IDS, attention_mask=MASK, token_type_ids=TYPES, max_new_tokens=7, pad_token_id=PAD,
                  **strategy)
    expected = generate(ours, **kwargs)
    assert_same_ids(generate(tfm, disable_compile=True, **kwargs), expected)
    without = {k: v for k, v in kwargs.items() if k != "token_type_ids"}
    assert not np.array_equal(generate(ours, **without), expected)


def test_token_type_ids_compiled_and_with_embeds(pair):
    """Compiled, and together with an inputs_embeds prompt: torch's ids."""
    ours, tfm, embeds, _ = pair
    kwargs = dict(input_ids=IDS, attention_mask=MASK, token_type_ids=TYPES, max_new_tokens=5, pad_token_id=PAD)
    assert_same_ids(generate(tfm, **kwargs), generate(ours, **kwargs))
    kwargs = dict(inputs_embeds=embeds, attention_mask=MASK, token_type_ids=TYPES, max_new_tokens=5, pad_token_id=PAD,
                  disable_compile=True)
    assert_same_ids(generate(tfm, **kwargs), generate(ours, **kwargs))


def test_token_type_ids_refusals(pair):
    _, tfm, _, _ = pair
    with pytest.raises(ValueError, match="token_type_ids must be a tensor of the prompt's shape"):
        tfm.generate(IDS, token_type_ids=TYPES[:, :2], max_new_tokens=2)
    with pytest.raises(ValueError, match="token_type_ids must be ids in 0..99"):
        tfm.generate(IDS, token_type_ids=TYPES + 100, max_new_tokens=2)
    with pytest.raises(TypeError, match="token_type_ids must hold integer ids, got float"):
        tfm.generate(IDS, token_type_ids=TYPES.astype(np.float32), max_new_tokens=2)


def test_refused_inside_tf_function(pair):
    """Inside the caller's tf.function the prompt's forward cannot run before the loop: refused by name."""
    _, tfm, embeds, _ = pair

    @tf.function
    def with_embeds(x):
        return tfm.generate(inputs_embeds=x, max_new_tokens=2)

    @tf.function
    def with_types(ids, types):
        return tfm.generate(ids, token_type_ids=types, max_new_tokens=2)

    with pytest.raises(ValueError, match="inside tf.function: inputs_embeds not supported"):
        with_embeds(tf.constant(embeds))
    with pytest.raises(ValueError, match="inside tf.function: token_type_ids not supported"):
        with_types(tf.constant(IDS), tf.constant(TYPES))
