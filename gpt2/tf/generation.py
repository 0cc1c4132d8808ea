"""generate() for the TensorFlow models: greedy, sampling and beam search, token for token as torch's (and
transformers 4.57's PyTorch), decoded in one XLA-compiled ``tf.while_loop``.

>>> from gpt2.tf import TFGPT2LMHeadModel
>>> model = TFGPT2LMHeadModel.from_pretrained("gpt2")
>>> ids = model.generate(prompt_ids, max_new_tokens=20)                                   # greedy
>>> ids = model.generate(prompt_ids, max_new_tokens=20, do_sample=True, top_p=0.9, seed=0)  # reproducible sampling
>>> out = model.generate(prompt_ids, num_beams=4, return_dict_in_generate=True, output_scores=True)
>>> ids = model.generate(prompt_ids, max_new_tokens=50, stop_strings=["\n\n"], tokenizer=tokenizer)

The rules -- which logits processors run and in which order, when a row stops, what finished rows are padded
with, how beams are scored and finalized -- are gpt2/torch/generation.py's, decided framework-free in
``gpt2.common.decoding`` (settings merge, lengths, eos / padding, the unsupported options, the processors and their
order); what the host does around a compiled loop (request checks, buckets, the compile key, stop strings and
streamers between chunks, the outputs) is ``gpt2.common.host_loop``'s, shared with Flax. What is TensorFlow's is the
plumbing:

- one function per (batch, prompt bucket, buffer size, option signature), ``tf.function(jit_compile=True)``, kept
  on the model: the prompt is left-padded (mask 0) to a power-of-two bucket, so another prompt length in the same
  bucket runs the same compiled code; the prompt's true length, max_length and the length-dependent processor
  options are traced scalars. The weights are Keras variables, captured as resource arguments (not constants), so
  compiling does not copy them;
- the prompt's forward runs before the compiled function (``prefill``), which then holds one copy of the blocks
  (the one-token step), not two: that halves what a first call traces and compiles (autograph is off too: the
  loop is written with ``tf.while_loop`` / ``tf.cond``, and converting every Keras call doubled the tracing). The
  first call runs the prompt eagerly (nothing more to trace); later ones as a TF graph kept per prompt shape
  (``_prefill_function``, about 4x faster than eager);
- inside it: a static KV cache for the whole run (the prompt's keys in its first slots; cache.py ``KVCache.at``),
  one ``tf.while_loop`` whose step writes one token per row at a traced position (the mask opens one key per step);
  processors read the ids buffer rolled so that the prompt starts at 0 (the bucket's padding never shows). For
  greedy decoding and sampling the loop's whole state goes in and out of the function (``_continue``), so that the
  host may run it in chunks (stop strings, streamer: host_loop.py ``run_in_chunks``), with the same function;
- sampling draws from counter-based stateless RNG keyed by ``seed`` and the step: the same seed, the same tokens,
  compiled or not (not torch's tokens: its generator is another algorithm).

What needs the host at every step (max_time, Python logits processors, stopping criteria,
prefix_allowed_tokens_fn, assisted decoding) is refused by name with the reason (common/decoding.py UNSUPPORTED, tf
column), and so are stop_strings with beam search; so are per-step attentions / hidden states, not implemented
here. A prompt given as ``inputs_embeds`` goes to the prefill (the loop then decodes ids; processors, stop strings,
the streamer and the output start at the first generated slot); ``token_type_ids`` go to the prefill, and the
loop's step adds the last column's type embedding to each new token (a (B, 1) argument of the compiled function).
``generation_config.disable_compile=True`` runs the same loop eagerly (the reference the tests compare with).
``tf.function(model.generate, jit_compile=True)`` inlines the same loop in the caller's function; its sequences are
then (B*n, max_length), padded after each row's end (transformers' TF XLA rule), see ``_generate_traced``.
"""

from __future__ import annotations

import functools

