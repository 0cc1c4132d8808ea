"""generate() for the Flax models: greedy, sampling and beam search, token for token as torch's (and transformers
4.57's PyTorch), decoded in one ``lax.while_loop`` under ``jax.jit``.

>>> from gpt2.flax import FlaxGPT2LMHeadModel
>>> model = FlaxGPT2LMHeadModel.from_pretrained("gpt2")
>>> ids = model.generate(prompt_ids, max_new_tokens=20).sequences                              # greedy
>>> ids = model.generate(prompt_ids, max_new_tokens=20, do_sample=True, top_p=0.9,
...                      prng_key=jax.random.key(0)).sequences                                # reproducible sampling
>>> out = model.generate(prompt_ids, num_beams=4, return_dict_in_generate=True, output_scores=True)
>>> ids = model.generate(prompt_ids, max_new_tokens=50, stop_strings=["\\n\\n"], tokenizer=tokenizer).sequences

The rules -- which logits processors run and in which order, when a row stops, what finished rows are padded
with, how beams are scored and finalized -- are gpt2/torch/generation.py's, decided framework-free in
``gpt2.common.decoding``; what the host does around the compiled loop (request checks, buckets, the compile key,
stop strings and streamers between chunks, the outputs) is ``gpt2.common.host_loop``'s, shared with TF. What is
JAX's is the plumbing (gpt2/tf/generation.py is the same design in TF):

- the model is split once per call (``nnx.split``): its GraphDef is static (part of the compiled function's key),
  its weights are an ARGUMENT of the compiled functions, never captured constants: compiling copies no weight, and
  ``params=`` runs other weights through the same compiled code;
- the prompt is left-padded (mask 0) to a power-of-two bucket and the new tokens get a power-of-two bucket of slots,
  so another prompt length or another max_new_tokens in the same buckets runs the same compiled code: the prompt's
  true length, max_length, the length-dependent processor options and the float options (temperature, top_p, ...:
  host_loop.py ``TRACED_OPTIONS``, ``TRACED_FLOATS``) are traced scalars;
- two compiled functions per run: the prompt's forward (``prefill``, per batch, prompt bucket and cache size), then
  the decoding loop (per batch, buckets and option signature) holding one copy of the blocks, the one-token step;
  both are kept per model (a module-level weak registry, ``_FUNCTIONS``; ``trace_count(model)`` counts traces);
- inside the loop: a static KV cache of ``capacity`` slots (cache.py ``KVCache.at``: the step writes one token per
  row at a traced slot, the mask opens one key per step), the loop's state (``_Running``, a NamedTuple: a pytree)
  donated from call to call; processors read the ids buffer rolled so that the prompt starts at 0 (the bucket's
  padding never shows). For greedy decoding and sampling the whole state goes in and out (``_continue``), so the host
  may run the loop in chunks: stop_strings are checked and a streamer fed between chunks (host_loop.py);
- sampling: Gumbel-max noise from ``jax.random.fold_in(prng_key, step)`` (logits_process.py ``sample``): a fixed
  key gives the same tokens whatever the chunking (not torch's tokens: its generator is another algorithm).

- the compiled functions run the trunk's ``embed`` and ``core`` (model.py), never its checked ``__call__``: every
  input was validated on the host before tracing, so the compiled code carries no ``jax.debug.callback`` (a
  device-to-host transfer per call; under a mesh a rematerialization of the ids);
- weights on a mesh (sharding.py ``shard_model``): the prompt's batch is placed over "data" (``shard_batch``, when
  it divides) and the static cache laid out by ``shard_cache`` (batch over "data", heads over "model") in the
  prefill and at every step, so the layouts are fixed rather than chosen by XLA's propagation.

A prompt given as ``inputs_embeds`` goes to the prefill (the loop then decodes ids; processors, stop strings, the
streamer and the output start at the first generated slot, and lengths count the prompt's positions: torch's and
transformers' rules); ``token_type_ids`` go to the prefill, and the compiled step adds the last column's type
embedding to each new token (a (B, 1) argument of the loop). What needs the host at every step (max_time, Python
logits processors, stopping criteria, prefix_allowed_tokens_fn, assisted decoding) is refused by name with the reason
(common/decoding.py UNSUPPORTED, flax column), as are stop_strings with beam search and per-step attentions / hidden
states (not implemented here).
"""

