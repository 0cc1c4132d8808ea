"""generate()'s user hooks against transformers 4.57.6 (test-only oracle): logits_processor, stopping_criteria,
prefix_allowed_tokens_fn -- given as transformers' own LogitsProcessor / StoppingCriteria objects, which our
generate() calls like any callable -- and TextIteratorStreamer."""

from __future__ import annotations

import threading

import pytest
import torch

from conftest import requires_torch, requires_transformers
from test_generate import IDS, MASK, PAD, PieceTokenizer, _hf, assert_same_ids, both, pairs  # noqa: F401

pytestmark = [requires_torch, requires_transformers]


def _ban(token: int):
    T = _hf()

    class Ban(T.LogitsProcessor):
        def __call__(self, input_ids, scores):
            return scores.index_fill(1, torch.tensor([token], device=scores.device), -float("inf"))

    return Ban()


def _stop_after(token: int):
    T = _hf()

    class StopAfter(T.StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            return input_ids[:, -1] == token

    return StopAfter()


@pytest.mark.parametrize("strategy", [dict(), dict(num_beams=3), dict(do_sample=True, top_k=10)])
def test_hooks_match_transformers(pairs, strategy):
    T = _hf()
    theirs, ours, eos = pairs[1]
    free = ours.generate(IDS, attention_mask=MASK, max_new_tokens=10, pad_token_id=PAD)
    banned, stop_token = int(free[0, 8]), int(free[1, 9])

    def prefix_fn(batch_id, sent):  # rows of batch 2 may only continue with even ids after an odd one
        return list(range(0, 100, 2)) if batch_id == 2 and int(sent[-1]) % 2 else list(range(100))

    kwargs = dict(attention_mask=MASK, max_new_tokens=10, pad_token_id=PAD, prefix_allowed_tokens_fn=prefix_fn,
                  **strategy)
    a, b = both(theirs, ours, IDS, seed=3, logits_processor=T.LogitsProcessorList([_ban(banned)]),
                stopping_criteria=T.StoppingCriteriaList([_stop_after(stop_token)]), **kwargs)
    assert_same_ids(b, a)
    plain = ours.generate(IDS, **{k: v for k, v in kwargs.items() if k != "prefix_allowed_tokens_fn"})
    assert not torch.equal(b, plain)  # the hooks changed something


def test_plain_callables_and_bad_hooks(pairs):
    _, ours, _ = pairs[0]
    kwargs = dict(attention_mask=MASK, max_new_tokens=6, pad_token_id=PAD)
    banned = ours.generate(IDS, logits_processor=[lambda ids, s: s.index_fill(1, torch.tensor([5]), -1e9)], **kwargs)
    assert not (banned[:, IDS.shape[1]:] == 5).any()
    stopped = ours.generate(IDS, stopping_criteria=[lambda ids, s: True], **kwargs)  # a plain bool: every row
    assert stopped.shape[1] == IDS.shape[1] + 1
    with pytest.raises(TypeError, match="logits_processor must be a list of callables"):
        ours.generate(IDS, logits_processor=lambda ids, s: s, **kwargs)
    with pytest.raises(ValueError, match="must return a bool tensor of shape \\(3,\\)"):
        ours.generate(IDS, stopping_criteria=[lambda ids, s: torch.zeros(2, dtype=torch.bool)], **kwargs)
    with pytest.raises(ValueError, match="returned no allowed token for batch 0"):
        ours.generate(IDS, prefix_allowed_tokens_fn=lambda b, sent: [], **kwargs)


def test_text_iterator_streamer_like_transformers(pairs):
    from gpt2.torch import TextIteratorStreamer

    T = _hf()
    _, ours, _ = pairs[0]
    ids = torch.tensor([[5, 6, 1, 7]])
    out = ours.generate(ids, max_new_tokens=12, suppress_tokens=[2, 4])
    ours_streamer = TextIteratorStreamer(PieceTokenizer(), skip_prompt=True, timeout=30)
    thread = threading.Thread(target=ours.generate, args=(ids,),
                              kwargs=dict(max_new_tokens=12, suppress_tokens=[2, 4], streamer=ours_streamer))
    thread.start()
    pieces = list(ours_streamer)
    thread.join()
    reference = T.TextIteratorStreamer(PieceTokenizer(), skip_prompt=True)
    reference.put(ids)
    for t in out[0, 4:]:
        reference.put(t[None])
    reference.end()
    assert pieces == list(reference)
    assert "".join(pieces) == PieceTokenizer().decode(out[0, 4:].tolist())


@pytest.mark.parametrize("strategy", [dict(), dict(do_sample=True, num_return_sequences=2),
                                      dict(num_beams=3, num_return_sequences=2)])
@pytest.mark.parametrize("normalize", [False, True])
def test_compute_transition_scores_like_transformers(pairs, strategy, normalize):
    theirs, ours, eos = pairs[2]
    kwargs = dict(attention_mask=MASK, max_new_tokens=8, pad_token_id=PAD, eos_token_id=eos,
                  return_dict_in_generate=True, output_scores=True, **strategy)
    a, b = both(theirs, ours, IDS, seed=0, **kwargs)
    assert_same_ids(b.sequences, a.sequences)
    beams = getattr(a, "beam_indices", None)
    expected = theirs.compute_transition_scores(a.sequences, a.scores, beams, normalize_logits=normalize)
    got = ours.compute_transition_scores(b.sequences, b.scores, getattr(b, "beam_indices", None),
                                         normalize_logits=normalize)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="scores is empty"):
        ours.compute_transition_scores(b.sequences, ())


