"""common/host_loop.py, framework-free: the request laid out for a compiled loop (buckets, left padding, rows per
prompt, the inferred mask, the offsets), the compile key's split of processor options and its inverse, the host's
chunked run with stop strings and a streamer (against a step-by-step loop, torch's order, on a numpy stand-in for
the compiled loop), and the outputs cut from the loop's buffers. The TF and Flax generate() tests run the same code
end to end against torch's generate()."""

from __future__ import annotations

import dataclasses
import inspect
import math
import warnings

import numpy as np
import pytest

from gpt2.common.config import GPT2Config
from gpt2.common.decoding import plan, processor_specs
from gpt2.common.generation import GenerationConfig
from gpt2.common.host_loop import (HOST_CHUNK, Request, Static, finish, prepare, run_in_chunks, split_specs,
                                   static_key, traced_specs, transition_index)
from gpt2.common.outputs import GenerateBeamDecoderOnlyOutput, GenerateDecoderOnlyOutput

CONFIG = GPT2Config(vocab_size=100, n_positions=64, n_embd=8, n_layer=1, n_head=2)
NONE = dict(logits_processor=None, stopping_criteria=None, prefix_allowed_tokens_fn=None, inputs_embeds=None,
            token_type_ids=None, assistant_model=None)


def request_of(cfg=None, *, input_ids=None, attention_mask=None, framework="flax", tokenizer=None, streamer=None,
               traced_floats=True, **others) -> Request:
    cfg = cfg or GenerationConfig(max_new_tokens=5, eos_token_id=None)
    return prepare(cfg, framework=framework, config=CONFIG, input_ids=input_ids, attention_mask=attention_mask,
                   streamer=streamer, tokenizer=tokenizer, others={**NONE, **others}, traced_floats=traced_floats)


# -- the request -----------------------------------------------------------------------------------------------------
def test_prompt_left_padded_to_its_bucket_with_offsets():
    ids = np.array([[5, 6, 7, 8, 9], [0, 0, 1, 2, 3]])
    mask = np.array([[1, 1, 1, 1, 1], [0, 0, 1, 1, 1]])
    r = request_of(GenerationConfig(max_new_tokens=4, eos_token_id=None), input_ids=ids, attention_mask=mask)
    assert r.prompt == 8 and r.start == 3 and r.end == 3 + 5 + 4  # bucket 8: 3 slots of padding before the prompt
    assert r.ids.dtype == np.int32 and r.mask.dtype == np.int32
    assert np.array_equal(r.ids, np.concatenate([np.zeros((2, 3), int), ids], axis=1))
    assert np.array_equal(r.mask, np.concatenate([np.zeros((2, 3), int), mask], axis=1))
    assert r.static.capacity == 8 + 8 and r.embeds is None and r.types is None and r.strings is None


def test_rows_repeated_per_prompt_and_mask_inferred_from_padding():
    ids = np.array([[9, 9, 1], [2, 3, 4]])
    cfg = GenerationConfig(max_new_tokens=2, num_return_sequences=2, do_sample=True, pad_token_id=9,
                           eos_token_id=50, top_k=0)
    r = request_of(cfg, input_ids=ids)
    assert np.array_equal(r.ids[:, -3:], np.repeat(ids, 2, axis=0))
    assert np.array_equal(r.mask[:, -3:], [[0, 0, 1], [0, 0, 1], [1, 1, 1], [1, 1, 1]])  # ids != pad
    assert r.static.num_return_sequences == 2 and r.static.eos == (50,) and r.static.pad == 9


def test_embeds_prompt_starts_after_it_and_types_take_the_last_column():
    embeds = np.ones((1, 3, 8), np.float32)
    types = np.array([[1, 2, 4]])
    r = request_of(inputs_embeds=embeds, token_type_ids=types)
    assert r.start == r.prompt  # the prompt's slots hold no ids: the caller sees the generated ones only
    assert r.embeds.shape == (1, 8, 8) and not r.embeds[:, :5].any() and r.embeds[:, 5:].all()
    assert np.array_equal(r.types, [[0, 0, 0, 0, 0, 1, 2, 4]]) and np.array_equal(r.last_types, [[4]])


def test_bfloat16_embeds_are_floats():
    ml_dtypes = pytest.importorskip("ml_dtypes")
    r = request_of(inputs_embeds=np.ones((1, 2, 8), ml_dtypes.bfloat16))
    assert r.embeds.dtype == ml_dtypes.bfloat16