import numpy as np
import tensorflow as tf

from ..common import loading
from ..common.decoding import check_options, merge_settings, plan, processor_specs
from ..common.generation import GenerationConfig
from ..common.host_loop import (Static, finish, prepare, run_in_chunks, split_specs, static_key, traced_specs,
                                transition_index)
from .beam_search import beam_search
from .cache import KVCache
from .logits_process import build_processors, gumbel, record_step, run_processors
from .model import mask_value, scores_dtype
from .stopping import Stop

# -- the model behind generate() ------------------------------------------------------------------------------------
class Decoder:
    """Runs the model for generate(), traceably: one static KV cache of ``max_length`` slots for the run, the
    attention mask (the prompt's, then ones) with position ids from its cumsum as transformers'
    prepare_inputs_for_generation, logits of the last position only. ``decoder(ids)`` takes the prompt, then one
    token per row per call, written at the traced slot ``held``."""

    def __init__(self, model, input_ids, *, attention_mask, max_length: int, token_type_ids=None,
                 inputs_embeds=None, prompt: dict | None = None, state: tuple | None = None) -> None:
        B, T = input_ids.shape
        # (B, T), or (B, 1) in the loop (the prompt's last column): new tokens take the last column's type, as in
        # transformers
        self.token_types = token_type_ids
        # With inputs_embeds (B, T, C), the prompt's forward embeds them, not ids; the T prompt positions hold no
        # ids: processors, stop strings and the output see only the generated ids, from ``offset`` on
        self.embeds, self.offset = inputs_embeds, T if inputs_embeds is not None else 0
        self.model = model
        # TF always runs the fixed-shape step (torch's "fixed" path): every buffer holds max_length slots
        self.fixed = max_length
        self.prompt = prompt
        if state is not None:  # resumed: a state of _state(), loaded below
            self.cache = None
        elif prompt is None and max_length == T:  # the prompt alone (prefill()): each layer's keys are its own
            self.cache = KVCache()
        elif prompt is None:
            self.cache = KVCache.for_model(model, B, max_length)
        else:  # the prompt's keys and values, computed before (prefill()), in the first T of max_length slots
            slots = [[0, 0], [0, 0], [0, max_length - T], [0, 0]]
            self.cache = KVCache([tf.pad(k, slots) for k in prompt["keys"]],
                                 [tf.pad(v, slots) for v in prompt["values"]], static=True)
        self.kwargs = dict(output_attentions=False, output_hidden_states=False)
        mask = tf.cast(attention_mask, tf.int32)
        ones = tf.ones([B, max_length - T], tf.int32)
        self.mask = tf.concat([mask, ones], axis=1)  # (B, max_length): the prompt's, then ones
        self.prompt_positions = tf.where(mask == 0, 1, tf.cumsum(mask, axis=-1) - 1)
        self.next_position = tf.reduce_sum(mask, axis=-1, keepdims=True)  # (B, 1): real tokens so far
        self.last_output = None
        # slots written: a Python 0 before the prompt, then a traced scalar
        self.held = 0 if prompt is None else tf.constant(T, tf.int32)
        if state is not None:
            self._load(state)

    def _first_logits(self, ids: tf.Tensor) -> tf.Tensor:
        """The next-token logits (B, V) after the prompt ``ids`` (B, T): its forward, or the prefill's."""
        return self(ids) if self.prompt is None else self.prompt["logits"]

    def __call__(self, ids: tf.Tensor) -> tf.Tensor:
        """Feed ``ids`` (B, t) after what the cache holds; return the next-token logits (B, V) in fp32."""
        T, held, trunk = ids.shape[1], self.held, self.model.transformer
        prompt = isinstance(held, int)
        if prompt:
            positions = self.prompt_positions
        else:
            positions = self.next_position
            self.next_position = self.next_position + 1
        types = None
        if self.token_types is not None:
            types = self.token_types if prompt else tf.repeat(self.token_types[:, -1:], T, axis=1)
        if prompt and self.embeds is not None:
            x = trunk.embed(position_ids=positions, token_type_ids=types, inputs_embeds=self.embeds)
        else:
            x = trunk.embed(ids, position_ids=positions, token_type_ids=types)
        # query i sees the written keys up to its own slot; padding keys get half the mask value (common/numerics.py)
        dtype = scores_dtype(self.model.compute_dtype, self.model.config.reorder_and_upcast_attn)
        causal = tf.range(self.fixed)[None, :] <= tf.range(T)[:, None] + held
        bias = tf.where(causal, tf.zeros((), dtype), tf.constant(mask_value(dtype), dtype))
        padding = tf.equal(self.mask, 0)[:, None, None, :]
        bias = tf.where(padding & causal, tf.constant(mask_value(dtype) / 2, dtype), bias)
        view = self.cache.at(held) if self.cache.static else self.cache
        out = trunk.core(x, mask=bias, cache=view, **self.kwargs)
        self.cache = KVCache(view.keys, view.values, static=True)
        self.held = tf.cast(held + T, tf.int32)
        self.last_output = out
        logits = self.model.lm_head(out[0][:, -1:, :])
        return tf.cast(logits[:, -1, :], tf.float32)

    def close(self) -> None:
        """The run is over: nothing is held (the compiled function, not the decoder, is kept on the model)."""
        self.last_output = None

    def reorder(self, rows: tf.Tensor) -> None:
        """Beam search: row i of the cache becomes row ``rows[i]``."""
        self.cache.reorder_cache(rows)

    def _state(self) -> tuple:
        """What changes between steps, as loop variables. A one-row cache is kept as (nh, L, hs) buffers: with the
        size-1 batch dimension in the loop's state, XLA copies every buffer twice per step (cache.py ``_write``)."""
        return (tuple(_squeezed(k) for k in self.cache.keys), tuple(_squeezed(v) for v in self.cache.values),
                self.held, self.next_position)

    def _load(self, state: tuple) -> None:
        keys, values, self.held, self.next_position = state
        self.cache = KVCache([_unsqueezed(k) for k in keys], [_unsqueezed(v) for v in values], static=True)


