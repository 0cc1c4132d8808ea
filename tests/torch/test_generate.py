"""generate() against transformers 4.57.6's (test-only oracle) on random tiny checkpoints: the same token ids.

The random weights use initializer_range=0.4 (transformers' default is 0.02) so that next-token distributions are
peaked (top probability ~0.3 instead of ~0.01 over 100 tokens): greedy and beam comparisons then test decisions,
not float ties. The eos ids of each case are tokens the model really produces, so that rows do finish early.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from conftest import requires_torch, requires_transformers

pytestmark = [requires_torch, requires_transformers]

torch = pytest.importorskip("torch")

CONFIG = dict(n_layer=2, n_embd=32, n_head=4, vocab_size=100, n_positions=64, initializer_range=0.4,
              bos_token_id=0, eos_token_id=None, pad_token_id=None)
PAD = 3
IDS = torch.tensor([[PAD, PAD, 5, 6, 7, 8], [10, 11, 12, 13, 14, 15], [PAD, 40, 41, 42, 43, 44]])
MASK = (IDS != PAD).long()
SEEDS = [0, 1, 2]


def _hf():
    import transformers

    transformers.logging.set_verbosity_error()
    return transformers


def make_pair(folder, seed=0, cls_name="GPT2LMHeadModel", **config):
    import gpt2.torch as ours_module

    T = _hf()
    torch.manual_seed(seed)
    theirs = getattr(T, cls_name)(T.GPT2Config(**{**CONFIG, **config}, attn_implementation="eager")).eval()
    theirs.save_pretrained(folder)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return theirs, getattr(ours_module, cls_name).from_pretrained(folder)


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    """seed -> (theirs, ours, eos): eos = two tokens greedy decoding produces early in rows 0 and 1."""
    out = {}
    for seed in SEEDS:
        theirs, ours = make_pair(tmp_path_factory.mktemp(f"seed{seed}"), seed)
        free = ours.generate(IDS, attention_mask=MASK, max_new_tokens=12)
        out[seed] = theirs, ours, [int(free[0, 9]), int(free[1, 13])]
    return out


def both(theirs, ours, *args, seed=None, **kwargs):
    """Run transformers' and our generate() alike (same torch.manual_seed before each, when seed is given)."""
    results = []
    for model in (theirs, ours):
        if seed is not None:
            torch.manual_seed(seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            results.append(model.generate(*args, **kwargs))
    return results


def assert_same_ids(a, b):
    assert a.shape == b.shape, (a, b)
    assert torch.equal(a, b), (a, b)


# -- greedy ---------------------------------------------------------------------------------------------------------
GREEDY = {
    "plain": lambda eos, free: {},
    "min_new_tokens": lambda eos, free: dict(min_new_tokens=9),
    "min_length": lambda eos, free: dict(min_length=14),
    "repetition_penalty": lambda eos, free: dict(repetition_penalty=1.5),
    "repetition_penalty<1": lambda eos, free: dict(repetition_penalty=0.7),
    "no_repeat_ngram_2": lambda eos, free: dict(no_repeat_ngram_size=2),
    "no_repeat_ngram_1": lambda eos, free: dict(no_repeat_ngram_size=1),
    "bad_words": lambda eos, free: dict(bad_words_ids=[[eos[0]], [int(free[2, 7])], [int(free[1, 6]), int(free[1, 7])],
                                                       [40, 41, 42, 43, 44, 9]]),
    "sequence_bias": lambda eos, free: dict(sequence_bias=[[[int(free[0, 7])], -4.0], [[12, 13, 14, 15], 5.0]]),
    "suppress": lambda eos, free: dict(suppress_tokens=[int(free[1, 6])], begin_suppress_tokens=[int(free[0, 6])]),
    "forced_eos": lambda eos, free: dict(forced_eos_token_id=eos[1], min_new_tokens=3),
    "decay": lambda eos, free: dict(exponential_decay_length_penalty=(2, 1.5), renormalize_logits=True),
    "invalid": lambda eos, free: dict(remove_invalid_values=True, bad_words_ids=[[7]]),
}


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("case", list(GREEDY))
def test_greedy_matches_transformers(pairs, seed, case):
    theirs, ours, eos = pairs[seed]
    free = ours.generate(IDS, attention_mask=MASK, max_new_tokens=12)
    kwargs = dict(max_new_tokens=16, eos_token_id=eos + [99], pad_token_id=PAD, **GREEDY[case](eos, free))
    a, b = both(theirs, ours, IDS, attention_mask=MASK, **kwargs)
    assert_same_ids(a, b)


@pytest.mark.parametrize("seed", SEEDS)
def test_greedy_rows_finish_and_are_padded(pairs, seed):
    theirs, ours, eos = pairs[seed]
    out = ours.generate(IDS, attention_mask=MASK, max_new_tokens=16, eos_token_id=eos, pad_token_id=PAD)
    generated = out[:, IDS.shape[1]:]
    for row in (0, 1):  # these rows produce an eos id: everything after it is padding
        hit = [i for i, t in enumerate(generated[row].tolist()) if t in eos][0]
        assert (generated[row, hit + 1:] == PAD).all()
    assert_same_ids(theirs.generate(IDS, attention_mask=MASK, max_new_tokens=16, eos_token_id=eos,
                                    pad_token_id=PAD), out)


def test_greedy_unpadded_and_default_lengths(pairs):
    theirs, ours, _ = pairs[0]
    a, b = both(theirs, ours, IDS[1:2])  # max_length 20 (the default): 20 new tokens, no eos
    assert_same_ids(a, b)
    assert b.shape == (1, 26)
    a, b = both(theirs, ours, IDS[1:2], max_length=10)
    assert_same_ids(a, b)
    a, b = both(theirs, ours, max_new_tokens=5)  # no prompt: start from bos_token_id
    assert_same_ids(a, b)


def test_attention_mask_inferred_from_padding(pairs):
    theirs, ours, eos = pairs[1]
    a, b = both(theirs, ours, IDS, max_new_tokens=8, pad_token_id=PAD, eos_token_id=eos)
    assert_same_ids(a, b)
    assert_same_ids(b, ours.generate(IDS, attention_mask=MASK, max_new_tokens=8, pad_token_id=PAD, eos_token_id=eos))


def test_transformers_default_eos_outside_tiny_vocab(tmp_path):
    theirs, ours = make_pair(tmp_path, 3, bos_token_id=50256, eos_token_id=50256)  # GPT-2's ids, vocab of 100
    a, b = both(theirs, ours, IDS, attention_mask=MASK, max_new_tokens=6)
    assert_same_ids(a, b)


def test_scores_and_logits(pairs):
    theirs, ours, eos = pairs[2]
    kwargs = dict(max_new_tokens=10, eos_token_id=eos, pad_token_id=PAD, return_dict_in_generate=True,
                  output_scores=True, output_logits=True, repetition_penalty=1.3, bad_words_ids=[[9]])
    a, b = both(theirs, ours, IDS, attention_mask=MASK, **kwargs)
    assert_same_ids(a.sequences, b.sequences)
    assert len(a.scores) == len(b.scores) == len(b.logits) == b.sequences.shape[1] - IDS.shape[1]
    for x, y in zip(a.scores + a.logits, b.scores + b.logits):
        assert x.shape == y.shape == (3, 100)
        assert torch.equal(torch.isinf(x), torch.isinf(y))
        np.testing.assert_allclose(x.nan_to_num(0, 0, 0).numpy(), y.nan_to_num(0, 0, 0).numpy(), atol=1e-5, rtol=0)
    assert b.past_key_values.capacity == IDS.shape[1] + 10  # one static cache, sized once


def test_attentions_and_hidden_states(pairs):
    theirs, ours, _ = pairs[0]
    kwargs = dict(max_new_tokens=3, return_dict_in_generate=True, output_attentions=True, output_hidden_states=True)
    a, b = both(theirs, ours, IDS[1:], **kwargs)
    assert len(b.attentions) == len(b.hidden_states) == 3
    for step_a, step_b in zip(a.attentions + a.hidden_states, b.attentions + b.hidden_states):
        for x, y in zip(step_a, step_b):
            np.testing.assert_allclose(x.numpy(), y.numpy(), atol=1e-5, rtol=0)


# -- beam search ----------------------------------------------------------------------------------------------------
BEAM = {
    "4-lp0.5-early-2seq": dict(num_beams=4, length_penalty=0.5, early_stopping=True, num_return_sequences=2),
    "3-lp2-never": dict(num_beams=3, length_penalty=2.0, early_stopping="never"),
    "3-false": dict(num_beams=3, early_stopping=False),
    "3-early": dict(num_beams=3, early_stopping=True),
    "4-lp-1-false-2seq": dict(num_beams=4, length_penalty=-1.0, num_return_sequences=2),
    "3-ngram-min": dict(num_beams=3, no_repeat_ngram_size=2, min_new_tokens=4, repetition_penalty=1.2),
}


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("case", list(BEAM))
def test_beam_search_matches_transformers(pairs, seed, case):
    theirs, ours, eos = pairs[seed]
    kwargs = dict(max_new_tokens=12, eos_token_id=eos, pad_token_id=PAD, return_dict_in_generate=True,
                  output_scores=True, **BEAM[case])
    a, b = both(theirs, ours, IDS, attention_mask=MASK, **kwargs)
    assert_same_ids(a.sequences, b.sequences)
    np.testing.assert_allclose(a.sequences_scores.numpy(), b.sequences_scores.numpy(), atol=1e-5, rtol=1e-5)
    assert torch.equal(a.beam_indices, b.beam_indices)
    plain = ours.generate(IDS, attention_mask=MASK, **{k: v for k, v in kwargs.items() if k not in (
        "return_dict_in_generate", "output_scores")})
    assert_same_ids(plain, b.sequences)


@pytest.mark.parametrize("seed, eos_at, length_penalty, num_beams", [
    (0, (0, 7), 1.0, 2), (1, (2, 10), 2.0, 3), (2, (2, 10), 1.0, 4)])
def test_beam_search_never_stops_at_max_length(pairs, seed, eos_at, length_penalty, num_beams):
    """early_stopping="never" judges running beams at max_length: cases where judging them at the current length
    (the early_stopping=False heuristic) would stop too soon and return other hypotheses."""
    theirs, ours, _ = pairs[seed]
    free = ours.generate(IDS, attention_mask=MASK, max_new_tokens=12)
    kwargs = dict(max_new_tokens=16, eos_token_id=[int(free[eos_at])], pad_token_id=PAD, num_beams=num_beams,
                  length_penalty=length_penalty, early_stopping="never", return_dict_in_generate=True,
                  output_scores=True)
    a, b = both(theirs, ours, IDS, attention_mask=MASK, **kwargs)
    assert_same_ids(a.sequences, b.sequences)
    np.testing.assert_allclose(a.sequences_scores.numpy(), b.sequences_scores.numpy(), atol=1e-5, rtol=1e-5)


def test_beam_search_finishes_hypotheses(pairs):
    """At least one case above must end beams on eos (else the finalization code would be untested)."""
    theirs, ours, eos = pairs[0]
    out = ours.generate(IDS, attention_mask=MASK, max_new_tokens=12, eos_token_id=eos, pad_token_id=PAD,
                        num_beams=3)
    assert any(t in eos for t in out[:, IDS.shape[1]:].flatten().tolist())
    assert out.shape[1] < IDS.shape[1] + 12 or (out == PAD).any()


# -- sampling -------------------------------------------------------------------------------------------------------
SAMPLING = {
    "plain": dict(top_k=0),
    "temperature-top_k-top_p": dict(temperature=0.7, top_k=20, top_p=0.9),
    "min_p-typical-3seq": dict(min_p=0.1, typical_p=0.8, num_return_sequences=3),
    "epsilon": dict(epsilon_cutoff=0.01, repetition_penalty=1.2),
    "eta": dict(eta_cutoff=0.01, no_repeat_ngram_size=2),
    "beam-sample": dict(num_beams=3, num_return_sequences=2, top_k=10),
    "beam-sample-top_p": dict(num_beams=2, top_k=0, top_p=0.5),  # min_tokens_to_keep = number of eos ids + 1
    "beam-sample-top_k": dict(num_beams=2, top_k=2),
}


@pytest.mark.parametrize("case", list(SAMPLING))
def test_sampling_matches_transformers_under_manual_seed(pairs, case):
    """Same processors, same torch.multinomial calls in the same order: identical draws from torch's global RNG."""
    for seed in SEEDS:
        theirs, ours, eos = pairs[seed]
        a, b = both(theirs, ours, IDS, attention_mask=MASK, seed=seed + 10, do_sample=True, max_new_tokens=12,
                    eos_token_id=eos, pad_token_id=PAD, **SAMPLING[case])
        assert_same_ids(a, b)


def test_sampling_generator_is_reproducible(pairs):
    _, ours, _ = pairs[0]

    def sample(seed, **kwargs):
        kwargs = {"top_k": 0, **kwargs}
        return ours.generate(IDS, attention_mask=MASK, do_sample=True, max_new_tokens=16,
                             generator=torch.Generator().manual_seed(seed), **kwargs)

    assert_same_ids(sample(1), sample(1))
    assert not torch.equal(sample(1), sample(2))
    greedy = ours.generate(IDS, attention_mask=MASK, max_new_tokens=16)
    assert_same_ids(sample(3, top_k=1), greedy)
    assert_same_ids(sample(4, top_p=1e-6), greedy)
    torch.manual_seed(0)  # the generator, not the global RNG, decides
    first = sample(5)
    torch.manual_seed(1)
    assert_same_ids(first, sample(5))


def test_num_return_sequences_are_interleaved(pairs):
    _, ours, _ = pairs[1]
    out = ours.generate(IDS, attention_mask=MASK, do_sample=True, num_return_sequences=2, max_new_tokens=4,
                        generator=torch.Generator().manual_seed(0))
    assert out.shape == (6, 10)
    assert torch.equal(out[::2, :6], IDS) and torch.equal(out[1::2, :6], IDS)


# -- configuration, loading, streaming, errors ----------------------------------------------------------------------
def test_generation_config_json_is_read_and_written(tmp_path):
    T = _hf()
    theirs, _ = make_pair(tmp_path / "a", 0)
    theirs.generation_config = T.GenerationConfig(max_new_tokens=4, eos_token_id=7, pad_token_id=PAD,
                                                  no_repeat_ngram_size=1)
    theirs.save_pretrained(tmp_path / "a")
    from gpt2.torch import GPT2LMHeadModel

    ours = GPT2LMHeadModel.from_pretrained(tmp_path / "a")
    assert ours.generation_config.max_new_tokens == 4 and ours.generation_config.no_repeat_ngram_size == 1
    assert_same_ids(theirs.generate(IDS[1:]), ours.generate(IDS[1:]))
    ours.save_pretrained(tmp_path / "b")
    again = T.GPT2LMHeadModel.from_pretrained(tmp_path / "b")
    assert again.generation_config.max_new_tokens == 4
    # A GenerationConfig argument: its non-default values win, the rest comes from the model's.
    from gpt2.common.generation import GenerationConfig

    out = ours.generate(IDS[1:], generation_config=GenerationConfig(max_new_tokens=2))
    assert out.shape == (2, 8)
    assert ours.generate(IDS[1:], max_new_tokens=3).shape == (2, 9)


def test_derived_generation_config_and_pad_warning(tmp_path):
    _, ours = make_pair(tmp_path, 0, eos_token_id=9)
    assert ours.generation_config.eos_token_id == 9 and ours.generation_config.pad_token_id is None
    with pytest.warns(UserWarning, match="pad_token_id"):
        ours.generate(IDS[1:], max_new_tokens=2)


def test_double_heads_model_generates_like_lm_head(tmp_path, pairs):
    _, lm, eos = pairs[0]
    _, double = make_pair(tmp_path, 0, cls_name="GPT2DoubleHeadsModel")
    double.load_state_dict(lm.state_dict(), strict=False)
    for kwargs in (dict(), dict(num_beams=3)):
        assert_same_ids(double.generate(IDS, attention_mask=MASK, max_new_tokens=6, **kwargs),
                        lm.generate(IDS, attention_mask=MASK, max_new_tokens=6, **kwargs))


def test_output_is_an_ordinary_tensor(pairs):
    _, ours, _ = pairs[0]
    out = ours.generate(IDS, attention_mask=MASK, max_new_tokens=2)
    out[0, 0] = 1  # inference tensors would refuse this
    assert out.is_contiguous() and out.dtype == torch.long


class PieceTokenizer:
    """decode() of a fake vocabulary of word pieces: id 1 is a newline, ids divisible by 3 end a word."""

    def decode(self, ids, **kwargs):
        return "".join("\n" if i == 1 else f"p{i}" + (" " if i % 3 == 0 else "") for i in ids)


def chunks_of(streamer_class):
    class Recording(streamer_class):
        def on_finalized_text(self, text, stream_end=False):
            self.chunks.append((text, stream_end))

    streamer = Recording(PieceTokenizer())
    streamer.chunks = []
    return streamer


def test_text_streamer_prints_like_transformers(pairs, capsys):
    from gpt2.torch import TextStreamer

    T = _hf()
    _, ours, _ = pairs[0]
    ids = torch.tensor([[5, 6, 1, 7]])
    out = ours.generate(ids, max_new_tokens=12, bad_words_ids=[[9], [27], [33]], suppress_tokens=[2, 4])
    assert any(t % 3 for t in out[0, 4:].tolist()) and any(t % 3 == 0 for t in out[0, 4:].tolist())
    streamer, reference = chunks_of(TextStreamer), chunks_of(T.TextStreamer)
    assert_same_ids(ours.generate(ids, max_new_tokens=12, bad_words_ids=[[9], [27], [33]], suppress_tokens=[2, 4],
                                  streamer=streamer), out)
    reference.put(ids)
    for t in out[0, 4:]:
        reference.put(t[None])
    reference.end()
    assert streamer.chunks == reference.chunks  # the same pieces at the same moments (word-boundary buffering)
    assert "".join(text for text, _ in streamer.chunks) == PieceTokenizer().decode(out[0].tolist())
    ours.generate(ids, max_new_tokens=3, streamer=TextStreamer(PieceTokenizer(), skip_prompt=True))
    generated = ours.generate(ids, max_new_tokens=3)[0, 4:].tolist()
    assert capsys.readouterr().out == PieceTokenizer().decode(generated) + "\n"


def test_text_streamer_with_gpt2_tokenizer(tmp_path, capsys):
    from gpt2 import GPT2TokenizerFast
    from gpt2.torch import TextStreamer

    tok = GPT2TokenizerFast.from_pretrained("gpt2")
    _, ours = make_pair(tmp_path, 0, vocab_size=50257, n_embd=16, n_layer=1)
    ids = torch.tensor([tok("Hello world, this is")["input_ids"]])
    out = ours.generate(ids, max_new_tokens=10, streamer=TextStreamer(tok, skip_prompt=True))
    assert capsys.readouterr().out == tok.decode(out[0, ids.shape[1]:].tolist()) + "\n"


@pytest.mark.parametrize("call, error", [
    (lambda m: m.generate(IDS.float()), ValueError),
    (lambda m: m.generate(IDS[0]), ValueError),
    (lambda m: m.generate(IDS[:, :0]), ValueError),
    (lambda m: m.generate(IDS, attention_mask=MASK[:, 1:]), ValueError),
    (lambda m: m.generate(IDS, attention_mask=MASK * 2), ValueError),
    (lambda m: m.generate(IDS + 100), ValueError),
    (lambda m: m.generate(IDS, max_new_tokens=59), ValueError),  # 6 + 59 > n_positions=64
    (lambda m: m.generate(IDS, max_length=6), ValueError),  # nothing left to generate
    (lambda m: m.generate(IDS, num_beams=2, num_return_sequences=3), ValueError),
    (lambda m: m.generate(IDS, num_return_sequences=2), ValueError),  # greedy: one sequence only
    (lambda m: m.generate(IDS, penalty_alpha=0.6, top_k=4), ValueError),  # contrastive search: not implemented
    (lambda m: m.generate(IDS, num_beams=4, num_beam_groups=2, diversity_penalty=1.0), ValueError),
    (lambda m: m.generate(IDS, stop_strings=["w"]), ValueError),
    (lambda m: m.generate(IDS, bad_words_ids=[[100]]), ValueError),
    (lambda m: m.generate(IDS, eos_token_id=5, pad_token_id=100), ValueError),
    (lambda m: m.generate(IDS[1:], num_beams=2, streamer=PieceTokenizer()), ValueError),
    (lambda m: m.generate(IDS, temperature=0.0, do_sample=True), ValueError),
    (lambda m: m.generate(IDS, max_new_tokenz=3), TypeError),
    (lambda m: m.generate(IDS, generation_config={"max_new_tokens": 3}), TypeError),
])
def test_bad_requests_raise(pairs, call, error):
    _, ours, _ = pairs[0]
    with pytest.raises(error):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            call(ours)