from __future__ import annotations

import functools
import weakref
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ..common import loading
from ..common.decoding import merge_settings
from ..common.generation import GenerationConfig
from ..common.host_loop import Static, finish, prepare, run_in_chunks, traced_specs, transition_index
from .beam_search import beam_search
from .cache import KVCache
from .logits_process import build_processors, record_step, run_processors, sample
from .model import is_concrete, mask_value, scores_dtype
from .pretrained import hold
from .sharding import DATA, model_mesh, shard_batch, shard_cache
from .stopping import Stop

def _logits(model, x: jax.Array) -> jax.Array:
    """The LM head over hidden states x (B, t, C): a tied head attends over the trunk's token table (logits =
    x @ wte.T, GPT-2's tied embeddings), an untied one is the model's ``lm_head``."""
    head = getattr(model, "lm_head", None)
    if head is None or model.config.tie_word_embeddings:
        return model.trunk.wte.attend(x)
    return head(x)


# -- the model behind generate() ------------------------------------------------------------------------------------
class Decoder:
    """Runs the model for generate(), traceably: one static KV cache of ``max_length`` slots for the run, the
    attention mask (the prompt's, then ones) with position ids from its cumsum as transformers'
    prepare_inputs_for_generation, logits of the last position only. ``decoder(ids)`` takes the prompt, then one
    token per row per call, written at the traced slot ``held``. ``state``: resume from ``_state()`` (the loop's
    variables), with no cache allocated."""

    def __init__(self, model, input_ids, *, attention_mask, max_length: int, token_type_ids=None,
                 inputs_embeds=None, state: tuple | None = None, mesh=None) -> None:
        B, T = input_ids.shape
        # (B, T), or (B, 1) in the loop (the prompt's last column): new tokens take the last column's type, as in
        # transformers
        self.token_types = token_type_ids
        # With inputs_embeds (B, T, C), the prompt's forward embeds them, not ids; the T prompt positions hold no
        # ids: processors, stop strings and the output see only the generated ids, from ``offset`` on
        self.embeds, self.offset = inputs_embeds, T if inputs_embeds is not None else 0
        self.model = model
        # the model's weights on a mesh (sharding.py): the cache keeps shard_cache's layout (batch over "data", heads
        # over "model") from the prefill through every step, rather than whatever XLA's propagation picks
        self.mesh = mesh
        # JAX always runs the fixed-shape step (torch's "fixed" path): every buffer holds max_length slots
        self.fixed = max_length
        self.cache = None
        if state is None:
            self.cache = KVCache.for_model(model, B, max_length)
            if mesh is not None:
                self.cache = shard_cache(self.cache, mesh)
        self.kwargs = dict(output_attentions=False, output_hidden_states=False)
        mask = jnp.asarray(attention_mask, jnp.int32)
        self.mask = jnp.concatenate([mask, jnp.ones((B, max_length - T), jnp.int32)], axis=1)  # (B, max_length)
        self.prompt_positions = jnp.where(mask == 0, 1, jnp.cumsum(mask, axis=-1) - 1)
        self.next_position = jnp.sum(mask, axis=-1, keepdims=True)  # (B, 1): real tokens so far
        self.last_output = None
        self.held = 0  # slots written: a Python 0 before the prompt, then a traced int32 scalar
        if state is not None:
            self._load(state)

    def __call__(self, ids: jax.Array) -> jax.Array:
        """Feed ``ids`` (B, t) after what the cache holds; return the next-token logits (B, V) in fp32."""
        T, held, trunk = ids.shape[1], self.held, self.model.trunk
        prompt = isinstance(held, int)
        if prompt:
            positions = self.prompt_positions
        else:
            positions = self.next_position
            self.next_position = self.next_position + 1
        types = None
        if self.token_types is not None:
            types = self.token_types if prompt else jnp.repeat(self.token_types[:, -1:], T, axis=1)
        if prompt and self.embeds is not None:
            x = trunk.embed(position_ids=positions, token_type_ids=types, inputs_embeds=self.embeds)
        else:
            x = trunk.embed(ids, position_ids=positions, token_type_ids=types)
        # query i sees the written keys up to its own slot; padding keys get half the mask value (common/numerics.py)
        dtype = scores_dtype(x.dtype, self.model.config.reorder_and_upcast_attn)
        causal = jnp.arange(self.fixed)[None, :] <= jnp.arange(T)[:, None] + held
        bias = jnp.where(causal, jnp.zeros((), dtype), jnp.asarray(mask_value(dtype), dtype))
        padding = (self.mask == 0)[:, None, None, :]
        bias = jnp.where(padding & causal, jnp.asarray(mask_value(dtype) / 2, dtype), bias)
        view = self.cache.at(held)
        out = trunk.core(x, mask=bias, cache=view, **self.kwargs)
        self.cache = KVCache(view.keys, view.values, static=True)
        self.held = jnp.asarray(held + T, jnp.int32)
        self.last_output = out
        return _logits(self.model, out[0][:, -1:, :])[:, -1, :].astype(jnp.float32)

    def close(self) -> None:
        """The run is over: nothing is held (the compiled functions, not the decoder, are kept)."""
        self.last_output = None

    def reorder(self, rows: jax.Array) -> None:
        """Beam search: row i of the cache becomes row ``rows[i]``."""
        self.cache.reorder_cache(rows)

    def _state(self) -> tuple:
        """What changes between steps, as loop variables: cache keys, values, slots held, next positions. A one-row
        cache on one device is kept as (nh, L, hs) buffers: with the size-1 batch dimension in the loop's state, XLA
        copies every buffer twice per step (cache.py ``_write``)."""
        keys, values = tuple(self.cache.keys), tuple(self.cache.values)
        if self.mesh is not None:
            keys, values = shard_cache((keys, values), self.mesh)
        else:
            keys, values = tuple(_squeezed(k) for k in keys), tuple(_squeezed(v) for v in values)
        return keys, values, self.held, self.next_position

    def _load(self, state: tuple) -> None:
        keys, values, self.held, self.next_position = state
        self.cache = KVCache([_unsqueezed(k) for k in keys], [_unsqueezed(v) for v in values], static=True)