def _squeezed(buffer: tf.Tensor) -> tf.Tensor:
    """A (1, nh, L, hs) cache buffer as (nh, L, hs); any other as it is."""
    if buffer.shape.rank == 4 and buffer.shape[0] == 1 and buffer.shape[1:].is_fully_defined():
        return tf.reshape(buffer, buffer.shape[1:])
    return buffer


def _unsqueezed(buffer: tf.Tensor) -> tf.Tensor:
    return tf.reshape(buffer, [1, *buffer.shape]) if buffer.shape.rank == 3 else buffer


def prefill(model, ids, mask, embeds=None, types=None) -> dict:
    """The prompt's forward, eagerly, outside the compiled decoding loop: the loop then holds one copy of the blocks
    (the one-token step) rather than two, which halves what a first call traces and compiles, and the prompt's
    matmuls run as TF's eager kernels (no trace, nothing to compile). Returns the next-token logits (B, V) in fp32
    and the prompt's keys and values per layer, (B, nh, T, hs) each. ``embeds`` (B, T, C): the prompt given as
    embeddings (``ids`` then only gives its shape); ``types`` (B, T): its token types."""
    decoder = Decoder(model, ids, attention_mask=mask, max_length=int(ids.shape[1]), token_type_ids=types,
                      inputs_embeds=embeds)
    logits = decoder(ids)
    return dict(logits=logits, keys=tuple(decoder.cache.keys), values=tuple(decoder.cache.values))