@pytest.mark.parametrize("framework", ["tf", "flax"])
def test_refusals_name_the_option(framework):
    with pytest.raises(ValueError, match=f"stop_strings with beam search .* not supported in {framework}"):
        request_of(GenerationConfig(num_beams=2, stop_strings=["x"]), input_ids=[[1]], framework=framework)
    with pytest.raises(ValueError, match="need the model's tokenizer"):
        request_of(GenerationConfig(stop_strings=["x"]), input_ids=[[1]], framework=framework)
    with pytest.raises(ValueError, match=f"logits_processor is not supported in {framework}"):
        request_of(input_ids=[[1]], framework=framework, logits_processor=[print])
    with pytest.raises(ValueError, match="output_attentions"):
        request_of(GenerationConfig(return_dict_in_generate=True, output_attentions=True), input_ids=[[1]],
                   framework=framework)
    with pytest.raises(ValueError, match="non-empty 2-D integer tensor .* got float64 of shape"):
        request_of(input_ids=np.array([[0.5]]), framework=framework)
    with pytest.raises(ValueError, match="got list of float64"):
        request_of(input_ids=[[0.5]], framework=framework)
    with pytest.raises(ValueError, match=r"token ids in 0\.\.99, got values 0\.\.100"):
        request_of(input_ids=[[0, 100]], framework=framework)
    with pytest.raises(ValueError, match="shape of input_ids"):
        request_of(input_ids=[[1, 2]], attention_mask=[[1]], framework=framework)
    with pytest.raises(ValueError, match="only 0"):
        request_of(input_ids=[[1, 2]], attention_mask=[[1, 2]], framework=framework)
    with pytest.raises(ValueError, match=r"float tensor \(batch, length, 8\)"):
        request_of(inputs_embeds=np.ones((1, 2, 8), np.int64), framework=framework)
    with pytest.raises(ValueError, match="not both"):
        request_of(input_ids=[[1, 2]], inputs_embeds=np.ones((1, 2, 8), np.float32), framework=framework)
    with pytest.raises(ValueError, match=r"token_type_ids must be ids in 0\.\.99"):
        request_of(input_ids=[[1, 2]], token_type_ids=[[0, 100]], framework=framework)
    with pytest.raises(ValueError, match="bos_token_id"):
        request_of(framework=framework)


def generate(cfg, ids):  # a framework's generate() -> its _generate() -> prepare
    return _generate(cfg, ids)


def _generate(cfg, ids):
    return prepare(cfg, framework="tf", config=CONFIG, input_ids=ids, attention_mask=None, streamer=None,
                   tokenizer=None, others=NONE, traced_floats=False)


def test_padding_warnings_point_at_generates_caller():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        line = inspect.currentframe().f_lineno + 1
        generate(GenerationConfig(max_new_tokens=2, eos_token_id=1), [[3, 1], [4, 5]])
    found = {str(w.message).split(":")[0]: (w.filename, w.lineno) for w in caught}
    assert found == {"right padding detected": (__file__, line), "pad_token_id is not set": (__file__, line)}


# -- the compile key ----------------------------------------------------------------------------------------------
def test_split_specs_and_traced_specs_round_trip():
    cfg = GenerationConfig(max_new_tokens=6, do_sample=True, temperature=0.7, top_p=0.9, top_k=5, eos_token_id=[3],
                           pad_token_id=0, min_new_tokens=2, sequence_bias={(1, 2): -1.5}, forced_eos_token_id=3,
                           begin_suppress_tokens=[4], exponential_decay_length_penalty=(1, 1.5))
    run = plan(cfg, input_length=4, max_positions=64, vocab_size=100, has_attention_mask=True)
    specs = processor_specs(cfg, run, vocab_size=100)
    for floats in (True, False):
        key, numbers, reals = split_specs(specs, floats=floats)
        hash(key)  # part of a compiled function's cache key
        assert numbers == [6, 9, 5, 4]  # min_length, forced eos at_length, decay start, begin-suppress at_length
        assert reals == ([0.7, 0.9] if floats else [])
        assert traced_specs(key, numbers, reals) == specs
    # the traced values stand in for the options: a new prompt length changes the numbers only, not the key
    other = processor_specs(cfg, plan(cfg, input_length=7, max_positions=64, vocab_size=100,
                                      has_attention_mask=True), vocab_size=100)
    assert split_specs(other, floats=True)[0] == split_specs(specs, floats=True)[0]
    assert split_specs(other, floats=True)[1] != numbers


@pytest.mark.filterwarnings("ignore:GenerationConfig. return_dict_in_generate is false")
def test_static_key_records_only_what_return_dict_asks_for():
    run = plan(GenerationConfig(), input_length=2, max_positions=64, vocab_size=100, has_attention_mask=True)
    on = static_key(GenerationConfig(return_dict_in_generate=True, output_scores=True), run, capacity=16, specs=())
    off = static_key(GenerationConfig(output_scores=True, output_logits=True), run, capacity=16, specs=())
    assert (on.record_scores, on.record_logits, off.record_scores, off.record_logits) == (True, False, False, False)
    assert isinstance(on, Static) and hash(on) != hash(off)


