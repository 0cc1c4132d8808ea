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
``_sample``, ``_beam_search``); the options are the fields of ``gpt2.common.generation.GenerationConfig``.
What is ours is the plumbing: one static KV cache allocated for the whole run, logits of the last position only,
ids written into a preallocated (B, max_length) tensor, ``torch.inference_mode``. docs/generation.md has the rest.
"""

from __future__ import annotations

import inspect
import warnings

import torch
import torch.nn.functional as F

from ..common import loading
from ..common.generation import (GENERATION_CONFIG_NAME, GENERATION_DEFAULTS, GenerationConfig, StopStrings, eos_ids,
                                 merge, resolve_lengths)
from ..common.outputs import GenerateDecoderOnlyOutput
from .cache import KVCache
from .logits_process import logits_processors, run_processors
from .stopping import LateCheck, Stop, use_late_check
from .streamers import BaseStreamer



# -- the model behind generate() ------------------------------------------------------------------------------------
class Decoder:
    """Runs the model for generate(): one static KV cache for the run, left-padding bookkeeping (attention mask
    extended by one per step, position ids from its cumsum as transformers' prepare_inputs_for_generation), logits
    of the last position only. ``decoder(ids)`` takes the prompt, then one token per row per call."""

    def __init__(self, model, input_ids, attention_mask, max_length: int, output_attentions=False,
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

            capacity = min(c.n_positions, -(-max_length // 64) * 64)
            how, options, keep = fixed_step
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
class GenerationMixin:
    """``generate()`` and ``generation_config`` for the models with a language-model head."""

    @property
    def generation_config(self) -> GenerationConfig:
        """The model's defaults: generation_config.json beside the weights, else derived from the model config."""
        if self.__dict__.get("_generation_config") is None:
            self.__dict__["_generation_config"] = GenerationConfig.from_model_config(self.config)
        return self.__dict__["_generation_config"]

    @generation_config.setter
    def generation_config(self, value: GenerationConfig) -> None:
        if not isinstance(value, GenerationConfig):
            raise TypeError(f"generation_config must be a GenerationConfig, got {type(value).__name__}")
        self.__dict__["_generation_config"] = value

    def can_generate(self) -> bool:
        return True

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        result = super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        model = result[0] if isinstance(result, tuple) else result  # (model, loading info) with output_loading_info
        found = loading.generation_config(pretrained_model_name_or_path, revision=kwargs.get("revision"),
                                          cache_dir=kwargs.get("cache_dir"),
                                          local_files_only=kwargs.get("local_files_only", False))
        if found is not None:
            model.generation_config = found
        return result

    def _files_to_save(self) -> dict[str, str]:
        """generation_config.json too, as transformers writes it for generative models (in the same transaction
        as the weights)."""
        return {**super()._files_to_save(), GENERATION_CONFIG_NAME: self.generation_config.json_to_save()}

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
        cfg = self._generation_settings(generation_config, kwargs)
        with torch.inference_mode():
            hooks = _Hooks(logits_processor, stopping_criteria, prefix_allowed_tokens_fn)
            result = _generate(self, cfg, input_ids, attention_mask, streamer, generator, tokenizer, hooks,
                               inputs_embeds, token_type_ids, assistant_model)
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
        if beam_indices is None:  # greedy / sampling: row i's scores chose row i's tokens
            beam_indices = torch.arange(stacked.shape[0], device=stacked.device)[:, None].expand(-1, stacked.shape[1])
        if beam_indices.shape[0] != sequences.shape[0]:
            raise ValueError(f"beam_indices has {beam_indices.shape[0]} rows, sequences {sequences.shape[0]}")
        valid = beam_indices >= 0
        length = int(valid.sum(-1).max())
        rows, valid = beam_indices[:, :length].clamp(min=0), valid[:, :length]
        tokens = sequences[:, sequences.shape[-1] - length:]
        steps = torch.arange(length, device=stacked.device)[None, :]
        return torch.where(valid, stacked[rows, steps, tokens], torch.zeros((), dtype=stacked.dtype,
                                                                            device=stacked.device))

    def _generation_settings(self, generation_config, kwargs) -> GenerationConfig:
        base = self.generation_config
        if generation_config is not None:
            if not isinstance(generation_config, GenerationConfig):
                raise TypeError(f"generation_config must be a GenerationConfig, got {type(generation_config).__name__}")
            # transformers >= 4.50: what the given config leaves at the global default comes from the model's own
            data, model_data = generation_config.to_dict(), base.to_dict()
            for key, default in GENERATION_DEFAULTS.items():
                if data.get(key) == default and model_data.get(key) != default:
                    data[key] = model_data[key]
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                base = GenerationConfig.from_dict(data)
            base._generate_kwargs = getattr(generation_config, "_generate_kwargs", frozenset())
        return merge(base, **kwargs)


_CONTRASTIVE = ("contrastive, group-beam, constrained and guided decoding are not implemented; transformers 4.56+ "
                "moved the first three to Hub code, which this package never runs")
_UNSUPPORTED = {  # setting -> (is it asked for?, why not): a ValueError, never silently ignored
    "penalty_alpha": (lambda v: v is not None and v > 0, _CONTRASTIVE),
    "num_beam_groups": (lambda v: v != 1, _CONTRASTIVE),
    "diversity_penalty": (lambda v: v not in (None, 0, 0.0), _CONTRASTIVE),
    "force_words_ids": (lambda v: v is not None, _CONTRASTIVE),
    "constraints": (lambda v: v is not None, _CONTRASTIVE),
    "encoder_repetition_penalty": (lambda v: v not in (None, 1, 1.0), "GPT-2 has no encoder"),
    "encoder_no_repeat_ngram_size": (lambda v: v not in (None, 0), "GPT-2 has no encoder"),
    "guidance_scale": (lambda v: v not in (None, 1, 1.0), "classifier-free guidance is not implemented"),
    "watermarking_config": (lambda v: v is not None, "watermarking is not implemented"),
    "low_memory": (lambda v: bool(v), "the sequential beam search is not implemented"),
    "token_healing": (lambda v: bool(v), "token healing is not implemented"),
    "prompt_lookup_num_tokens": (lambda v: v is not None, "prompt-lookup decoding is not implemented"),
    "dola_layers": (lambda v: v is not None, "DoLa decoding is not implemented"),
    "cache_implementation": (lambda v: v not in (None, "static", "dynamic"),
                             "only 'static' and 'dynamic' are, both run as one preallocated cache"),
}


def _check_request(model, cfg: GenerationConfig, input_ids, attention_mask, streamer, inputs_embeds=None,
                   token_type_ids=None):
    """Validate at the boundary; returns (input_ids, attention_mask, token_type_ids), ids as long tensors on the
    model's device (with inputs_embeds alone, input_ids is a placeholder of its (B, T): generate() never shows it)."""
    for name, (asked, why) in _UNSUPPORTED.items():
        if asked(getattr(cfg, name, None)):
            raise ValueError(f"generate(): {name}={getattr(cfg, name)!r} is not supported ({why})")
    if streamer is not None and cfg.num_beams > 1:
        raise ValueError("streamer cannot be used with beam search (transformers' rule): set num_beams=1")
    device, V = model.device, model.config.vocab_size
    if inputs_embeds is not None:
        C = model.config.n_embd
        if not isinstance(inputs_embeds, torch.Tensor) or inputs_embeds.dim() != 3 or inputs_embeds.shape[-1] != C \
                or not inputs_embeds.dtype.is_floating_point or 0 in inputs_embeds.shape:
            raise ValueError(f"inputs_embeds must be a float tensor (batch, length, {C}), got "
                             f"{getattr(inputs_embeds, 'dtype', type(inputs_embeds).__name__)} of shape "
                             f"{tuple(getattr(inputs_embeds, 'shape', ()))}")
        if input_ids is not None:
            raise ValueError("give input_ids or inputs_embeds to generate(), not both")
        input_ids = torch.zeros(inputs_embeds.shape[:2], dtype=torch.long, device=device)
    if input_ids is None:
        if cfg.bos_token_id is None:
            raise ValueError("generate() needs input_ids, or a bos_token_id to start from")
        input_ids = torch.full((1, 1), cfg.bos_token_id, dtype=torch.long, device=device)
    if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2 or input_ids.dtype.is_floating_point \
            or input_ids.dtype.is_complex or input_ids.dtype == torch.bool or 0 in input_ids.shape:
        raise ValueError(f"input_ids must be a non-empty 2-D integer tensor (batch, length), got "
                         f"{getattr(input_ids, 'dtype', type(input_ids).__name__)} of shape "
                         f"{tuple(getattr(input_ids, 'shape', ()))}")
    if int(input_ids.min()) < 0 or int(input_ids.max()) >= V:
        raise ValueError(f"input_ids must be token ids in 0..{V - 1}, got values {int(input_ids.min())}.."
                         f"{int(input_ids.max())}")
    if attention_mask is not None:
        if not isinstance(attention_mask, torch.Tensor) or tuple(attention_mask.shape) != tuple(input_ids.shape):
            raise ValueError(f"attention_mask must be a tensor of the shape of input_ids {tuple(input_ids.shape)}, "
                             f"got {tuple(getattr(attention_mask, 'shape', ()))}")
        if bool(((attention_mask != 0) & (attention_mask != 1)).any()):
            raise ValueError("attention_mask must hold only 0 (padding) and 1 (token)")
        attention_mask = attention_mask.to(device=device, dtype=torch.long)
    if token_type_ids is not None:
        if not isinstance(token_type_ids, torch.Tensor) or tuple(token_type_ids.shape) != tuple(input_ids.shape):
            raise ValueError(f"token_type_ids must be a tensor of the prompt's shape {tuple(input_ids.shape)}, got "
                             f"{tuple(getattr(token_type_ids, 'shape', ()))}")
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


def _generate(model, cfg: GenerationConfig, input_ids, attention_mask, streamer, generator, tokenizer, hooks,
              inputs_embeds=None, token_type_ids=None, assistant=None):
    input_ids, attention_mask, token_type_ids = _check_request(model, cfg, input_ids, attention_mask, streamer,
                                                               inputs_embeds, token_type_ids)
    if inputs_embeds is not None:
        inputs_embeds = inputs_embeds.to(device=model.device, dtype=model.dtype)
    stop_strings = StopStrings(cfg.stop_strings, tokenizer) if cfg.stop_strings is not None else None
    V, device = model.config.vocab_size, input_ids.device
    eos, pad = eos_ids(cfg), cfg.pad_token_id
    if pad is None and eos:
        warnings.warn(f"pad_token_id is not set: finished rows are padded with eos_token_id {eos[0]} (as transformers"
                      f" does){'' if attention_mask is not None else '; pass attention_mask for padded batches'}",
                      UserWarning, stacklevel=3)
        pad = eos[0]
    if pad is not None and pad >= V and any(i < V for i in eos):
        raise ValueError(f"pad_token_id={pad} is outside the vocabulary (0..{V - 1}) but rows can finish")
    if attention_mask is None and inputs_embeds is None and pad is not None and pad not in eos \
            and bool((input_ids == pad).any()):
        attention_mask = (input_ids != pad).long()  # transformers infers the mask from the padding
    if inputs_embeds is None and pad is not None and input_ids.shape[0] > 1 and bool((input_ids[:, -1] == pad).any()):
        warnings.warn("right padding detected: GPT-2 needs left padding for batched generation", UserWarning,
                      stacklevel=3)
    expand = max(cfg.num_beams, cfg.num_return_sequences)
    if expand > 1:
        input_ids = input_ids.repeat_interleave(expand, dim=0)
        attention_mask = attention_mask.repeat_interleave(expand, dim=0) if attention_mask is not None else None
        inputs_embeds = inputs_embeds.repeat_interleave(expand, dim=0) if inputs_embeds is not None else None
        token_type_ids = token_type_ids.repeat_interleave(expand, dim=0) if token_type_ids is not None else None
    B, T = input_ids.shape
    min_length, max_length = resolve_lengths(cfg, T, model.config.n_positions)
    offset = T if inputs_embeds is not None else 0  # processors and criteria see the ids from here on
    processors = logits_processors(cfg, V, T - offset, max(min_length - offset, 0), max_length - offset, eos, device,
                                   hooks.processors, hooks.prefix_fn)
    stop = Stop(eos, max_length, cfg.max_time, device, stop_strings, hooks.criteria, offset)
    if assistant is not None:
        from .assisted import assisted_greedy, check_assistant

        check_assistant(model, assistant, cfg, input_ids, attention_mask, max_length, streamer,
                        inputs_embeds is not None or token_type_ids is not None)
        return assisted_greedy(model, assistant, input_ids, processors, cfg, stop, max_length)
    record = cfg.return_dict_in_generate
    fixed = _fixed_step(model, cfg, device) if token_type_ids is None else None  # the fixed step has no types
    decoder = Decoder(model, input_ids, attention_mask, max_length, record and cfg.output_attentions,
                      record and cfg.output_hidden_states, fixed, inputs_embeds, token_type_ids)
    try:
        if cfg.num_beams > 1:
            from .beam_search import beam_search

            return beam_search(decoder, input_ids, processors, cfg, stop, pad, eos, generator)
        return _sample(decoder, input_ids, processors, cfg, stop, pad, eos, generator, streamer, max_length)
    finally:
        decoder.close()


def _sample(decoder, input_ids, processors, cfg, stop, pad, eos, generator, streamer, max_length):
    """Greedy decoding and sampling (transformers' ``_sample``), one token per row per step."""
    (B, T), device, record = input_ids.shape, input_ids.device, cfg.return_dict_in_generate
    start = decoder.offset  # 0, or T with inputs_embeds: what processors, criteria and the caller see
    if streamer is not None:
        streamer.put(input_ids[:, start:].cpu())
    ids = torch.empty((B, max_length), dtype=torch.long, device=device)  # the output, filled in place
    ids[:, :T] = input_ids
    unfinished = torch.ones(B, dtype=torch.bool, device=device)
    scores, logits, attentions, hidden = ([] if record and flag else None for flag in (
        cfg.output_scores, cfg.output_logits, cfg.output_attentions, cfg.output_hidden_states))
    late = LateCheck(device) if use_late_check(device, streamer, record, stop) else None
    cur, next_logits = T, decoder(input_ids)
    while True:
        next_scores = run_processors(processors, ids[:, start:cur], next_logits)
        _append(scores, next_scores, logits, next_logits, attentions, hidden, decoder.last_output)
        if cfg.do_sample:
            next_tokens = torch.multinomial(F.softmax(next_scores, dim=-1), 1, generator=generator).squeeze(1)
        else:
            next_tokens = torch.argmax(next_scores, dim=-1)
        if eos:  # finished rows get padding
            next_tokens = torch.where(unfinished, next_tokens, pad)
        ids[:, cur] = next_tokens
        cur += 1
        if streamer is not None:
            streamer.put(next_tokens.cpu())
        unfinished &= ~stop(ids[:, :cur], _tuple(scores))
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
    if not record:
        return ids[:, start:cur]
    return GenerateDecoderOnlyOutput(ids[:, start:cur], _tuple(scores), _tuple(logits), _tuple(attentions),
                                     _tuple(hidden), decoder.cache)


def _fixed_step(model, cfg: GenerationConfig, device) -> tuple[str, dict | None, bool] | None:
    """How to run the decoding steps (compiled.py): ("compile", torch.compile options, keep) when compile_config is
    given, ("cuda_graph", None, keep) on a CUDA device unless disable_compile, else None (the eager step). ``keep``:
    the step and its cache may stay on the model for the next call -- not when the cache is returned to the caller
    (return_dict_in_generate), who must not see it overwritten later."""
    wanted = cfg.compile_config is not None or device.type == "cuda"
    if cfg.disable_compile or not wanted:
        return None
    if model.training or (cfg.return_dict_in_generate and (cfg.output_attentions or cfg.output_hidden_states)):
        return None  # dropout and per-step attentions / hidden states need the eager step
    if cfg.compile_config is not None:
        from .compiled import compile_options

        return "compile", compile_options(cfg.compile_config), not cfg.return_dict_in_generate
    return "cuda_graph", None, not cfg.return_dict_in_generate


def _append(scores, step_scores, logits, step_logits, attentions, hidden, out) -> None:
    for store, value in ((scores, step_scores), (logits, step_logits)):
        if store is not None:
            store.append(value)
    if attentions is not None:
        attentions.append(out.attentions)
    if hidden is not None:
        hidden.append(out.hidden_states)


def _tuple(values):
    return None if values is None else tuple(values)