def _prefill_function(model, shape):
    """``prefill`` as a TF graph (no XLA), kept on the model per prompt shape (batch, bucket): what generate() runs
    from the second call of a compiled function on. The first call runs the prompt eagerly (no trace on top of the
    loop's trace and compilation); a graph runs it about 4x faster (one executor, no per-op Python), which a run of
    a few dozen tokens feels per token."""
    functions = model.__dict__.setdefault("_prefill_functions", {})
    if tuple(shape) not in functions:
        functions[tuple(shape)] = tf.function(functools.partial(prefill, model), autograph=False)
    return functions[tuple(shape)]


# -- generate() ------------------------------------------------------------------------------------------------------
class GenerationMixin(loading.GenerativeModel):
    """``generate()`` for the models with a language-model head; ``generation_config``, ``can_generate`` and the
    generation_config.json that from_pretrained reads and save_pretrained writes are common (loading.py)."""

    def generate(self, input_ids=None, attention_mask=None, generation_config: GenerationConfig | None = None,
                 streamer=None, seed=None, tokenizer=None, logits_processor=None, stopping_criteria=None,
                 prefix_allowed_tokens_fn=None, inputs_embeds=None, token_type_ids=None, assistant_model=None,
                 **kwargs):
        """Continue ``input_ids`` (B, T) (left-padded batches: give ``attention_mask``); returns the ids (B*n, T')
        as an int32 tensor or, with ``return_dict_in_generate=True``, a GenerateDecoderOnlyOutput /
        GenerateBeamDecoderOnlyOutput (scores and logits kept, one (B*n, V) per step, also when compiled).

        Options: ``self.generation_config``, overridden by the non-default values of ``generation_config``, then by
        ``kwargs`` (GenerationConfig fields: max_new_tokens, do_sample, temperature, top_k, top_p, min_p,
        typical_p, epsilon_cutoff, eta_cutoff, num_beams, length_penalty, early_stopping, repetition_penalty,
        no_repeat_ngram_size, bad_words_ids, sequence_bias, min_new_tokens, eos_token_id, pad_token_id,
        num_return_sequences, output_scores, disable_compile, ...). ``seed``: an int (or a tf.random.Generator to
        draw one from) for sampling; the same seed gives the same tokens, compiled or eager. Without one, the seed
        is drawn from TF's global RNG (``tf.random.set_seed`` makes runs repeatable, as in transformers).

        Compiled with XLA (``disable_compile=True``: the same loop, eagerly). ``stop_strings`` (greedy and
        sampling; they need ``tokenizer``, as in transformers) and ``streamer`` (``put(ids)`` / ``end()``, e.g.
        gpt2.common.streamers' TextStreamer; not with beam search, as in transformers): the compiled loop runs a
        few steps at a time (common/host_loop.py ``HOST_CHUNK``) and the host checks the strings and feeds the
        streamer in between; the tokens are torch's. ``inputs_embeds`` (B, T, C): the prompt as embeddings, instead
        of input_ids (its forward runs before the compiled loop); only the new ids come back, and max_length /
        min_length count the prompt's positions, as in transformers. ``token_type_ids`` (B, T): the prompt's token
        types; every new token takes the last column's. Not available in TF (refused by name): max_time,
        logits_processor, stopping_criteria, prefix_allowed_tokens_fn, assistant_model (they need the host at every
        step), stop_strings with beam search, output_attentions / output_hidden_states; inside the caller's
        tf.function, inputs_embeds and token_type_ids too.
        """
        if "inputs" in kwargs:  # transformers' name for the first argument
            if input_ids is not None:
                raise ValueError("give input_ids or inputs, not both")
            input_ids = kwargs.pop("inputs")
        cfg = merge_settings(self.generation_config, generation_config, **kwargs)
        if not tf.executing_eagerly():  # inside the caller's tf.function (jit_compile=True or not)
            return _generate_traced(self, cfg, input_ids=input_ids, attention_mask=attention_mask, seed=seed,
                                    others=dict(streamer=streamer, logits_processor=logits_processor,
                                                stopping_criteria=stopping_criteria, inputs_embeds=inputs_embeds,
                                                prefix_allowed_tokens_fn=prefix_allowed_tokens_fn,
                                                token_type_ids=token_type_ids, assistant=assistant_model))
        return _generate(self, cfg, input_ids=input_ids, attention_mask=attention_mask, streamer=streamer,
                         seed=seed, tokenizer=tokenizer,
                         others=dict(logits_processor=logits_processor, stopping_criteria=stopping_criteria,
                                     prefix_allowed_tokens_fn=prefix_allowed_tokens_fn, inputs_embeds=inputs_embeds,
                                     token_type_ids=token_type_ids, assistant_model=assistant_model))

    def compute_transition_scores(self, sequences, scores, beam_indices=None, normalize_logits: bool = False):
        """The score of each generated token at the step that chose it, (B*n, generated length), as transformers'
        ``compute_transition_scores``: ``scores`` from ``generate(..., return_dict_in_generate=True,
        output_scores=True)``, ``beam_indices`` from a beam search output; ``normalize_logits``: log-softmax first.
        Steps after a beam finished are 0.

        >>> out = model.generate(ids, max_new_tokens=5, return_dict_in_generate=True, output_scores=True)
        >>> model.compute_transition_scores(out.sequences, out.scores, normalize_logits=True)   # log-probabilities
        """
        if not scores:
            raise ValueError("scores is empty: pass generate(..., return_dict_in_generate=True, output_scores=True)'s "
                             "scores")
        stacked = tf.stack(tuple(scores), axis=1)  # (rows, steps, V)
        if normalize_logits:
            stacked = tf.nn.log_softmax(stacked, axis=-1)
        *where, valid = transition_index(sequences, beam_indices, rows=stacked.shape[0], steps=stacked.shape[1])
        return tf.where(valid, tf.gather_nd(stacked, np.stack(where, axis=-1)), tf.zeros((), stacked.dtype))