@pytest.mark.parametrize("strategy", [dict(max_new_tokens=8), dict(max_length=10, min_length=8),
                                      dict(max_new_tokens=8, repetition_penalty=1.8, no_repeat_ngram_size=2),
                                      dict(max_new_tokens=8, num_beams=3, num_return_sequences=2),
                                      dict(max_new_tokens=8, do_sample=True, top_k=20, num_return_sequences=2)])
def test_inputs_embeds_like_transformers(pairs, strategy):
    """A prompt given as embeddings (soft prompts): only the new ids come back, and lengths, processors and
    criteria count those alone, as transformers does."""
    theirs, ours, eos = pairs[0]
    embeds = ours.transformer.wte(IDS).detach() + 0.1 * torch.randn(*IDS.shape, 32, generator=torch.Generator()
                                                                        .manual_seed(1))
    kwargs = dict(inputs_embeds=embeds, attention_mask=MASK, pad_token_id=PAD, eos_token_id=eos[:1], **strategy)
    a, b = both(theirs, ours, seed=5, **kwargs)
    assert_same_ids(b, a)
    with pytest.raises(ValueError, match="not both"):
        ours.generate(IDS, inputs_embeds=embeds, max_new_tokens=2)
    with pytest.raises(ValueError, match="inputs_embeds must be a float tensor \\(batch, length, 32\\)"):
        ours.generate(inputs_embeds=embeds[..., :8], max_new_tokens=2)


@pytest.mark.parametrize("strategy", [dict(), dict(num_beams=2), dict(do_sample=True, num_return_sequences=2)])
def test_token_type_ids_like_transformers(pairs, strategy):
    """The prompt's token types; every new token takes the last one's, as transformers extends them."""
    theirs, ours, _ = pairs[1]
    types = torch.tensor([[1, 1, 2, 2, 2, 2], [3, 3, 3, 4, 4, 4], [5, 5, 5, 5, 5, 6]])
    kwargs = dict(attention_mask=MASK, token_type_ids=types, max_new_tokens=7, pad_token_id=PAD, **strategy)
    a, b = both(theirs, ours, IDS, seed=2, **kwargs)
    assert_same_ids(b, a)
    assert not torch.equal(b, ours.generate(IDS, **{k: v for k, v in kwargs.items() if k != "token_type_ids"}))
    with pytest.raises(ValueError, match="token_type_ids must be a tensor of the prompt's shape"):
        ours.generate(IDS, token_type_ids=types[:, :2], max_new_tokens=2)


@pytest.mark.parametrize("extra", [dict(), dict(repetition_penalty=1.5, no_repeat_ngram_size=2),
                                   dict(num_assistant_tokens=3, num_assistant_tokens_schedule="heuristic"),
                                   dict(assistant_confidence_threshold=0.0, eos_token_id="eos")])
def test_assisted_generation_is_greedy_decoding(pairs, extra):
    """assistant_model drafts, the model decides: the tokens are greedy decoding's (ours and transformers'), with
    an unrelated assistant (most drafts rejected) and with the model itself as assistant (all accepted)."""
    theirs, ours, eos = pairs[0]
    _, other, _ = pairs[1]
    extra = {k: (eos if v == "eos" else v) for k, v in extra.items()}
    prompt = IDS[1:2]
    kwargs = dict(max_new_tokens=14, pad_token_id=PAD, **extra)
    greedy = ours.generate(prompt, **kwargs)
    assert_same_ids(greedy, theirs.generate(prompt, **kwargs))
    for assistant in (other, ours):
        assert_same_ids(ours.generate(prompt, assistant_model=assistant, **kwargs), greedy)


def test_assisted_generation_refusals(pairs):
    _, ours, _ = pairs[0]
    with pytest.raises(ValueError, match="batch size 1"):
        ours.generate(IDS, assistant_model=ours, max_new_tokens=3, pad_token_id=PAD)
    with pytest.raises(ValueError, match="greedy"):
        ours.generate(IDS[1:2], assistant_model=ours, max_new_tokens=3, do_sample=True, pad_token_id=PAD)
    with pytest.raises(ValueError, match="num_assistant_tokens_schedule"):
        ours.generate(IDS[1:2], assistant_model=ours, max_new_tokens=3, num_assistant_tokens_schedule="fast")


def test_assisted_generation_saves_main_model_forwards(pairs):
    """With a perfect assistant (a copy of the model) the model runs a handful of forwards, not one per token."""
    import copy

    _, ours, _ = pairs[0]
    assistant = copy.deepcopy(ours)
    calls = []
    handle = ours.register_forward_hook(lambda module, args, output: calls.append(1))
    try:
        out = ours.generate(IDS[1:2], assistant_model=assistant, max_new_tokens=14, min_new_tokens=14,
                            pad_token_id=PAD, num_assistant_tokens=5, assistant_confidence_threshold=0.0)
    finally:
        handle.remove()
    assert out.shape[1] == IDS.shape[1] + 14
    assert len(calls) <= 4  # the prompt, then rounds of 1 + 5 tokens (14 tokens: 3 rounds)