# -- stop strings and streamers between chunks ------------------------------------------------------------------------
class Letters:
    """Token i decodes to the letter ``chr(ord('a') + i % 26)``."""

    def decode(self, ids) -> str:
        return "".join(chr(ord("a") + int(i) % 26) for i in ids)


class Recorder:
    def __init__(self) -> None:
        self.calls = []

    def put(self, value) -> None:
        self.calls.append(np.asarray(value).tolist())

    def end(self) -> None:
        self.calls.append("end")


def token(row: int, t: int) -> int:
    """The stand-in model's next token for ``row`` at slot ``t``."""
    return (7 * row + 3 * t) % 26


class FakeLoop:
    """The compiled loop on numpy: from ``running`` (cur, ids, unfinished) until slot ``until`` (or end, or every row
    finished), eos rows padded and stopped, no strings (the device cannot check them)."""

    def __init__(self, static: Static, end: int) -> None:
        self.static, self.end, self.calls = static, end, []

    def advance(self, running: dict, until: int) -> dict:
        self.calls.append(until)
        cur, ids, unfinished = running["cur"], running["ids"].copy(), running["unfinished"].copy()
        while cur < min(until, self.end) and unfinished.any():
            tokens = np.array([token(b, cur) for b in range(ids.shape[0])])
            if self.static.eos:
                tokens = np.where(unfinished, tokens, self.static.pad)
            ids[:, cur] = tokens
            cur += 1
            unfinished &= ~np.isin(tokens, self.static.eos)
        return dict(cur=cur, ids=ids, unfinished=unfinished)


def step_by_step(request: Request, streamer) -> np.ndarray:
    """torch's loop: one token per step, streamer, then eos and stop strings; finished rows padded when eos."""
    static, strings = request.static, request.strings
    ids = np.concatenate([request.ids, np.zeros((request.ids.shape[0], static.capacity - request.prompt), int)], 1)
    if streamer is not None:
        streamer.put(request.ids[:, request.start:])
    alive, cur = np.ones(ids.shape[0], bool), request.prompt
    while cur < request.end:
        tokens = np.array([token(b, cur) for b in range(ids.shape[0])])
        if static.eos:
            tokens = np.where(alive, tokens, static.pad)
        ids[:, cur] = tokens
        cur += 1
        if streamer is not None:
            streamer.put(tokens)
        done = np.isin(tokens, static.eos)
        if strings is not None:
            done |= np.array(strings([row[request.start: cur] for row in ids.tolist()]))
        alive &= ~done
        if not alive.any():
            break
    if streamer is not None:
        streamer.end()
    return ids[:, request.start: cur]


@pytest.mark.parametrize("eos", [None, [25]], ids=["no-eos", "eos"])
@pytest.mark.parametrize("stops", [["ad"], ["ad", "hk"], ["zzz"]], ids=["one-row", "inside-chunks", "never"])
@pytest.mark.parametrize("scores", [False, True], ids=["plain", "scores"])
def test_chunks_give_the_step_by_step_tokens_and_streamer_calls(eos, stops, scores):
    cfg = GenerationConfig(max_new_tokens=20, eos_token_id=eos, pad_token_id=0 if eos else None, stop_strings=stops,
                           return_dict_in_generate=scores, output_scores=scores)
    request = request_of(cfg, input_ids=[[1, 2, 3], [4, 5, 6]], tokenizer=Letters())
    loop = FakeLoop(request.static, request.end)
    mine, theirs = Recorder(), Recorder()
    running = dict(cur=request.prompt, unfinished=np.ones(2, bool),
                   ids=np.concatenate([request.ids, np.zeros((2, request.static.capacity - request.prompt), int)], 1))
    out = run_in_chunks(request, running, streamer=mine, advance=loop.advance,
                        read=lambda r: (r["cur"], r["ids"].copy()),
                        write=lambda r, ids, alive, cur: dict(r, ids=ids, unfinished=alive.copy(), cur=cur))
    expected = step_by_step(request, theirs)
    assert np.array_equal(out["ids"][:, request.start: out["cur"]], expected)
    assert mine.calls == theirs.calls
    chunk = 1 if scores else HOST_CHUNK  # with per-step records and strings: one step per chunk
    assert all(b - a <= chunk for a, b in zip([request.prompt] + loop.calls, loop.calls))
    if stops == ["zzz"] and eos is None:
        assert out["cur"] == request.end and len(loop.calls) == math.ceil(20 / chunk)