def _generate(model, cfg: GenerationConfig, *, input_ids, attention_mask, streamer, seed, tokenizer, others: dict):
    if not model.built:  # the prompt pass runs the trunk's layers directly: build the model as a whole first
        model.build()
    request = prepare(cfg, framework="tf", config=model.config, input_ids=input_ids, attention_mask=attention_mask,
                      streamer=streamer, tokenizer=tokenizer, others=others, traced_floats=False)
    static, P = request.static, request.prompt
    embeds, types, last_types = request.embeds, request.types, request.last_types
    if embeds is not None:
        embeds = tf.cast(tf.constant(embeds), model.compute_dtype)
    if types is not None:
        types, last_types = tf.constant(types), tf.constant(last_types)  # the loop adds the last column's type
    if isinstance(seed, tf.random.Generator):
        seed = seed.uniform_full_int([2], dtype=tf.int64)
    elif seed is None:
        seed = tf.random.uniform([2], maxval=tf.int64.max, dtype=tf.int64)
    else:
        seed = tf.constant([int(seed) >> 32, int(seed)] if np.ndim(seed) == 0 else [int(s) for s in seed], tf.int64)
    ids, mask = tf.constant(request.ids), tf.constant(request.mask)
    end = tf.constant(request.end, tf.int32)
    args = (mask, tf.constant(request.start, tf.int32), end, tf.constant(request.numbers or [0], tf.int32), seed,
            last_types)
    decode = _decode if static.num_beams > 1 else _continue
    if cfg.disable_compile:
        function, prompt = functools.partial(decode, model, static), prefill(model, ids, mask, embeds, types)
    else:
        functions = model.__dict__.setdefault("_generate_functions", {})
        key = (static, tuple(ids.shape), types is not None)
        prompt = (_prefill_function(model, ids.shape)(ids, mask, embeds, types) if key in functions
                  else prefill(model, ids, mask, embeds, types))
        if key not in functions:
            # autograph off: the loops are tf.while_loop / tf.cond already, and converting the model's code (every
            # Keras layer's call) would double the tracing time of a first call
            functions[key] = tf.function(functools.partial(decode, model, static), jit_compile=True,
                                         autograph=False)
        function = functions[key]
    if static.num_beams > 1:
        result = function(ids, *args, prompt)
    else:
        running = _start(Decoder(model, ids, attention_mask=mask, max_length=static.capacity, prompt=prompt),
                         tf.concat([ids, tf.zeros([ids.shape[0], static.capacity - P], tf.int32)], axis=1),
                         static=static)
        if request.strings is None and streamer is None:
            running = function(*args, end, running)
        else:  # the host checks the strings and feeds the streamer between chunks (common/host_loop.py)
            running = run_in_chunks(
                request, running, streamer=streamer,
                advance=lambda r, until: function(*args, tf.constant(until, tf.int32), r),
                read=lambda r: (int(r["cur"]), r["ids"].numpy().copy()),
                write=lambda r, ids, alive, cur: dict(r, ids=tf.constant(ids), unfinished=tf.constant(alive),
                                                      cur=tf.constant(cur)))
        result = _result(running)
    return finish(cfg, request, result, array=tf.constant, sequences_only=True)


