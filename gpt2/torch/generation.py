"""generate() for the PyTorch models: greedy, sampling and beam search, token for token as transformers 4.57.

>>> import torch
>>> from gpt2.torch import GPT2LMHeadModel
>>> model = GPT2LMHeadModel.from_pretrained("gpt2")
>>> ids = model.generate(prompt_ids, max_new_tokens=20)                                      # greedy
>>> ids = model.generate(prompt_ids, max_new_tokens=20, do_sample=True, top_p=0.9,
...                      generator=torch.Generator().manual_seed(0))                         # reproducible sampling
>>> out = model.generate(prompt_ids, num_beams=4, return_dict_in_generate=True, output_scores=True)

The rules -- which logits processors run and in which order, when a row stops, what finished rows are padded
with, how beams are scored and finalized -- are transformers 4.57's (``GenerationMixin._get_logits_processor``,
``_sample``, ``_beam_search``); the options are the fields of ``gpt2.common.generation.GenerationConfig``. What
needs no tensors (settings merge, lengths, eos / padding, the unsupported options, the processors and their order)
is decided in ``gpt2.common.decoding``, shared with the TF and Flax generate().
What is ours is the plumbing: one static KV cache allocated for the whole run, logits of the last position only,
ids written into a preallocated (B, max_length) tensor, ``torch.inference_mode``. docs/generation.md has the rest.
"""

from __future__ import annotations

import inspect

import numpy as np
import torch
import torch.nn.functional as F

from ..common import loading
from ..common.decoding import (Plan, StepRecord, StopStrings, check_attention_mask, check_inputs_embeds,
                               check_options, check_prompt, check_token_range, check_token_type_ids, infer_mask,
                               merge_settings, plan, processor_specs)
from ..common.generation import GenerationConfig
from ..common.host_loop import transition_index
from ..common.outputs import GenerateDecoderOnlyOutput
from ..common.streamers import BaseStreamer
from .attention import OneThread
from .beam_search import beam_search
from .cache import KVCache
from .logits_process import build_processors, run_processors
from .compiled import LateCheck, use_late_check
from .stopping import Stop

# A step's scores (rows x vocabulary) of at most this many elements are processed on one CPU thread (_one_thread):
# gpt2's vocabulary for one or two rows.
ONE_THREAD_SCORES = 1 << 17