def test_streamer_alone_runs_to_the_end_in_chunks():
    request = request_of(GenerationConfig(max_new_tokens=11, eos_token_id=None), input_ids=[[1, 2]])
    loop, streamer = FakeLoop(request.static, request.end), Recorder()
    running = dict(cur=request.prompt, unfinished=np.ones(1, bool),
                   ids=np.concatenate([request.ids, np.zeros((1, request.static.capacity - request.prompt), int)], 1))
    out = run_in_chunks(request, running, streamer=streamer, advance=loop.advance,
                        read=lambda r: (r["cur"], r["ids"].copy()),
                        write=lambda r, ids, alive, cur: dict(r, ids=ids, unfinished=alive.copy(), cur=cur))
    assert loop.calls == [request.prompt + HOST_CHUNK, request.end] and out["cur"] == request.end
    assert streamer.calls[0] == [[1, 2]] and len(streamer.calls) == 1 + 11 + 1 and streamer.calls[-1] == "end"


# -- the outputs --------------------------------------------------------------------------------------------------
def test_finish_cuts_greedy_and_beam_buffers():
    request = request_of(GenerationConfig(max_new_tokens=3, eos_token_id=None), input_ids=[[1, 2, 3]])
    ids = np.arange(2 * 16).reshape(2, 16).astype(np.int32)
    seq = finish(GenerationConfig(), request, dict(ids=ids, length=np.int32(10)), array=np.asarray,
                 sequences_only=True)
    assert np.array_equal(seq, ids[:, 5:10]) and seq.dtype == np.int32
    out = finish(GenerationConfig(), request, dict(ids=ids, length=10), array=lambda a: a.tolist(),
                 sequences_only=False)
    assert isinstance(out, GenerateDecoderOnlyOutput) and out.sequences == ids[:, 5:10].tolist()
    scores = np.arange(2 * 8 * 3, dtype=np.float32).reshape(2, 8, 3)
    out = finish(GenerationConfig(return_dict_in_generate=True, output_scores=True),
                 dataclasses.replace(request, static=request.static._replace(record_scores=True)),
                 dict(ids=ids, length=10, scores=scores, logits=np.zeros(0)), array=np.asarray, sequences_only=True)
    assert len(out.scores) == 2 and np.array_equal(out.scores[1], scores[:, 1]) and out.logits is None

    beams = GenerationConfig(num_beams=2, num_return_sequences=1, max_new_tokens=3, eos_token_id=None,
                             return_dict_in_generate=True, output_scores=True)
    request = request_of(beams, input_ids=[[1, 2, 3]])
    ids = np.arange(2 * 16).reshape(2, 16).astype(np.int32)  # rows: (prompt 0, beam 0), (prompt 0, beam 1)
    indices = np.array([[[0, 1, -1], [1, 1, 0]]])  # (prompts, beams, steps); beam 0 finished after 2 steps
    out = finish(beams, request, dict(ids=ids, beam_scores=np.array([[-1.0, -2.0]], np.float32),
                                      beam_indices=indices, steps=3, scores=np.zeros((2, 8, 4), np.float32),
                                      logits=np.zeros(0)), array=np.asarray, sequences_only=False)
    assert isinstance(out, GenerateBeamDecoderOnlyOutput)
    assert np.array_equal(out.sequences, ids[:1, 5: 8 + 2]) and np.array_equal(out.sequences_scores, [-1.0])
    assert np.array_equal(out.beam_indices, [[0, 1]]) and len(out.scores) == 3


def test_transition_index_reads_each_tokens_score_at_its_step():
    stacked = np.random.default_rng(0).standard_normal((2, 3, 5))  # (rows, steps, V)
    sequences = np.array([[9, 9, 1, 4, 2], [9, 9, 0, 3, 3]])
    row, step, tok, valid = transition_index(sequences, None, rows=2, steps=3)
    assert valid.all() and np.array_equal(tok, sequences[:, 2:])
    assert np.array_equal(np.where(valid, stacked[row, step, tok], 0), [[stacked[b, s, sequences[b, 2 + s]]
                                                                         for s in range(3)] for b in range(2)])
    beams = np.array([[1, 0, -1], [0, 0, 1]])  # row 0 finished after 2 steps: its last score is 0
    row, step, tok, valid = transition_index(sequences, beams, rows=2, steps=3)
    got = np.where(valid, stacked[row, step, tok], 0)
    assert got[0, 2] == 0 and got[0, 0] == stacked[1, 0, sequences[0, 2]] and got[1, 2] == stacked[1, 2, 3]
    with pytest.raises(ValueError, match="beam_indices has 1 rows, sequences 2"):
        transition_index(sequences, beams[:1], rows=2, steps=3)
    with pytest.raises(ValueError, match="3 generated steps named by beam_indices, but scores hold 2"):
        transition_index(sequences, beams, rows=2, steps=2)