def _generate_traced(model, cfg: GenerationConfig, *, input_ids, attention_mask, seed, others: dict):
    """generate() traced by the caller (``tf.function(model.generate, jit_compile=True)``): the same loop, inlined
    in the caller's function. Nothing can be read on the host there, so the prompt is not bucketed (the caller's
    function is specialised to its shapes anyway), token ids cannot be range-checked (give checked ids), the
    sequences come back as transformers' TF generate() returns them under XLA: (B*n, max_length), padded after
    each row's end with the padding id; return_dict_in_generate is refused (the number of steps is traced)."""
    # given: not None (a tensor's truth cannot be read in a trace), and not an empty list of hooks
    given = [k for k, v in others.items() if v is not None and not (isinstance(v, (list, tuple)) and not v)]
    if given:
        names = ", ".join(given)
        raise ValueError(f"generate() inside tf.function: {names} not supported in tf (see generate()'s docstring)")
    check_options(cfg, framework="tf")
    if cfg.stop_strings is not None:
        raise ValueError("generate() inside tf.function: stop_strings is not supported there (the host checks them "
                         "between compiled chunks: call model.generate eagerly)")
    if cfg.return_dict_in_generate:
        raise ValueError("generate() inside tf.function: return_dict_in_generate is not supported there (call "
                         "model.generate eagerly: it is compiled with XLA already)")
    ids = tf.convert_to_tensor(input_ids)
    if ids.shape.rank != 2 or None in ids.shape or not ids.dtype.is_integer:
        raise ValueError(f"generate() inside tf.function needs input_ids of a static 2-D integer shape, got "
                         f"{ids.dtype.name} of shape {ids.shape}")
    V, (B, T) = model.config.vocab_size, ids.shape
    run = plan(cfg, input_length=T, max_positions=model.config.n_positions, vocab_size=V,
               has_attention_mask=attention_mask is not None)
    ids = tf.cast(ids, tf.int32)
    if attention_mask is not None:
        mask = tf.cast(attention_mask, tf.int32)
    elif run.may_infer_mask(has_attention_mask=False):
        mask = tf.cast(ids != run.pad, tf.int32)  # transformers infers the mask from the padding
    else:
        mask = tf.ones_like(ids)
    if run.rows_per_prompt > 1:
        ids, mask = tf.repeat(ids, run.rows_per_prompt, axis=0), tf.repeat(mask, run.rows_per_prompt, axis=0)
    specs, numbers, _ = split_specs(processor_specs(cfg, run, vocab_size=V), floats=False)
    static = static_key(cfg, run, capacity=run.max_length, specs=specs)  # records: refused above
    if seed is None:
        seed = tf.random.uniform([2], maxval=tf.int64.max, dtype=tf.int64)
    seed = tf.cast(tf.stack([0, seed]) if tf.convert_to_tensor(seed).shape.rank == 0 else seed, tf.int64)
    result = _decode(model, static, ids, mask, tf.constant(0), tf.constant(run.max_length),
                     tf.constant(numbers or [0], tf.int32), seed, None)
    out = result["ids"]
    if static.num_beams > 1:
        n = static.num_return_sequences
        return tf.reshape(tf.reshape(out, [-1, static.num_beams, run.max_length])[:, :n], [-1, run.max_length])
    fill = run.pad if run.pad is not None else 0
    return tf.where(tf.range(run.max_length)[None, :] < result["length"], out, fill)