# -- the model behind generate() ------------------------------------------------------------------------------------
class Decoder:
    """Runs the model for generate(): one static KV cache for the run, left-padding bookkeeping (attention mask
    extended by one per step, position ids from its cumsum as transformers' prepare_inputs_for_generation), logits
    of the last position only. ``decoder(ids)`` takes the prompt, then one token per row per call."""

    def __init__(self, model, input_ids, *, attention_mask, max_length: int, output_attentions=False,
                 output_hidden_states=False, fixed_step: tuple[str, dict | None, bool] | None = None,
                 inputs_embeds: torch.Tensor | None = None, token_type_ids: torch.Tensor | None = None) -> None:
        B, T = input_ids.shape
        self.token_types = token_type_ids  # (B, T); new tokens take the last column's type, as in transformers
        # With inputs_embeds alone, the T prompt positions hold no ids: processors, criteria and the output see
        # only the generated ids, from position ``offset`` on (transformers' behaviour).
        self.embeds, self.offset = inputs_embeds, T if inputs_embeds is not None else 0
        c, device = model.config, input_ids.device
        self.model = model
        self.fixed = None
        if fixed_step is None:
            self.cache = KVCache.for_model(model, B, max_length, device)
        else:  # a cache rounded up to 64 positions: fewer shapes, so fewer captures and recompilations
            from .compiled import FixedStep

            how, options, keep = fixed_step
            # run as it is ("fixed"), the step has nothing to capture or compile: its cache is sized exactly
            capacity = max_length if how == "fixed" else min(c.n_positions, -(-max_length // 64) * 64)
            self.fixed = FixedStep.for_run(model, B, capacity, device, how, options, keep)
            self.cache = self.fixed.cache
        self.kwargs = dict(use_cache=True, return_dict=True, output_attentions=output_attentions,
                           output_hidden_states=output_hidden_states)
        if "logits_to_keep" in inspect.signature(model.forward).parameters:
            self.kwargs["logits_to_keep"] = 1
        self.mask = None
        if attention_mask is not None and not bool(attention_mask.all()):
            self.mask = attention_mask.new_ones(B, max_length)  # (B, max_length): the prompt's, then ones
            self.mask[:, :T] = attention_mask
            self.prompt_positions = (attention_mask.cumsum(-1) - 1).masked_fill_(attention_mask == 0, 1)
            self.next_position = attention_mask.sum(-1, keepdim=True)  # (B, 1): real tokens so far
        if self.fixed is not None:
            try:
                self.fixed.start(self.mask[:, :T] if self.mask is not None else None, T)
            except BaseException:
                self.fixed.release()  # a kept step must not stay locked by a run that never started
                raise
        self.last_output = None

    def __call__(self, ids: torch.Tensor) -> torch.Tensor:
        """Feed ``ids`` (B, t) after what the cache holds; return the next-token logits (B, V) in fp32."""
        held = self.cache.get_seq_length()
        if self.fixed is not None and held > 0:  # one token per row, at fixed shapes (compiled.py)
            if self.mask is not None:
                positions = self.next_position
                self.next_position = self.next_position + 1
            else:
                positions = torch.full_like(ids, held)
            logits = self.fixed(ids, positions, held)
            self.cache.advance(ids.shape[1])
            return logits
        extra = {}
        if self.mask is not None:
            extra["attention_mask"] = self.mask[:, : held + ids.shape[1]]
            if held == 0:
                extra["position_ids"] = self.prompt_positions
            else:
                extra["position_ids"] = self.next_position
                self.next_position = self.next_position + 1
        if held == 0 and self.embeds is not None:
            extra["inputs_embeds"], ids = self.embeds, None
        if self.token_types is not None:
            types = self.token_types
            extra["token_type_ids"] = types if held == 0 else types[:, -1:].expand(-1, ids.shape[1])
        out = self.model(input_ids=ids, past_key_values=self.cache, **self.kwargs, **extra)
        self.last_output = out
        return out.logits[:, -1, :].to(dtype=torch.float32, copy=True)

    def close(self) -> None:
        """The run is over: a kept fixed-shape step is free for the next generate()."""
        if self.fixed is not None:
            self.fixed.release()

    def reorder(self, rows: torch.Tensor) -> None:
        """Beam search: row i of the cache becomes row ``rows[i]`` (only the filled part is copied)."""
        n = self.cache.get_seq_length()
        for buffer in self.cache.keys + self.cache.values:
            buffer[:, :, :n] = buffer[:, :, :n].index_select(0, rows)


# -- generate() ------------------------------------------------------------------------------------------------------
class GenerationMixin(loading.GenerativeModel):
    """``generate()`` for the models with a language-model head; ``generation_config``, ``can_generate`` and the
    generation_config.json that from_pretrained reads and save_pretrained writes are common (loading.py)."""

    def generate(self, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                 generation_config: GenerationConfig | None = None, streamer: BaseStreamer | None = None,
                 generator: torch.Generator | None = None, tokenizer=None, logits_processor=None,
                 stopping_criteria=None, prefix_allowed_tokens_fn=None, inputs_embeds: torch.Tensor | None = None,
                 token_type_ids: torch.Tensor | None = None, assistant_model=None, **kwargs):
        """Continue ``input_ids`` (B, T) (left-padded batches: give ``attention_mask``); returns the ids (B*n, T')
        or, with ``return_dict_in_generate=True``, a GenerateDecoderOnlyOutput / GenerateBeamDecoderOnlyOutput.

        Options: ``self.generation_config``, overridden by the non-default values of ``generation_config``, then by
        ``kwargs`` (GenerationConfig fields only: max_new_tokens, do_sample, temperature, top_k, top_p, min_p,
        typical_p, num_beams, length_penalty, early_stopping, repetition_penalty, no_repeat_ngram_size,
        bad_words_ids, min_new_tokens, eos_token_id, pad_token_id, num_return_sequences, output_scores, ...).
        ``streamer``: gets ``put(ids)`` / ``end()`` (e.g. TextStreamer). ``generator``: the torch.Generator that
        sampling draws from (default: torch's global generator, as transformers). ``tokenizer``: needed with
        ``stop_strings`` (transformers' rule). ``logits_processor``: a list of callables ``(ids (B, t), scores (B, V))
        -> scores`` run after the built-in processors, before the sampling warpers (transformers' LogitsProcessor
        objects work); ``stopping_criteria``: a list of callables ``(ids, scores) -> bool (B,)`` or-ed with the
        built-in ones; ``prefix_allowed_tokens_fn(batch_id, ids (t,)) -> allowed ids``. ``inputs_embeds`` (B, T, C)
        instead of input_ids: the prompt as embeddings (soft prompts); only the new ids are returned, and lengths
        count them, as in transformers. ``token_type_ids`` (B, T): the prompt's token types; new tokens take the
        last one's (transformers' rule). ``assistant_model``: a small GPT-2 drafting tokens for greedy decoding
        (assisted.py; batch 1). See docs/generation.md.
        """
        if "inputs" in kwargs:  # transformers' name for the first argument
            if input_ids is not None:
                raise ValueError("give input_ids or inputs, not both")
            input_ids = kwargs.pop("inputs")
        cfg = merge_settings(self.generation_config, generation_config, **kwargs)
        with torch.inference_mode():
            hooks = _Hooks(logits_processor, stopping_criteria, prefix_allowed_tokens_fn)
            result = _generate(self, cfg, input_ids=input_ids, attention_mask=attention_mask,
                               inputs_embeds=inputs_embeds, token_type_ids=token_type_ids, streamer=streamer,
                               generator=generator, tokenizer=tokenizer, hooks=hooks, assistant=assistant_model)
        if isinstance(result, torch.Tensor):
            return result.clone()  # a normal tensor, not an inference tensor (those refuse in-place edits later)
        result.sequences = result.sequences.clone()
        return result

    def compute_transition_scores(self, sequences: torch.Tensor, scores, beam_indices: torch.Tensor | None = None,
                                  normalize_logits: bool = False) -> torch.Tensor:
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
        stacked = torch.stack(tuple(scores), dim=1)  # (rows, steps, V)
        if normalize_logits:
            stacked = F.log_softmax(stacked, dim=-1)
        which, step, tokens, valid = (torch.from_numpy(np.ascontiguousarray(x)).to(stacked.device) for x in
                                      transition_index(sequences.cpu(),
                                                       None if beam_indices is None else beam_indices.cpu(),
                                                       rows=stacked.shape[0], steps=stacked.shape[1]))
        return torch.where(valid, stacked[which.long(), step.long(), tokens.long()],
                           torch.zeros((), dtype=stacked.dtype, device=stacked.device))


def _describe(x) -> tuple[tuple | None, str]:
    """(shape, dtype name) of a tensor for the request checks; (None, type name) for anything else."""
    if isinstance(x, torch.Tensor):
        return tuple(x.shape), str(x.dtype)
    return None, type(x).__name__


def _check_request(model, cfg: GenerationConfig, *, input_ids, attention_mask, inputs_embeds, token_type_ids,
                   streamer, hooks, assistant):
    """Validate at the boundary (the rules are common/decoding.py's); returns (input_ids, attention_mask,
    token_type_ids), ids as long tensors on the model's device (with inputs_embeds alone, input_ids is a placeholder
    of its (B, T): generate() never shows it)."""
    check_options(cfg, framework="torch", streamer=streamer, assistant_model=assistant,
                  stopping_criteria=hooks.criteria, prefix_allowed_tokens_fn=hooks.prefix_fn)
    device, V = model.device, model.config.vocab_size
    if inputs_embeds is not None:
        shape, dtype = _describe(inputs_embeds)
        check_inputs_embeds(shape=shape, dtype=dtype, n_embd=model.config.n_embd, with_input_ids=input_ids is not None,
                            floating=isinstance(inputs_embeds, torch.Tensor) and inputs_embeds.dtype.is_floating_point)
        input_ids = torch.zeros(inputs_embeds.shape[:2], dtype=torch.long, device=device)
    if input_ids is None:
        if cfg.bos_token_id is None:
            raise ValueError("generate() needs input_ids, or a bos_token_id to start from")
        input_ids = torch.full((1, 1), cfg.bos_token_id, dtype=torch.long, device=device)
    shape, dtype = _describe(input_ids)
    check_prompt(shape=shape or (), dtype=dtype, integer=isinstance(input_ids, torch.Tensor) and not (
        input_ids.dtype.is_floating_point or input_ids.dtype.is_complex or input_ids.dtype == torch.bool))
    check_token_range(low=int(input_ids.min()), high=int(input_ids.max()), vocab_size=V)
    if attention_mask is not None:
        mask_shape, _ = _describe(attention_mask)
        check_attention_mask(shape=mask_shape, ids_shape=shape, binary=mask_shape == shape and not bool(
            ((attention_mask != 0) & (attention_mask != 1)).any()))
        attention_mask = attention_mask.to(device=device, dtype=torch.long)
    if token_type_ids is not None:
        check_token_type_ids(shape=_describe(token_type_ids)[0], ids_shape=shape)
        token_type_ids = token_type_ids.to(device=device, dtype=torch.long)  # the model checks the range
    return input_ids.to(device=device, dtype=torch.long), attention_mask, token_type_ids


class _Hooks:
    """generate()'s user callables, validated: extra processors, extra stopping criteria, prefix_allowed_tokens_fn."""

    def __init__(self, logits_processor, stopping_criteria, prefix_allowed_tokens_fn) -> None:
        for name, value in (("logits_processor", logits_processor), ("stopping_criteria", stopping_criteria)):
            if value is not None and (not isinstance(value, (list, tuple)) or not all(map(callable, value))):
                raise TypeError(f"{name} must be a list of callables (ids, scores) -> ..., got {value!r}")
        if prefix_allowed_tokens_fn is not None and not callable(prefix_allowed_tokens_fn):
            raise TypeError(f"prefix_allowed_tokens_fn must be callable, got {prefix_allowed_tokens_fn!r}")
        self.processors = list(logits_processor or [])
        self.criteria = list(stopping_criteria or [])
        self.prefix_fn = prefix_allowed_tokens_fn


def _generate(model, cfg: GenerationConfig, *, input_ids, attention_mask, inputs_embeds, token_type_ids, streamer,
              generator, tokenizer, hooks: _Hooks, assistant):
    input_ids, attention_mask, token_type_ids = _check_request(
        model, cfg, input_ids=input_ids, attention_mask=attention_mask, inputs_embeds=inputs_embeds,
        token_type_ids=token_type_ids, streamer=streamer, hooks=hooks, assistant=assistant)
    if inputs_embeds is not None:
        inputs_embeds = inputs_embeds.to(device=model.device, dtype=model.dtype)
    stop_strings = StopStrings(cfg.stop_strings, tokenizer) if cfg.stop_strings is not None else None
    V, device = model.config.vocab_size, input_ids.device
    run = plan(cfg, input_length=input_ids.shape[1], max_positions=model.config.n_positions, vocab_size=V,
               has_attention_mask=attention_mask is not None, from_embeds=inputs_embeds is not None)
    pad = run.pad
    if infer_mask(run, input_ids, has_attention_mask=attention_mask is not None,
                  from_embeds=inputs_embeds is not None):
        attention_mask = (input_ids != pad).long()  # transformers infers the mask from the padding
    if run.rows_per_prompt > 1:
        input_ids, attention_mask, inputs_embeds, token_type_ids = (
            x.repeat_interleave(run.rows_per_prompt, dim=0) if x is not None else None
            for x in (input_ids, attention_mask, inputs_embeds, token_type_ids))
    specs = processor_specs(cfg, run, vocab_size=V, has_prefix_fn=hooks.prefix_fn is not None)
    processors = build_processors(specs, vocab_size=V, device=device, custom=hooks.processors,
                                  prefix_fn=hooks.prefix_fn)
    stop = Stop(eos=list(run.eos), max_length=run.max_length, max_time=cfg.max_time, device=device,
                stop_strings=stop_strings, criteria=hooks.criteria, offset=run.offset)
    if assistant is not None:
        from .assisted import assisted_greedy, check_assistant

        check_assistant(model, assistant, cfg, input_ids=input_ids, attention_mask=attention_mask,
                        max_length=run.max_length, streamer=streamer,
                        other_inputs=inputs_embeds is not None or token_type_ids is not None)
        return assisted_greedy(model, assistant, input_ids, processors=processors, cfg=cfg, stop=stop,
                               max_length=run.max_length)
    record = cfg.return_dict_in_generate
    fixed = _fixed_step(model, cfg, device) if token_type_ids is None else None  # the fixed step has no types
    decoder = Decoder(model, input_ids, attention_mask=attention_mask, max_length=run.max_length,
                      output_attentions=record and cfg.output_attentions,
                      output_hidden_states=record and cfg.output_hidden_states, fixed_step=fixed,
                      inputs_embeds=inputs_embeds, token_type_ids=token_type_ids)
    try:
        if cfg.num_beams > 1:
            return beam_search(decoder, input_ids, run=run, cfg=cfg, processors=processors, stop=stop,
                               generator=generator)
        return _sample(decoder, input_ids, run=run, cfg=cfg, processors=processors, stop=stop, generator=generator,
                       streamer=streamer)
    finally:
        decoder.close()


def _sample(decoder: Decoder, input_ids, *, run: Plan, cfg: GenerationConfig, processors, stop: Stop, generator,
            streamer):
    """Greedy decoding and sampling (transformers' ``_sample``), one token per row per step."""
    (B, T), device, max_length = input_ids.shape, input_ids.device, run.max_length
    start = run.offset  # 0, or T with inputs_embeds: what processors, criteria and the caller see
    if streamer is not None:
        streamer.put(input_ids[:, start:].cpu())
    ids = torch.empty((B, max_length), dtype=torch.long, device=device)  # the output, filled in place
    ids[:, :T] = input_ids
    seen = ids[:, start:]  # the buffer processors read, below their ``length``
    unfinished = torch.ones(B, dtype=torch.bool, device=device)
    record = StepRecord(cfg)
    late = LateCheck(device) if use_late_check(device, streamer, cfg.return_dict_in_generate, stop) else None
    cur, next_logits = T, decoder(input_ids)
    one_thread = _one_thread(next_logits)
    while True:
        with OneThread.when(one_thread):
            next_scores = run_processors(processors, seen, cur - start, next_logits)
            record.add(scores=next_scores, logits=next_logits, output=decoder.last_output)
            if cfg.do_sample:
                next_tokens = torch.multinomial(F.softmax(next_scores, dim=-1), 1, generator=generator).squeeze(1)
            else:
                next_tokens = torch.argmax(next_scores, dim=-1)
            if run.eos:  # finished rows get padding
                next_tokens = torch.where(unfinished, next_tokens, run.pad)
            ids[:, cur] = next_tokens
            cur += 1
            if streamer is not None:
                streamer.put(next_tokens.cpu())
            unfinished &= ~stop(ids[:, :cur], record.get("scores"))
        done_at = late.done() if late is not None else None
        if done_at is not None:  # every row had finished one step ago: drop this step's token
            cur = done_at
            break
        if cur >= max_length:
            break
        if late is None:
            if not bool(unfinished.any()):
                break
        else:
            late.queue(unfinished.any(), cur)
        next_logits = decoder(next_tokens[:, None])
    if streamer is not None:
        streamer.end()
    if not cfg.return_dict_in_generate:
        return ids[:, start:cur]
    return GenerateDecoderOnlyOutput(sequences=ids[:, start:cur], scores=record.get("scores"),
                                     logits=record.get("logits"), attentions=record.get("attentions"),
                                     hidden_states=record.get("hidden_states"), past_key_values=decoder.cache)


def _one_thread(logits: torch.Tensor) -> bool:
    """Whether a step's processors and choice of token run on one CPU thread (attention.OneThread): when its scores
    hold at most ONE_THREAD_SCORES elements. Elementwise ops over more than 32 Ki elements (the vocabulary of one
    row) are split over ATen's threads, so each token paid a fork/join for microseconds of work, and the woken
    thread then spun: on a loaded machine it took a core from the step's products (one row's run on one thread
    anyway), and 64 tokens of the gpt2 shape took 1.27x as long in all (benchmarks/bench_torch.py's decode, 2
    threads, the machine shared with a training job)."""
    return logits.device.type == "cpu" and logits.numel() <= ONE_THREAD_SCORES


def _fixed_step(model, cfg: GenerationConfig, device) -> tuple[str, dict | None, bool] | None:
    """How to run the decoding steps (compiled.py): ("compile", torch.compile options, keep) when compile_config is
    given, ("cuda_graph", None, keep) on a CUDA device, ("fixed", None, False) on the CPU (the same step run as it
    is: no host checks, mask building or cache slicing per token; nothing to capture, so nothing worth keeping),
    unless disable_compile; else None (the eager step). ``keep``: the step and its cache may stay on the model for
    the next call -- not when the cache is returned to the caller (return_dict_in_generate), who must not see it
    overwritten later."""
    wanted = cfg.compile_config is not None or device.type in ("cuda", "cpu")
    if cfg.disable_compile or not wanted:
        return None
    if model.training or (cfg.return_dict_in_generate and (cfg.output_attentions or cfg.output_hidden_states)):
        return None  # dropout and per-step attentions / hidden states need the eager step
    if cfg.compile_config is not None:
        from .compiled import compile_options

        return "compile", compile_options(cfg.compile_config), not cfg.return_dict_in_generate
    if device.type == "cpu":
        return "fixed", None, False
    return "cuda_graph", None, not cfg.return_dict_in_generate
