"""The host's half of the compiled generate() loops (TF's ``tf.while_loop``, Flax's ``lax.while_loop``),
framework-free: what the TF and Flax generate() do the same way around their compiled functions, written once.

A compiled generate() (gpt2/tf/generation.py, gpt2/flax/generation.py) goes:

1. ``prepare(cfg, framework=..., config=..., input_ids=..., ...)`` -> ``Request``: the stop strings, the
   unsupported options and the request checks (decoding.py's rules, on numpy copies of the inputs), the plan, the
   inferred mask, each prompt repeated per returned row, the prompt left-padded to its bucket, and ``Static``: what
   the compiled function is specialised to (the processors' static options among it; ``split_specs``);
2. the framework turns the Request's numpy arrays into its own, compiles per Static, and runs the loop: inside
   the trace, ``traced_specs`` puts the traced numbers back into the processors' options;
3. with stop strings or a streamer, ``run_in_chunks`` runs the compiled loop ``HOST_CHUNK`` steps at a time and does
   torch's per-step bookkeeping on the host in between (the framework passes its calls in, as ``advance`` /
   ``read`` / ``write``, the way ``decoding.infer_mask`` is asked by each framework);
4. ``finish`` cuts the loop's buffers to what torch's generate() returns, as transformers' output objects.

Nothing here imports a framework: arrays are read with ``np.asarray`` (TF eager tensors and JAX arrays both
convert), and made with the ``array`` function the framework passes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, NamedTuple

import numpy as np

from .decoding import (Plan, ProcessorSpec, StopStrings, bucket, check_attention_mask, check_inputs_embeds,
                       check_options, check_prompt, check_token_range, check_token_type_ids, hashable, infer_mask,
                       plan, processor_specs)
from .generation import GenerationConfig
from .outputs import GenerateBeamDecoderOnlyOutput, GenerateDecoderOnlyOutput

# Processor options that depend on the prompt's length (min_length, forced eos, the decay start, begin-suppress):
# traced int32 scalars, so that a new prompt length or max_new_tokens in the same buckets does not retrace.
TRACED_OPTIONS = ("min_length", "at_length", "start")
# Float options Flax traces as float32 scalars (a new temperature or top_p does not retrace; TF keeps them static).
# The decay penalty's factor stays static: logits_process.py computes its log in float64 on the host, as torch does.
TRACED_FLOATS = ("temperature", "penalty", "p", "min_p", "mass", "epsilon", "eta")
# Steps per compiled call between two visits of the host (stop strings, streamer): few enough that little is decoded
# past a stop and tokens reach a streamer early, enough that the calls' overhead stays small against the steps' work.
HOST_CHUNK = 8


class Static(NamedTuple):
    """What one compiled loop is specialised to (with the input shapes); everything else is traced."""

    capacity: int  # slots of the ids buffer and the cache: the prompt bucket, then the new tokens' bucket
    specs: tuple  # per processor: its name, its static options, the names of its traced ints and floats
    eos: tuple
    pad: int | None
    do_sample: bool
    num_beams: int
    num_return_sequences: int
    early_stopping: object
    length_penalty: float
    record_scores: bool
    record_logits: bool


def static_key(cfg: GenerationConfig, run: Plan, *, capacity: int, specs: tuple) -> Static:
    """The Static of a run: ``capacity`` slots, the processors' static ``specs`` (``split_specs``), the plan's eos
    and padding, the decoding mode and what return_dict_in_generate records per step."""
    return Static(capacity=capacity, specs=specs, eos=run.eos, pad=run.pad, do_sample=bool(cfg.do_sample),
                  num_beams=cfg.num_beams, num_return_sequences=cfg.num_return_sequences,
                  early_stopping=cfg.early_stopping, length_penalty=float(cfg.length_penalty),
                  record_scores=bool(cfg.return_dict_in_generate and cfg.output_scores),
                  record_logits=bool(cfg.return_dict_in_generate and cfg.output_logits))


def split_specs(specs: list[ProcessorSpec], *, floats: bool) -> tuple[tuple, list[int], list[float]]:
    """Each spec's options split into static ones (part of the compile key, made hashable) and the traced ones:
    the ints of ``TRACED_OPTIONS`` and, with ``floats``, the floats of ``TRACED_FLOATS``. Returns (the key: per
    processor (name, static options, traced int names, traced float names), the ints, the floats)."""
    static, numbers, reals = [], [], []
    for spec in specs:
        ints = tuple(k for k in TRACED_OPTIONS if spec.options.get(k) is not None)
        fls = tuple(k for k in TRACED_FLOATS if floats and spec.options.get(k) is not None)
        numbers += [int(spec.options[k]) for k in ints]
        reals += [float(spec.options[k]) for k in fls]
        kept = {k: v for k, v in spec.options.items() if k not in ints + fls}
        static.append((spec.name, hashable(kept), ints, fls))
    return tuple(static), numbers, reals


def traced_specs(specs: tuple, numbers: Any, floats: Any = ()) -> list[ProcessorSpec]:
    """The ProcessorSpecs again, inside the trace: ``split_specs``' key with the traced ``numbers`` / ``floats``
    (the framework's 1-D arrays, indexed in order) in place of the options they stand for."""
    out, i, j = [], 0, 0
    for name, options, ints, fls in specs:
        options = {k: (dict(v) if k == "bias" else list(v) if isinstance(v, tuple) else v) for k, v in options}
        for k in ints:
            options[k], i = numbers[i], i + 1
        for k in fls:
            options[k], j = floats[j], j + 1
        out.append(ProcessorSpec(name, options))
    return out


# -- the request -------------------------------------------------------------------------------------------------
@dataclass
class Request:
    """One generate() call, checked and laid out for the compiled loop, in numpy: the prompts (each repeated per
    returned row) left-padded to ``prompt`` slots (a bucket; the padding masked), ``last_types`` (rows, 1) the token
    type of every new token, the traced processor numbers, ``start`` the first slot the caller, processors, stop
    strings and streamer see (the bucket's padding, and with an inputs_embeds prompt the prompt too, come before it),
    ``end`` the slot where rows stop (the bucket's padding + the plan's max_length)."""

    ids: np.ndarray  # (rows, prompt) int32
    mask: np.ndarray  # (rows, prompt) int32
    embeds: np.ndarray | None  # (rows, prompt, C)
    types: np.ndarray | None  # (rows, prompt) int32
    last_types: np.ndarray | None  # (rows, 1) int32
    static: Static
    numbers: list[int]
    floats: list[float]
    prompt: int
    start: int
    end: int
    strings: StopStrings | None


def _floating(dtype: np.dtype) -> bool:
    # TF's and JAX's bfloat16 / float8 arrays read as ml_dtypes' types, of numpy kind "V"
    return dtype.kind == "f" or (dtype.kind == "V" and dtype.name.startswith(("bfloat", "float")))


def _dtype_text(x: Any, array: np.ndarray) -> str:
    """How a message names an input's dtype: its own (a tensor's, an array's), or what a list converted to."""
    return str(array.dtype) if hasattr(x, "dtype") else f"{type(x).__name__} of {array.dtype}"


def _check_inputs(cfg: GenerationConfig, *, config, input_ids, attention_mask, inputs_embeds, token_type_ids):
    """Validate on the host (decoding.py's rules) and read as numpy: (ids, mask, embeds, types), ids, mask and types
    int64 (mask, embeds and types None when not given). With inputs_embeds alone, input_ids is a placeholder of its
    (B, T) that generate() never shows (torch's rule); token types are range-checked here, before any gather (the
    compiled loops' gathers would not check them)."""
    V = config.vocab_size
    embeds = None
    if inputs_embeds is not None:
        embeds = np.asarray(inputs_embeds)
        check_inputs_embeds(shape=embeds.shape, dtype=_dtype_text(inputs_embeds, embeds), n_embd=config.n_embd,
                            with_input_ids=input_ids is not None, floating=_floating(embeds.dtype))
        input_ids = np.zeros(embeds.shape[:2], dtype=np.int64)
    if input_ids is None:
        if cfg.bos_token_id is None:
            raise ValueError("generate() needs input_ids, or a bos_token_id to start from")
        input_ids = np.full((1, 1), cfg.bos_token_id, dtype=np.int64)
    ids = np.asarray(input_ids)
    check_prompt(shape=ids.shape, dtype=_dtype_text(input_ids, ids), integer=ids.dtype.kind in "iu")
    check_token_range(low=int(ids.min()), high=int(ids.max()), vocab_size=V)
    mask = None
    if attention_mask is not None:
        mask = np.asarray(attention_mask)
        check_attention_mask(shape=mask.shape if mask.ndim else None, ids_shape=ids.shape,
                             binary=mask.shape == ids.shape and bool(np.isin(mask, (0, 1)).all()))
        mask = mask.astype(np.int64)
    types = None
    if token_type_ids is not None:
        types = np.asarray(token_type_ids)
        check_token_type_ids(shape=types.shape if types.ndim else None, ids_shape=ids.shape, values=types,
                             vocab_size=V)
        types = types.astype(np.int64)
    return ids.astype(np.int64), mask, embeds, types


def _left_pad(x: np.ndarray | None, shift: int, dtype=None) -> np.ndarray | None:
    """``x`` (rows, T, ...) with ``shift`` zero columns before its first: a prompt in its bucket."""
    if x is None:
        return None
    out = np.concatenate([np.zeros((x.shape[0], shift) + x.shape[2:], x.dtype), x], axis=1)
    return out if dtype is None else out.astype(dtype)


def prepare(cfg: GenerationConfig, *, framework: str, config, input_ids, attention_mask, streamer, tokenizer,
            others: dict, traced_floats: bool) -> Request:
    """A generate() call of the compiled loop of ``framework`` ("tf" or "flax"), checked at the boundary before
    anything is traced, as a Request. ``config``: the model's GPT2Config; ``others``: generate()'s other arguments,
    by the names of decoding.UNSUPPORTED (logits_processor, stopping_criteria, prefix_allowed_tokens_fn,
    inputs_embeds, token_type_ids, assistant_model; None: not given); ``traced_floats``: whether the float options
    are traced (``split_specs``). Raises ValueError / TypeError naming what is refused."""
    strings = None
    if cfg.stop_strings is not None:
        if cfg.num_beams > 1:
            raise ValueError(f"generate(): stop_strings with beam search (num_beams > 1) is not supported in "
                             f"{framework} (each step's candidate beams would need the host)")
        strings = StopStrings(cfg.stop_strings, tokenizer)
    check_options(cfg, framework=framework, streamer=streamer,
                  output_attentions=cfg.return_dict_in_generate and cfg.output_attentions,
                  output_hidden_states=cfg.return_dict_in_generate and cfg.output_hidden_states, **others)
    ids, mask, embeds, types = _check_inputs(cfg, config=config, input_ids=input_ids, attention_mask=attention_mask,
                                             inputs_embeds=others.get("inputs_embeds"),
                                             token_type_ids=others.get("token_type_ids"))
    V = config.vocab_size
    T = ids.shape[1]
    run = plan(cfg, input_length=T, max_positions=config.n_positions, vocab_size=V,
               has_attention_mask=mask is not None, from_embeds=embeds is not None, stacklevel=5)
    if infer_mask(run, ids, has_attention_mask=mask is not None, from_embeds=embeds is not None, stacklevel=5):
        mask = (ids != run.pad).astype(np.int64)  # transformers infers the mask from the padding
    if mask is None:
        mask = np.ones_like(ids)
    if run.rows_per_prompt > 1:
        ids, mask, embeds, types = (np.repeat(x, run.rows_per_prompt, axis=0) if x is not None else None
                                    for x in (ids, mask, embeds, types))
    specs, numbers, floats = split_specs(processor_specs(cfg, run, vocab_size=V), floats=traced_floats)
    # the prompt left-padded to its bucket (mask 0: never seen, and the positions restart at the first real token;
    # the padding embeds zeros)
    P = bucket(T)
    shift = P - T
    types = _left_pad(types, shift, np.int32)
    return Request(ids=_left_pad(ids, shift, np.int32), mask=_left_pad(mask, shift, np.int32),
                   embeds=_left_pad(embeds, shift), types=types,
                   last_types=None if types is None else types[:, -1:],  # every new token takes the last type
                   static=static_key(cfg, run, capacity=P + bucket(run.max_length - T), specs=specs),
                   numbers=numbers, floats=floats, prompt=P, start=shift + run.offset, end=shift + run.max_length,
                   strings=strings)


# -- stop strings and streamers: the compiled loop in chunks -------------------------------------------------------
def run_in_chunks(request: Request, running: Any, *, streamer, advance: Callable[[Any, int], Any],
                  read: Callable[[Any], tuple[int, np.ndarray]],
                  write: Callable[[Any, np.ndarray, np.ndarray, int], Any]) -> Any:
    """Greedy decoding / sampling with stop strings or a streamer: the compiled loop runs ``HOST_CHUNK`` steps at a
    time (its state, ``running``, carried from call to call), and the host goes through them step by step in
    between, as torch's loop does after each token: the streamer gets the step's tokens, then eos and the strings are
    checked (decoding.py StopStrings). A row that stopped inside a chunk had tokens decoded after its stop; they
    become padding (torch pads finished rows when there is an eos, and otherwise keeps decoding them exactly as the
    device did), and the next chunk starts with the row finished. The output ends at the first step where every row
    had finished, so the tokens (and what the streamer got) are torch's. With per-step records (output_scores /
    output_logits) and stop strings a chunk is one step: a finished row's later scores are then those of its
    padding, as torch's.

    The framework's calls: ``advance(running, until)`` runs the compiled loop until slot ``until`` (or the end, or
    every row finished); ``read(running)`` gives the next slot and the ids buffer (a writable numpy copy);
    ``write(running, ids, unfinished, cur)`` the state with the host's ids, unfinished rows and next slot. Returns
    the last state."""
    static, strings, shift, end = request.static, request.strings, request.start, request.end
    if streamer is not None:  # the prompt first, as torch's (and transformers') generate: none after embeddings
        streamer.put(request.ids[:, shift:])
    chunk = 1 if strings is not None and (static.record_scores or static.record_logits) else HOST_CHUNK
    cur, alive = request.prompt, np.ones(request.ids.shape[0], bool)
    eos = list(static.eos)
    while True:
        running = advance(running, min(cur + chunk, end))
        reached, ids = read(running)
        for t in range(cur, reached):  # the token written at slot t
            if eos:
                ids[~alive, t] = static.pad  # rows that stopped earlier in this chunk: torch pads them
            if streamer is not None:
                streamer.put(ids[:, t].copy())
            done = np.isin(ids[:, t], eos)
            if strings is not None:
                done |= np.array(strings([row[max(shift, t + 1 - strings.window): t + 1] for row in ids.tolist()]),
                                 dtype=bool)
            alive &= ~done
            if not alive.any():
                reached = t + 1
                break
        cur = reached
        running = write(running, ids, alive, cur)
        if cur >= end or not alive.any():
            if streamer is not None:
                streamer.end()
            return running


# -- the outputs -------------------------------------------------------------------------------------------------
def finish(cfg: GenerationConfig, request: Request, result: dict, *, array: Callable[[np.ndarray], Any],
           sequences_only: bool):
    """The compiled loop's outputs cut, on the host, to what torch's generate() returns. ``result``: the greedy /
    sampling loop's ``ids`` (rows, capacity) and ``length`` (the next slot), or beam search's ``ids``,
    ``beam_scores``, ``beam_indices`` and ``steps``; with records, ``scores`` / ``logits`` (rows, steps, V), kept
    as the framework's arrays (one per step in the output). ``array``: a numpy array as the framework's (same
    dtype); ``sequences_only``: without return_dict_in_generate, the sequences alone (TF, torch) rather than an
    output object holding them (transformers' Flax convention)."""
    static, shift, prompt = request.static, request.start, request.prompt
    ids = np.asarray(result["ids"])
    beams = static.num_beams > 1
    if beams:
        n_return = static.num_return_sequences
        sequences = ids.reshape(-1, static.num_beams, ids.shape[-1])[:, :n_return].reshape(-1, ids.shape[-1])
        beam_scores = np.asarray(result["beam_scores"])[:, :n_return].reshape(-1)
        beam_indices = np.asarray(result["beam_indices"])[:, :n_return].reshape(sequences.shape[0], -1)
        generated = int((beam_indices + 1).astype(bool).sum(axis=1).max())
        sequences, beam_indices = sequences[:, shift: prompt + generated], beam_indices[:, :generated]
        steps = int(result["steps"])
    else:
        length = int(result["length"])
        sequences, steps = ids[:, shift: length], length - prompt
    sequences = array(np.ascontiguousarray(sequences, np.int32))
    output = GenerateBeamDecoderOnlyOutput if beams else GenerateDecoderOnlyOutput
    if not cfg.return_dict_in_generate:
        return sequences if sequences_only else output(sequences=sequences)
    scores = tuple(result["scores"][:, i] for i in range(steps)) if static.record_scores else None
    logits = tuple(result["logits"][:, i] for i in range(steps)) if static.record_logits else None
    if not beams:
        return output(sequences=sequences, scores=scores, logits=logits)
    return output(sequences=sequences, sequences_scores=array(beam_scores) if cfg.output_scores else None,
                  scores=scores, logits=logits, beam_indices=array(np.ascontiguousarray(beam_indices, np.int32)))


def transition_index(sequences, beam_indices, *, rows: int, steps: int) -> tuple[np.ndarray, ...]:
    """Where compute_transition_scores reads each generated token's score, on the host: scores stacked as
    (``rows``, ``steps``, V); ``beam_indices`` (B*n, steps), -1 after a beam finished, or None (greedy / sampling:
    row i's scores chose row i's tokens). Returns (row, step, token, valid), each (B*n, generated length) -- the
    score is ``stacked[row, step, token]`` where ``valid``, else 0 (transformers' rule)."""
    sequences = np.asarray(sequences)
    if beam_indices is None:
        beam_indices = np.broadcast_to(np.arange(rows)[:, None], (rows, steps))
    beam_indices = np.asarray(beam_indices).astype(np.int32)
    if beam_indices.shape[0] != sequences.shape[0]:
        raise ValueError(f"beam_indices has {beam_indices.shape[0]} rows, sequences {sequences.shape[0]}")
    valid = beam_indices >= 0
    length = int(valid.sum(axis=-1).max())
    if length > steps or length > sequences.shape[-1]:
        raise ValueError(f"{length} generated steps named by beam_indices, but scores hold {steps} and sequences "
                         f"{sequences.shape[-1]} columns")
    which, valid = np.maximum(beam_indices[:, :length], 0), valid[:, :length]
    tokens = sequences[:, sequences.shape[-1] - length:].astype(np.int32)
    return which, np.broadcast_to(np.arange(length, dtype=np.int32)[None, :], which.shape), tokens, valid