def _decode(model, static: Static, ids, mask, shift, max_length, numbers, seed, types, prompt: dict | None = None):
    """The whole decoding, traceable: the prompt's forward (unless ``prompt`` holds it already), then the loop.
    ``shift``: the first slot processors see (the bucket's padding before the prompt; with an inputs_embeds prompt,
    the prompt too); ``max_length``: where rows stop, in buffer slots (the bucket's padding + the plan's
    max_length); ``types``: None, or (B, 1) the token type of every new token."""
    model.__dict__["_generate_traces"] = model.__dict__.get("_generate_traces", 0) + 1  # at trace time only
    B, P = ids.shape
    processors = build_processors(traced_specs(static.specs, numbers), vocab_size=model.config.vocab_size)
    stop = Stop(eos=list(static.eos), max_length=max_length)
    decoder = Decoder(model, ids, attention_mask=mask, max_length=static.capacity, prompt=prompt,
                      token_type_ids=types)
    if static.num_beams > 1:
        fill = (static.pad if static.pad else static.eos[0]) if static.eos else -1
        buffer = tf.concat([ids, tf.fill([B, static.capacity - P], fill)], axis=1)
        return beam_search(decoder, buffer, static=static, shift=shift, max_length=max_length,
                           processors=processors, stop=stop, seed=seed)
    buffer = tf.concat([ids, tf.zeros([B, static.capacity - P], tf.int32)], axis=1)
    running = _sample(decoder, _start(decoder, buffer, static=static), static=static, shift=shift,
                      max_length=max_length, until=max_length, processors=processors, stop=stop, seed=seed)
    return _result(running)


def _continue(model, static: Static, mask, shift, max_length, numbers, seed, types, until, running: dict) -> dict:
    """Greedy decoding / sampling from ``running`` (the prompt's forward done, maybe some steps too) until slot
    ``until`` or the end (max_length, every row finished): the compiled function of generate() for one beam. The
    state comes in and goes out whole, so that the host may run it in chunks (stop strings)."""
    model.__dict__["_generate_traces"] = model.__dict__.get("_generate_traces", 0) + 1  # at trace time only
    P = mask.shape[1]
    processors = build_processors(traced_specs(static.specs, numbers), vocab_size=model.config.vocab_size)
    stop = Stop(eos=list(static.eos), max_length=max_length)
    decoder = Decoder(model, running["ids"][:, :P], attention_mask=mask, max_length=static.capacity,
                      token_type_ids=types, state=running["state"])
    return _sample(decoder, running, static=static, shift=shift, max_length=max_length, until=until,
                   processors=processors, stop=stop, seed=seed)


# The variables of the greedy / sampling loop ("running"): the next slot, the ids buffer (B, C), the rows not finished
# (B,), the next-token logits (B, V), the per-step records (B, steps, V) or empty, the decoder's state (cache keys,
# values, slots held, next positions).
RUNNING = ("cur", "ids", "unfinished", "next_logits", "scores", "logits", "state")


def _result(running: dict) -> dict:
    return dict(ids=running["ids"], length=running["cur"], scores=running["scores"], logits=running["logits"])