def _squeezed(buffer: jax.Array) -> jax.Array:
    """A (1, nh, L, hs) cache buffer as (nh, L, hs); any other as it is."""
    return buffer.reshape(buffer.shape[1:]) if buffer.ndim == 4 and buffer.shape[0] == 1 else buffer


def _unsqueezed(buffer: jax.Array) -> jax.Array:
    return buffer.reshape((1, *buffer.shape)) if buffer.ndim == 3 else buffer


def prefill(model, ids, mask, capacity: int, embeds=None, types=None, mesh=None) -> tuple[jax.Array, tuple]:
    """The prompt's forward (ids (B, P), its bucket's padding masked): the next-token logits (B, V) in fp32 and the
    decoder's state with the prompt's keys and values in the first P of ``capacity`` cache slots. ``embeds``
    (B, P, C): the prompt given as embeddings (``ids`` then only gives its shape); ``types`` (B, P): its token
    types; ``mesh``: the weights' mesh, for the cache's layout. It runs the trunk's ``embed`` and ``core``, not its
    checked ``__call__``: generate() validated the inputs on the host, so the compiled code holds no host callback."""
    decoder = Decoder(model, ids, attention_mask=mask, max_length=capacity, token_type_ids=types,
                      inputs_embeds=embeds, mesh=mesh)
    logits = decoder(ids)
    return logits, decoder._state()


