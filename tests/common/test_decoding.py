"""common/decoding.py and common/streamers.py: the generate() policy that needs no tensors (shared by the three
frameworks), checked without any framework."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

from gpt2.common import decoding
from gpt2.common.decoding import (FRAMEWORKS, PROCESSOR_ORDER, UNSUPPORTED, StepRecord, check_attention_mask,
                                  check_inputs_embeds, check_options, check_prompt, check_token_range,
                                  check_token_type_ids, merge, merge_settings, plan, processor_specs)
from gpt2.common.generation import GenerationConfig
from gpt2.common.streamers import TextIteratorStreamer, TextStreamer


def test_old_import_path_still_works():
    from gpt2.common import generation

    for name in ("merge", "eos_ids", "resolve_lengths", "StopStrings"):
        assert getattr(generation, name) is getattr(decoding, name)
    with pytest.raises(AttributeError):
        generation.no_such_name  # noqa: B018


def test_merge_settings_precedence():
    model = GenerationConfig(eos_token_id=9, max_new_tokens=7, top_k=5, do_sample=True)
    assert merge_settings(model).max_new_tokens == 7
    # The argument's non-default values win; what it leaves at the default comes from the model's config.
    run = merge_settings(model, GenerationConfig(max_new_tokens=3))
    assert (run.max_new_tokens, run.eos_token_id, run.top_k, run.do_sample) == (3, 9, 5, True)
    # Keyword arguments win over both.
    assert merge_settings(model, GenerationConfig(max_new_tokens=3), max_new_tokens=2).max_new_tokens == 2
    assert model.max_new_tokens == 7  # never mutated
    with pytest.raises(TypeError, match="must be a GenerationConfig"):
        merge_settings(model, {"max_new_tokens": 3})
    with pytest.raises(TypeError, match="unexpected keyword"):
        merge_settings(model, max_new_tokenz=3)


def test_unsupported_table_has_a_column_per_framework_and_a_reason():
    assert FRAMEWORKS == ("torch", "tf", "flax")
    names = [row.option for row in UNSUPPORTED]
    assert len(names) == len(set(names))
    for row in UNSUPPORTED:
        assert row.reason and all(isinstance(getattr(row, f), bool) for f in FRAMEWORKS)
    contrastive = {row.option: row for row in UNSUPPORTED}["penalty_alpha"]
    assert contrastive.torch and contrastive.tf and contrastive.flax and "Hub" in contrastive.reason


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_check_options_refuses_by_name(framework):
    with pytest.raises(ValueError, match=r"penalty_alpha=0\.6 is not supported \(contrastive"):
        check_options(merge(None, penalty_alpha=0.6), framework=framework)
    with pytest.raises(ValueError, match="cache_implementation='offloaded'"):
        check_options(merge(None, cache_implementation="offloaded"), framework=framework)
    with pytest.raises(ValueError, match="streamer cannot be used with beam search"):
        check_options(merge(None, num_beams=2), framework=framework, streamer=object())
    check_options(merge(None, do_sample=True, top_k=4), framework=framework, streamer=None, assistant_model=None)


def test_check_options_framework_columns():
    cfg = merge(None, max_time=1.0)
    check_options(cfg, framework="torch", stopping_criteria=[print], assistant_model=object())
    for framework in ("tf", "flax"):
        with pytest.raises(ValueError, match="max_time"):
            check_options(cfg, framework=framework)
        with pytest.raises(ValueError, match="assistant_model is not supported in " + framework):
            check_options(GenerationConfig(), framework=framework, assistant_model=object())
        check_options(GenerationConfig(), framework=framework, stopping_criteria=[])  # an empty list asks nothing
    with pytest.raises(ValueError, match="framework must be one of"):
        check_options(cfg, framework="jax")


def test_request_checks():
    check_prompt(shape=(2, 3), dtype="int64", integer=True)
    for shape, integer in (((2, 3), False), ((3,), True), ((2, 0), True)):
        with pytest.raises(ValueError, match="non-empty 2-D integer"):
            check_prompt(shape=shape, dtype="x", integer=integer)
    check_token_range(low=0, high=9, vocab_size=10)
    with pytest.raises(ValueError, match=r"token ids in 0\.\.9, got values 0\.\.10"):
        check_token_range(low=0, high=10, vocab_size=10)
    check_attention_mask(shape=(2, 3), ids_shape=(2, 3))
    with pytest.raises(ValueError, match="shape of input_ids"):
        check_attention_mask(shape=(2, 2), ids_shape=(2, 3))
    with pytest.raises(ValueError, match="only 0"):
        check_attention_mask(shape=(2, 3), ids_shape=(2, 3), binary=False)
    check_inputs_embeds(shape=(1, 4, 8), dtype="float32", floating=True, n_embd=8, with_input_ids=False)
    with pytest.raises(ValueError, match=r"float tensor \(batch, length, 8\)"):
        check_inputs_embeds(shape=(1, 4, 7), dtype="float32", floating=True, n_embd=8, with_input_ids=False)
    with pytest.raises(ValueError, match="not both"):
        check_inputs_embeds(shape=(1, 4, 8), dtype="float32", floating=True, n_embd=8, with_input_ids=True)
    with pytest.raises(ValueError, match="prompt's shape"):
        check_token_type_ids(shape=None, ids_shape=(1, 4))


def test_plan_eos_pad_lengths():
    with pytest.warns(UserWarning, match="pad_token_id is not set"):
        run = plan(merge(GenerationConfig(eos_token_id=[5, 6]), max_new_tokens=4, min_new_tokens=2),
                   input_length=3, max_positions=64, vocab_size=10, has_attention_mask=False)
    assert (run.eos, run.pad, run.min_length, run.max_length, run.offset, run.rows_per_prompt) == (
        (5, 6), 5, 5, 7, 0, 1)
    assert not run.may_infer_mask(has_attention_mask=False)  # pad is an eos id: no mask from it
    run = plan(merge(None, pad_token_id=0, do_sample=True, num_return_sequences=3), input_length=3,
               max_positions=None, vocab_size=10, has_attention_mask=False, from_embeds=True)
    assert (run.pad, run.max_length, run.offset, run.rows_per_prompt) == (0, 23, 3, 3)
    assert not run.may_infer_mask(has_attention_mask=False)  # an embeddings prompt has no ids to read
    assert plan(merge(None, pad_token_id=0), input_length=3, max_positions=None, vocab_size=10,
                has_attention_mask=False).may_infer_mask(has_attention_mask=False)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        plan(merge(None, eos_token_id=5, pad_token_id=10), input_length=3, max_positions=None, vocab_size=10,
             has_attention_mask=True)


def test_processor_specs_follow_the_documented_order():
    cfg = merge(None, sequence_bias=[[[1], 0.5]], repetition_penalty=1.2, no_repeat_ngram_size=2,
                bad_words_ids=[[3], [7], [2, 4]], min_new_tokens=2, forced_bos_token_id=1, forced_eos_token_id=7,
                remove_invalid_values=True, exponential_decay_length_penalty=(2, 1.1), suppress_tokens=[8],
                begin_suppress_tokens=[9], do_sample=True, temperature=0.7, top_k=5, top_p=0.9, min_p=0.1,
                typical_p=0.9, epsilon_cutoff=0.01, eta_cutoff=0.01, renormalize_logits=True, eos_token_id=7,
                pad_token_id=0)
    run = plan(cfg, input_length=4, max_positions=None, vocab_size=12, has_attention_mask=True)
    specs = processor_specs(cfg, run, vocab_size=12, has_prefix_fn=True)
    assert [s.name for s in specs] == list(PROCESSOR_ORDER)  # every one, in the one order
    options = {s.name: s.options for s in specs}
    assert options["bad_words"]["bias"] == {(3,): -math.inf, (2, 4): -math.inf}  # the eos id [7] is dropped
    assert options["min_length"] == dict(min_length=6, eos=[7])
    assert options["forced_eos"]["at_length"] == run.max_length - 1
    assert options["exponential_decay_length_penalty"]["start"] == 6
    assert options["begin_suppress_tokens"]["at_length"] == 4
    assert options["top_k"]["k"] == 5 and options["top_p"]["keep"] == 1


def test_processor_specs_offsets_lengths_for_an_embeddings_prompt():
    cfg = merge(None, min_length=6, eos_token_id=1, pad_token_id=0, forced_eos_token_id=1)
    run = plan(cfg, input_length=4, max_positions=None, vocab_size=12, has_attention_mask=False, from_embeds=True)
    options = {s.name: s.options for s in processor_specs(cfg, run, vocab_size=12)}
    assert options["min_length"]["min_length"] == 2  # lengths count the ids processors see
    assert options["forced_eos"]["at_length"] == run.max_length - 4 - 1
    plain = plan(merge(None), input_length=4, max_positions=None, vocab_size=12, has_attention_mask=False)
    assert [s.name for s in processor_specs(merge(None), plain, vocab_size=12)] == ["custom"]


def test_processor_specs_beam_sampling_keeps_more_and_checks_ids():
    cfg = merge(None, do_sample=True, num_beams=3, top_k=1, eos_token_id=[1, 2], pad_token_id=0)
    run = plan(cfg, input_length=2, max_positions=None, vocab_size=12, has_attention_mask=True)
    assert {s.name: s.options for s in processor_specs(cfg, run, vocab_size=12)}["top_k"]["k"] == 3
    with pytest.raises(ValueError, match=r"token ids \[12\] outside the vocabulary"):
        processor_specs(merge(None, bad_words_ids=[[12]]), run, vocab_size=12)


def test_step_record():
    class Output:
        attentions, hidden_states = "a", "h"

    with warnings.catch_warnings():  # "output_scores is ignored": that is the point here
        warnings.simplefilter("ignore")
        off = StepRecord(merge(None, output_scores=True))  # return_dict_in_generate is false: nothing is kept
    off.add(scores=1, logits=2, output=Output())
    assert off.get("scores") is None and off.get("attentions") is None
    on = StepRecord(merge(None, return_dict_in_generate=True, output_scores=True, output_attentions=True))
    for step in range(2):
        on.add(scores=step, logits=-step, output=Output())
    assert on.get("scores") == (0, 1) and on.get("attentions") == ("a", "a") and on.get("logits") is None


class Pieces:
    """A stand-in tokenizer: token i decodes to pieces[i]."""

    pieces = ["Hello", " world", "!", "\n", " again", "好"]

    def decode(self, ids, **kwargs):
        return "".join(self.pieces[i] for i in ids)


class Recording(TextStreamer):
    def on_finalized_text(self, text, stream_end=False):
        self.chunks.append((text, stream_end))


def _stream(values, skip_prompt=False):
    streamer = Recording(Pieces(), skip_prompt=skip_prompt)
    streamer.chunks = []
    for value in values:
        streamer.put(value)
    streamer.end()
    return streamer.chunks


def test_streamers_take_any_array_of_ids():
    expected = _stream([[[0, 1]], [2], [3], [4], [5]])
    assert expected == [("Hello ", False), ("", False), ("world!\n", False), (" ", False), ("again好", False),
                        ("", True)]
    assert _stream([np.array([[0, 1]]), np.array([2]), np.array(3), (4,), np.int64(5)]) == expected
    assert _stream([[[0, 1]], [2]], skip_prompt=True) == [("", False), ("!", True)]  # "!" waits: end() flushes it
    with pytest.raises(ValueError, match="batch size 1"):
        TextStreamer(Pieces()).put(np.zeros((2, 3), dtype=np.int64))


def test_text_iterator_streamer_queue():
    streamer = TextIteratorStreamer(Pieces(), skip_prompt=True, timeout=1.0)
    for value in ([[0]], [1], [3], [0]):
        streamer.put(value)
    streamer.end()
    assert "".join(streamer) == " world\nHello"


def test_torch_re_exports_the_common_streamers():
    torch = pytest.importorskip("torch")
    from gpt2.common import streamers
    from gpt2.torch import BaseStreamer, TextIteratorStreamer as TorchIterator, TextStreamer as TorchStreamer

    assert (TorchStreamer, TorchIterator, BaseStreamer) == (TextStreamer, TextIteratorStreamer,
                                                            streamers.BaseStreamer)
    assert _stream([torch.tensor([[0, 1]]), torch.tensor([2])]) == _stream([[[0, 1]], [2]])