def _start(decoder: Decoder, ids, *, static: Static) -> dict:
    """The loop's first state: the prompt's forward (or the prefill's), nothing generated."""
    B, C = ids.shape
    prompt = int(decoder.prompt_positions.shape[1])
    V, steps = decoder.model.config.vocab_size, C - prompt
    logits = decoder._first_logits(ids[:, :prompt])
    return dict(zip(RUNNING, (tf.constant(prompt, tf.int32), ids, tf.ones([B], tf.bool), logits,
                              tf.zeros([B, steps, V] if static.record_scores else [0]),
                              tf.zeros([B, steps, V] if static.record_logits else [0]), decoder._state())))


def _sample(decoder: Decoder, running: dict, *, static: Static, shift, max_length, until, processors,
            stop: Stop, seed) -> dict:
    """Greedy decoding and sampling (transformers' ``_sample``), one token per row per step, in a while_loop from
    ``running`` until slot ``until`` (or max_length, or every row finished)."""
    B, C = running["ids"].shape
    prompt = int(decoder.prompt_positions.shape[1])

    def choose(cur, ids, unfinished, logits, scores_rec, logits_rec):
        """The token of slot ``cur`` from ``logits``: processors, records, the pick, the stop criteria."""
        seen = tf.roll(ids, -shift, axis=1)  # the ids from the prompt's first slot on: what torch's processors read
        next_scores = run_processors(processors, seen, cur - shift, logits)
        if static.record_scores:
            scores_rec = record_step(scores_rec, cur - prompt, next_scores)
        if static.record_logits:
            logits_rec = record_step(logits_rec, cur - prompt, logits)
        if static.do_sample:
            next_tokens = tf.argmax(next_scores + gumbel(tf.shape(next_scores), seed, cur), axis=-1,
                                    output_type=tf.int32)
        else:
            next_tokens = tf.argmax(next_scores, axis=-1, output_type=tf.int32)
        if static.eos:  # finished rows get padding
            next_tokens = tf.where(unfinished, next_tokens, static.pad)
        ids = tf.where(tf.range(C)[None, :] == cur, next_tokens[:, None], ids)
        cur = cur + 1
        unfinished = unfinished & ~stop(ids, cur)
        return cur, ids, unfinished, scores_rec, logits_rec, next_tokens

    def body(cur, ids, unfinished, logits, scores_rec, logits_rec, state):
        # a token, then the forward for the next one, always: no tf.cond around the step, whose operands XLA copies
        # whole (every cache buffer, every step). The loop stops before the last slot's token, which is chosen
        # after it without a forward; only rows that all finish early leave one forward unused.
        decoder._load(state)
        cur, ids, unfinished, scores_rec, logits_rec, next_tokens = choose(cur, ids, unfinished, logits, scores_rec,
                                                                           logits_rec)
        logits = decoder(next_tokens[:, None])
        return cur, ids, unfinished, logits, scores_rec, logits_rec, decoder._state()

    def more(cur, ids, unfinished, *rest):  # the token of slot cur needs a forward after it
        return (cur < tf.minimum(max_length - 1, until)) & tf.reduce_any(unfinished)

    out = tf.while_loop(more, body, tuple(running[k] for k in RUNNING), maximum_iterations=C - prompt)
    cur, ids, unfinished, logits, scores_rec, logits_rec, state = out
    last = (cur < tf.minimum(max_length, until)) & tf.reduce_any(unfinished)  # the last slot's token, if due
    chosen = choose(cur, ids, unfinished, logits, scores_rec, logits_rec)[:5]
    cur, ids, unfinished, scores_rec, logits_rec = (tf.where(last, new, old) for new, old in
                                                   zip(chosen, (cur, ids, unfinished, scores_rec, logits_rec)))
    out = (cur, ids, unfinished, logits, scores_rec, logits_rec, state)
    return dict(zip(RUNNING, out))