# -- generate() ------------------------------------------------------------------------------------------------------
class _GenerationConfigHolder(loading.GenerativeModel):
    """``generation_config`` kept in a holder (pretrained.hold): an NNX module's plain attributes go into its GraphDef,
    which must hash, and a GenerationConfig does not (the same reason as the model config, pretrained.py)."""

    @property
    def generation_config(self) -> GenerationConfig:
        holder = self.__dict__.get("_generation_config")
        if holder is None:
            holder = self.__dict__["_generation_config"] = hold(GenerationConfig.from_model_config(self.config))
        return holder.value

    @generation_config.setter
    def generation_config(self, value: GenerationConfig) -> None:
        if not isinstance(value, GenerationConfig):
            raise TypeError(f"generation_config must be a GenerationConfig, got {type(value).__name__}")
        self.__dict__["_generation_config"] = hold(value)


class GenerationMixin(_GenerationConfigHolder):
    """``generate()`` for the models with a language-model head; ``generation_config``, ``can_generate`` and the
    generation_config.json that from_pretrained reads and save_pretrained writes are common (loading.py)."""

    def generate(self, input_ids=None, attention_mask=None, generation_config: GenerationConfig | None = None,
                 streamer=None, prng_key=None, seed=None, tokenizer=None, logits_processor=None,
                 stopping_criteria=None, prefix_allowed_tokens_fn=None, inputs_embeds=None, token_type_ids=None,
                 assistant_model=None, params=None, **kwargs):
        """Continue ``input_ids`` (B, T) (left-padded batches: give ``attention_mask``); returns, as transformers'
        Flax generate does, an output object whose ``sequences`` are the ids (B*n, T') as an int32 array: a
        GenerateDecoderOnlyOutput / GenerateBeamDecoderOnlyOutput, which with ``return_dict_in_generate=True``
        holds the scores and logits asked for (one (B*n, V) array per step).

        Options: ``self.generation_config``, overridden by the non-default values of ``generation_config``, then by
        ``kwargs`` (GenerationConfig fields: max_new_tokens, do_sample, temperature, top_k, top_p, min_p,
        typical_p, epsilon_cutoff, eta_cutoff, num_beams, length_penalty, early_stopping, repetition_penalty,
        no_repeat_ngram_size, bad_words_ids, sequence_bias, min_new_tokens, eos_token_id, pad_token_id,
        num_return_sequences, output_scores, output_logits, ...). ``prng_key``: a ``jax.random.key`` (or a legacy
        uint32 PRNGKey) for sampling; ``seed``: an int for ``jax.random.key(seed)``; neither: key 0, as
        transformers' Flax generate. ``params``: other weights (a pytree shaped as ``model.params``), through the
        same compiled code.

        Compiled with jax.jit (see the module docstring). ``stop_strings`` (greedy and sampling; they need
        ``tokenizer``, as in transformers) and ``streamer`` (``put(ids)`` / ``end()``; not with beam search, as in
        transformers): the compiled loop runs a few steps at a time and the host checks the strings and feeds the
        streamer in between; the tokens are torch's. ``inputs_embeds`` (B, T, C): the prompt as embeddings,
        instead of input_ids; only the new ids come back, and max_length / min_length count the prompt's positions,
        as in transformers. ``token_type_ids`` (B, T): the prompt's token types (ids of the token table, checked on
        the host); every new token takes the last column's. Refused by name: max_time, logits_processor,
        stopping_criteria, prefix_allowed_tokens_fn, assistant_model (they need the host at every step),
        stop_strings with beam search, output_attentions / output_hidden_states. A model placed on a mesh
        (gpt2.flax.sharding) generates sharded: the batch over "data", the cache as ``shard_cache`` lays it out.
        Call it outside jax.jit: it reads its inputs on the host and compiles its own loop.
        """
        if "inputs" in kwargs:  # transformers' name for the first argument
            if input_ids is not None:
                raise ValueError("give input_ids or inputs, not both")
            input_ids = kwargs.pop("inputs")
        cfg = merge_settings(self.generation_config, generation_config, **kwargs)
        return _generate(self, cfg, input_ids=input_ids, attention_mask=attention_mask, streamer=streamer,
                         key=_prng_key(prng_key, seed), tokenizer=tokenizer, params=params,
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
        stacked = jnp.stack(tuple(scores), axis=1)  # (rows, steps, V)
        if normalize_logits:
            stacked = jax.nn.log_softmax(stacked, axis=-1)
        which, step, tokens, valid = transition_index(sequences, beam_indices, rows=stacked.shape[0],
                                                      steps=stacked.shape[1])
        return jnp.where(valid, stacked[which, step, tokens], jnp.zeros((), stacked.dtype))


def _prng_key(prng_key, seed) -> jax.Array:
    """A typed key: ``prng_key`` as given (a legacy uint32 (2,) key wrapped), else ``jax.random.key(seed or 0)``."""
    if prng_key is not None:
        if seed is not None:
            raise ValueError("give prng_key or seed, not both")
        key = jnp.asarray(prng_key) if not isinstance(prng_key, jax.Array) else prng_key
        if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
            if key.shape != ():
                raise ValueError(f"prng_key must be one key, got an array of keys of shape {key.shape}")
            return key
        if key.dtype != jnp.uint32 or key.shape != (2,):
            raise ValueError(f"prng_key must be a jax.random.key(...) or a uint32 (2,) PRNGKey, got {key.dtype} of "
                             f"shape {key.shape}")
        return jax.random.wrap_key_data(key)
    if seed is not None and not isinstance(seed, (int, np.integer)) or isinstance(seed, bool):
        raise TypeError(f"seed must be an int, got {seed!r}")
    return jax.random.key(0 if seed is None else int(seed))


# -- the compiled functions, kept per model ----------------------------------------------------------------------------
# model -> {"traces": count, (kind, graphdef, static...): jitted function}. Weak: a model's functions go with it.
_FUNCTIONS: "weakref.WeakKeyDictionary[Any, dict]" = weakref.WeakKeyDictionary()


def _registry(model) -> dict:
    found = _FUNCTIONS.get(model)
    if found is None:
        found = _FUNCTIONS[model] = {"traces": 0}
    return found


def trace_count(model) -> int:
    """How many times generate()'s functions were traced (so compiled) for ``model``: a test's compile counter."""
    return _registry(model)["traces"]


def _function(model, key: tuple, build):
    registry = _registry(model)
    if key not in registry:
        registry[key] = build(registry)
    return registry[key]


def _prefill_function(graphdef, capacity: int, mesh, registry: dict):
    def run(state, ids, mask, embeds, types):  # embeds, types: arrays or None (another trace)
        registry["traces"] += 1  # at trace time only
        return prefill(nnx.merge(graphdef, state), ids, mask, capacity, embeds=embeds, types=types, mesh=mesh)
    return jax.jit(run)


def _continue_function(graphdef, static: Static, mesh, registry: dict):
    def run(state, mask, start, end, numbers, floats, key, types, until, running):  # types: (B, 1) or None
        registry["traces"] += 1
        model = nnx.merge(graphdef, state)
        processors = build_processors(traced_specs(static.specs, numbers, floats), vocab_size=model.config.vocab_size)
        stop = Stop(eos=list(static.eos), max_length=end)
        decoder = Decoder(model, running.ids[:, :mask.shape[1]], attention_mask=mask, max_length=static.capacity,
                          token_type_ids=types, state=running.state, mesh=mesh)
        return _sample(decoder, running, static=static, start=start, end=end, until=until, processors=processors,
                       stop=stop, key=key)
    return jax.jit(run, donate_argnames=("running",))


def _beam_function(graphdef, static: Static, mesh, registry: dict):
    def run(state, ids, mask, start, end, numbers, floats, key, types, prompt):  # types: (B * n, 1) or None
        registry["traces"] += 1
        model = nnx.merge(graphdef, state)
        processors = build_processors(traced_specs(static.specs, numbers, floats), vocab_size=model.config.vocab_size)
        stop = Stop(eos=list(static.eos), max_length=end)
        logits, decoder_state = prompt
        decoder = Decoder(model, ids, attention_mask=mask, max_length=static.capacity, token_type_ids=types,
                          state=decoder_state, mesh=mesh)
        B, P = ids.shape
        fill = (static.pad if static.pad else static.eos[0]) if static.eos else -1
        buffer = jnp.concatenate([ids, jnp.full((B, static.capacity - P), fill, jnp.int32)], axis=1)
        return beam_search(decoder, buffer, logits=logits, static=static, shift=start, max_length=end,
                           processors=processors, stop=stop, key=key)
    # nothing donated: the loop's outputs (finished beams, scores) alias no input buffer, so a donated prompt state
    # could not be reused and JAX would warn on every call
    return jax.jit(run)


def _generate(model, cfg: GenerationConfig, *, input_ids, attention_mask, streamer, key, tokenizer, params,
              others: dict):
    for name, value in (("input_ids", input_ids), ("attention_mask", attention_mask),
                        ("inputs_embeds", others["inputs_embeds"]), ("token_type_ids", others["token_type_ids"])):
        if value is not None and not is_concrete(value):
            raise ValueError(f"generate() reads {name} on the host and compiles its own loop: call it outside "
                             f"jax.jit / vmap / grad")
    request = prepare(cfg, framework="flax", config=model.config, input_ids=input_ids, attention_mask=attention_mask,
                      streamer=streamer, tokenizer=tokenizer, others=others, traced_floats=True)
    static, P = request.static, request.prompt
    ids, mask, embeds, types, last_types = (request.ids, request.mask, request.embeds, request.types,
                                            request.last_types)
    if embeds is not None:
        embeds = jnp.asarray(embeds, model.dtype)
    bound = model if params is None else model._with_params(params)
    graphdef, state = nnx.split(bound)
    # Weights on a mesh (sharding.py): the prompt's batch split over "data" (when it divides) and the cache laid out
    # by shard_cache inside the compiled functions, so that the layouts are fixed rather than chosen by XLA.
    mesh = model_mesh(bound)
    if mesh is not None and ids.shape[0] % mesh.shape.get(DATA, 1) == 0:
        ids, mask, embeds, types, last_types = (shard_batch(mesh, x) if x is not None else None
                                                for x in (ids, mask, embeds, types, last_types))
    ids, mask = jnp.asarray(ids), jnp.asarray(mask)
    types = None if types is None else jnp.asarray(types)
    last_types = None if last_types is None else jnp.asarray(last_types)
    end = jnp.asarray(request.end, jnp.int32)
    args = (mask, jnp.asarray(request.start, jnp.int32), end, jnp.asarray(request.numbers or [0], jnp.int32),
            jnp.asarray(request.floats or [0.0], jnp.float32), key, last_types)
    first = _function(model, ("prefill", graphdef, static.capacity, mesh),
                      functools.partial(_prefill_function, graphdef, static.capacity, mesh))
    logits, decoder_state = first(state, ids, mask, embeds, types)
    if static.num_beams > 1:
        decode = _function(model, ("beam", graphdef, static, mesh),
                           functools.partial(_beam_function, graphdef, static, mesh))
        result = decode(state, ids, *args, (logits, decoder_state))
        return finish(cfg, request, result, array=jnp.asarray, sequences_only=False)
    rows, steps, V = ids.shape[0], static.capacity - P, model.config.vocab_size
    running = _Running(cur=jnp.asarray(P, jnp.int32),
                       ids=jnp.concatenate([ids, jnp.zeros((rows, steps), jnp.int32)], axis=1),
                       unfinished=jnp.ones((rows,), bool), next_logits=logits,
                       scores=jnp.zeros((rows, steps, V) if static.record_scores else (0,), jnp.float32),
                       logits=jnp.zeros((rows, steps, V) if static.record_logits else (0,), jnp.float32),
                       state=decoder_state)
    decode = _function(model, ("sample", graphdef, static, mesh),
                       functools.partial(_continue_function, graphdef, static, mesh))
    if request.strings is None and streamer is None:
        running = decode(state, *args, end, running)
    else:  # the host checks the strings and feeds the streamer between chunks (common/host_loop.py)
        running = run_in_chunks(
            request, running, streamer=streamer,
            advance=lambda r, until: decode(state, *args, jnp.asarray(until, jnp.int32), r),
            read=lambda r: (int(r.cur), np.array(r.ids)),
            write=lambda r, ids, alive, cur: r._replace(ids=jnp.asarray(ids), unfinished=jnp.asarray(alive),
                                                        cur=jnp.asarray(cur, jnp.int32)))
    result = dict(ids=running.ids, length=running.cur, scores=running.scores, logits=running.logits)
    return finish(cfg, request, result, array=jnp.asarray, sequences_only=False)


class _Running(NamedTuple):
    """The greedy / sampling loop's variables (a pytree): the next slot, the ids buffer (B, C), the rows not finished
    (B,), the next-token logits (B, V), the per-step records (B, steps, V) or empty, the decoder's state."""

    cur: jax.Array
    ids: jax.Array
    unfinished: jax.Array
    next_logits: jax.Array
    scores: jax.Array
    logits: jax.Array
    state: tuple


def _sample(decoder: Decoder, running: _Running, *, static: Static, start, end, until, processors, stop: Stop,
            key) -> _Running:
    """Greedy decoding and sampling (transformers' ``_sample``), one token per row per step, in a lax.while_loop
    from ``running`` until slot ``until`` (or ``end``, or every row finished)."""
    prompt = decoder.prompt_positions.shape[1]

    def choose(r: _Running) -> tuple[_Running, jax.Array]:
        """The token of slot ``r.cur`` from ``r.next_logits``: processors, records, the pick, the stop criteria."""
        seen = jnp.roll(r.ids, -start, axis=1)  # the ids from the prompt's first slot on: what torch's processors read
        next_scores = run_processors(processors, seen, r.cur - start, r.next_logits)
        scores_rec = record_step(r.scores, r.cur - prompt, next_scores) if static.record_scores else r.scores
        logits_rec = record_step(r.logits, r.cur - prompt, r.next_logits) if static.record_logits else r.logits
        if static.do_sample:  # the step's key: fold_in(key, tokens generated so far)
            next_tokens = sample(key, r.cur - prompt, next_scores)
        else:
            next_tokens = jnp.argmax(next_scores, axis=-1).astype(jnp.int32)
        if static.eos:  # finished rows get padding
            next_tokens = jnp.where(r.unfinished, next_tokens, jnp.int32(static.pad))
        ids = jax.lax.dynamic_update_slice_in_dim(r.ids, next_tokens[:, None], r.cur, axis=1)
        cur = r.cur + 1
        unfinished = r.unfinished & ~stop(ids, cur)
        return r._replace(cur=cur, ids=ids, unfinished=unfinished, scores=scores_rec, logits=logits_rec), next_tokens

    def body(r: _Running) -> _Running:
        # a token, then the forward for the next one, always: no lax.cond around the step, whose operands XLA copies
        # whole (every cache buffer, every step). The loop stops before the last slot's token, which is chosen
        # after it without a forward; only rows that all finish early leave one forward unused.
        decoder._load(r.state)
        r, next_tokens = choose(r)
        logits = decoder(next_tokens[:, None])
        decoder.last_output = None
        return r._replace(next_logits=logits, state=decoder._state())

    def more(r: _Running):  # the token of slot r.cur needs a forward after it
        return (r.cur < jnp.minimum(end - 1, until)) & jnp.any(r.unfinished)

    r = jax.lax.while_loop(more, body, running)
    last = (r.cur < jnp.minimum(end, until)) & jnp.any(r.unfinished)  # the last slot's token, if due
    chosen = choose(r)[0]
    return r._replace(**{name: jnp.where(last, getattr(chosen, name), getattr(r, name))
                         for name in ("cur", "ids", "unfinished", "scores", "logits")})
