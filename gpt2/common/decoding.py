"""What generate() decides before any tensor exists, shared by the PyTorch, TF and Flax implementations.

Each framework's generate() calls, in this order:

1. ``merge_settings(model.generation_config, generation_config, **kwargs)`` -- the run's GenerationConfig;
2. ``check_options(cfg, framework=..., streamer=..., ...)`` -- the unsupported-options table (``UNSUPPORTED``),
   then ``check_prompt`` / ``check_token_range`` / ``check_attention_mask`` / ``check_inputs_embeds`` /
   ``check_token_type_ids`` with the shapes and host-side summaries (dtype, min / max) of its inputs;
3. ``plan(cfg, input_length=T, max_positions=..., vocab_size=..., has_attention_mask=..., from_embeds=...)`` --
   eos ids, padding id, rows per prompt, min / max total lengths, and where the ids start;
4. ``processor_specs(cfg, run_plan, vocab_size=..., has_prefix_fn=...)`` -- which logits processors run, with their
   resolved options, in ``PROCESSOR_ORDER`` (transformers 4.57's order); each framework builds them
   as functions ``(ids buffer (B, max_length), length, scores (B, V)) -> scores`` that read ids below ``length`` only,
   so the same processors trace inside a compiled loop;
5. ``StopStrings`` for stop_strings (on the host), ``StepRecord`` for return_dict_in_generate's per-step outputs.

>>> from gpt2.common.generation import GenerationConfig
>>> from gpt2.common.decoding import merge, plan, processor_specs
>>> cfg = merge(GenerationConfig(eos_token_id=50256), max_new_tokens=5, do_sample=True, top_k=10)
>>> run = plan(cfg, input_length=8, max_positions=1024, vocab_size=50257, has_attention_mask=False)
>>> run.max_length, run.pad
(13, 50256)
>>> [spec.name for spec in processor_specs(cfg, run, vocab_size=50257)]
['custom', 'top_k']
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any, Callable, NamedTuple

from .generation import GENERATION_DEFAULTS, GenerationConfig, is_int

FRAMEWORKS = ("torch", "tf", "flax")


# -- settings ---------------------------------------------------------------------------------------------------------
def merge(config: GenerationConfig | None, **kwargs: Any) -> GenerationConfig:
    """A validated copy of ``config`` (None: the defaults) with generate()'s keyword arguments applied.

    Only fields are accepted: any other keyword raises TypeError naming it, so a typo or an option these generate()
    implementations do not support never passes silently. The copy remembers which keywords were given (not None):
    ``resolve_lengths`` needs to know whether max_length came from the call or from the config.

    >>> merge(None, max_new_tokens=4, do_sample=True).max_new_tokens
    4
    """
    base = GenerationConfig() if config is None else config
    unknown = sorted(k for k in kwargs if k not in GENERATION_DEFAULTS)
    if unknown:
        raise TypeError(f"generate() got unexpected keyword argument(s) {', '.join(unknown)}: "
                        f"not GenerationConfig fields")
    out = base.copy()
    out.update(**kwargs)
    given = frozenset(k for k, v in kwargs.items() if v is not None)
    out._generate_kwargs = frozenset(getattr(base, "_generate_kwargs", frozenset())) | given
    return out


def merge_settings(model_defaults: GenerationConfig, generation_config: GenerationConfig | None = None, /,
                   **kwargs: Any) -> GenerationConfig:
    """The settings of one generate() call: the model's ``generation_config``, overridden by the values of a
    ``generation_config`` argument that differ from the global defaults (transformers >= 4.50: what the argument
    leaves at the default comes from the model's own), then by the keyword arguments (``merge``)."""
    base = model_defaults
    if generation_config is not None:
        if not isinstance(generation_config, GenerationConfig):
            raise TypeError(f"generation_config must be a GenerationConfig, got {type(generation_config).__name__}")
        data, model_data = generation_config.to_dict(), base.to_dict()
        for key, default in GENERATION_DEFAULTS.items():
            if data.get(key) == default and model_data.get(key) != default:
                data[key] = model_data[key]
        with warnings.catch_warnings():  # the caller's config was validated (and warned about) when it was built
            warnings.simplefilter("ignore")
            base = GenerationConfig.from_dict(data)
        base._generate_kwargs = getattr(generation_config, "_generate_kwargs", frozenset())
    return merge(base, **kwargs)


# -- the unsupported-options table ------------------------------------------------------------------------------------
class Unsupported(NamedTuple):
    """One row: ``option`` (a GenerationConfig field or an argument of generate()), when it counts as asked for,
    whether each framework refuses it, and why."""

    option: str
    asked: Callable[[Any], bool]
    torch: bool
    tf: bool
    flax: bool
    reason: str


_CONTRASTIVE = ("contrastive, group-beam, constrained and guided decoding are not implemented; transformers 4.56+ "
                "moved the first three to Hub code, which this package never runs")
_COMPILED_LOOP = "TF and Flax decode in one compiled loop, which "


def _given(v: Any) -> bool:
    return v is not None


# Every option some framework refuses: a ValueError naming it, never silently ignored. The torch / tf / flax
# columns say who refuses it (True: refused).
UNSUPPORTED: tuple[Unsupported, ...] = (
    Unsupported("penalty_alpha", lambda v: v is not None and v > 0, True, True, True, _CONTRASTIVE),
    Unsupported("num_beam_groups", lambda v: v != 1, True, True, True, _CONTRASTIVE),
    Unsupported("diversity_penalty", lambda v: v not in (None, 0, 0.0), True, True, True, _CONTRASTIVE),
    Unsupported("force_words_ids", _given, True, True, True, _CONTRASTIVE),
    Unsupported("constraints", _given, True, True, True, _CONTRASTIVE),
    Unsupported("encoder_repetition_penalty", lambda v: v not in (None, 1, 1.0), True, True, True,
                "GPT-2 has no encoder"),
    Unsupported("encoder_no_repeat_ngram_size", lambda v: v not in (None, 0), True, True, True, "GPT-2 has no encoder"),
    Unsupported("guidance_scale", lambda v: v not in (None, 1, 1.0), True, True, True,
                "classifier-free guidance is not implemented"),
    Unsupported("watermarking_config", _given, True, True, True, "watermarking is not implemented"),
    Unsupported("low_memory", bool, True, True, True, "the sequential beam search is not implemented"),
    Unsupported("token_healing", bool, True, True, True, "token healing is not implemented"),
    Unsupported("prompt_lookup_num_tokens", _given, True, True, True, "prompt-lookup decoding is not implemented"),
    Unsupported("dola_layers", _given, True, True, True, "DoLa decoding is not implemented"),
    Unsupported("cache_implementation", lambda v: v not in (None, "static", "dynamic"), True, True, True,
                "only 'static' and 'dynamic' are, both run as one preallocated cache"),
    # Framework-specific: what only the eager PyTorch loop can do.
    Unsupported("compile_config", _given, False, True, True,
                _COMPILED_LOOP + "is always XLA-compiled; compile_config configures torch.compile"),
    Unsupported("max_time", _given, False, True, True, _COMPILED_LOOP + "cannot read the clock between steps"),
    Unsupported("stopping_criteria", bool, False, True, True,
                _COMPILED_LOOP + "cannot call Python criteria between steps"),
    Unsupported("prefix_allowed_tokens_fn", _given, False, True, True,
                _COMPILED_LOOP + "cannot call a Python function per row and step"),
    Unsupported("logits_processor", bool, False, True, True,
                _COMPILED_LOOP + "cannot call Python processors between steps"),
    Unsupported("assistant_model", _given, False, True, True, "assisted decoding is implemented in PyTorch only"),
    Unsupported("output_attentions", bool, False, True, True,
                _COMPILED_LOOP + "keeps the scores and logits of each step, not attentions"),
    Unsupported("output_hidden_states", bool, False, True, True,
                _COMPILED_LOOP + "keeps the scores and logits of each step, not hidden states"),
)


def check_options(cfg: GenerationConfig, *, framework: str, **arguments: Any) -> None:
    """Refuse, by name and with the reason, what ``framework`` ("torch", "tf" or "flax") does not do: the rows of
    ``UNSUPPORTED`` read from ``cfg`` or from ``arguments`` (generate()'s own arguments: streamer=...,
    assistant_model=...; None means not given), then the combinations transformers refuses (a streamer with beam
    search)."""
    if framework not in FRAMEWORKS:
        raise ValueError(f"framework must be one of {FRAMEWORKS}, got {framework!r}")
    for row in UNSUPPORTED:
        if not getattr(row, framework):
            continue
        if row.option in arguments:
            if row.asked(arguments[row.option]):
                raise ValueError(f"generate(): {row.option} is not supported in {framework} ({row.reason})")
        elif row.asked(getattr(cfg, row.option, None)):
            raise ValueError(f"generate(): {row.option}={getattr(cfg, row.option)!r} is not supported ({row.reason})")
    if arguments.get("streamer") is not None and cfg.num_beams > 1:
        raise ValueError("streamer cannot be used with beam search (transformers' rule): set num_beams=1")


# -- request checks: shapes and host-side summaries of the inputs -------------------------------------------------------
def check_prompt(*, shape: tuple, dtype: str, integer: bool) -> None:
    """input_ids: a non-empty 2-D array of an integer dtype (``dtype``: its name, for the message)."""
    shape = tuple(shape)
    if not integer or len(shape) != 2 or 0 in shape:
        raise ValueError(f"input_ids must be a non-empty 2-D integer tensor (batch, length), got {dtype} of shape "
                         f"{shape}")


def check_token_range(*, low: int, high: int, vocab_size: int) -> None:
    """input_ids' smallest and largest values: token ids in 0..vocab_size - 1."""
    if low < 0 or high >= vocab_size:
        raise ValueError(f"input_ids must be token ids in 0..{vocab_size - 1}, got values {low}..{high}")


def check_attention_mask(*, shape: tuple | None, ids_shape: tuple, binary: bool = True) -> None:
    """attention_mask: the shape of input_ids (``shape`` None: not an array at all), only 0 and 1 (``binary``)."""
    if shape is None or tuple(shape) != tuple(ids_shape):
        raise ValueError(f"attention_mask must be a tensor of the shape of input_ids {tuple(ids_shape)}, "
                         f"got {tuple(shape or ())}")
    if not binary:
        raise ValueError("attention_mask must hold only 0 (padding) and 1 (token)")


def check_inputs_embeds(*, shape: tuple | None, dtype: str, floating: bool, n_embd: int,
                        with_input_ids: bool) -> None:
    """inputs_embeds: a non-empty float array (batch, length, n_embd), given instead of input_ids."""
    shape = tuple(shape) if shape is not None else ()
    if not floating or len(shape) != 3 or shape[-1] != n_embd or 0 in shape:
        raise ValueError(f"inputs_embeds must be a float tensor (batch, length, {n_embd}), got {dtype} of shape "
                         f"{shape}")
    if with_input_ids:
        raise ValueError("give input_ids or inputs_embeds to generate(), not both")


def check_token_type_ids(*, shape: tuple | None, ids_shape: tuple, values=None, vocab_size: int | None = None) -> None:
    """token_type_ids: the prompt's shape; with ``values`` (a numpy array, read on the host: the compiled loops of
    TF and Flax gather with them unchecked) also integer ids in 0..vocab_size-1 -- GPT-2 embeds token types with
    the token table. Without them, the model's own boundary checks the range (torch)."""
    if shape is None or tuple(shape) != tuple(ids_shape):
        raise ValueError(f"token_type_ids must be a tensor of the prompt's shape {tuple(ids_shape)}, got "
                         f"{tuple(shape or ())}")
    if values is not None:
        if values.dtype.kind not in "iu":
            raise TypeError(f"token_type_ids must hold integer ids, got {values.dtype}")
        if values.size and (int(values.min()) < 0 or int(values.max()) >= vocab_size):
            raise ValueError(f"token_type_ids must be ids in 0..{vocab_size - 1} (GPT-2 embeds them with the token "
                             f"table), got values {int(values.min())}..{int(values.max())}")


# -- compiled loops (TF, Flax): the shapes they are specialised to ------------------------------------------------------
SMALLEST_BUCKET = 8  # the smallest prompt bucket: prompts of 1..8 tokens share one compiled function


def bucket(n: int) -> int:
    """The power of two >= n (at least SMALLEST_BUCKET): prompt lengths and new-token counts come in few sizes, so
    a compiled loop serves every length of its bucket."""
    return max(SMALLEST_BUCKET, 1 << (int(n) - 1).bit_length())


def hashable(v):
    """Options (dicts, lists) as nested tuples: part of a compiled function's cache key."""
    if isinstance(v, dict):
        return tuple(sorted((k, hashable(x)) for k, x in v.items()))
    if isinstance(v, (list, tuple)):
        return tuple(hashable(x) for x in v)
    return v


# -- lengths, eos and padding -------------------------------------------------------------------------------------------
def eos_ids(config: GenerationConfig) -> list[int]:
    """The end-of-sequence ids as a list: [] for None, [id] for an int, the list itself otherwise."""
    eos = config.eos_token_id
    if eos is None:
        return []
    return [int(eos)] if is_int(eos) else [int(i) for i in eos]


def resolve_lengths(config: GenerationConfig, input_length: int, max_positions: int | None) -> tuple[int, int]:
    """``(min_total_length, max_total_length)``, prompt included, with transformers' precedence.

    Maximum: ``input_length + max_new_tokens`` when max_new_tokens is set (it wins over max_length, with a warning
    when both were given to generate()); otherwise max_length -- except that a max_length equal to the global default
    (20) that was not given to generate() (see ``merge``) means 20 *new* tokens, capped at ``max_positions``, as in
    transformers. Minimum: ``input_length + min_new_tokens`` when set, otherwise min_length.

    Raises ValueError when the prompt already fills max_length (transformers' error), and when the maximum exceeds
    ``max_positions`` (GPT-2 has no position embedding past n_positions; None: no limit). Warns when the minimum
    exceeds the maximum (generation then stops at the maximum).

    >>> resolve_lengths(GenerationConfig(), input_length=5, max_positions=1024)   # the default: 20 new tokens
    (0, 25)
    """
    if not is_int(input_length) or input_length < 0:
        raise ValueError(f"resolve_lengths: input_length must be a non-negative integer, got {input_length!r}")
    input_length = int(input_length)
    given = getattr(config, "_generate_kwargs", frozenset())
    default_max = GENERATION_DEFAULTS["max_length"]
    if config.max_new_tokens is not None:
        if "max_length" in given:
            warnings.warn(f"both max_new_tokens (={config.max_new_tokens}) and max_length (={config.max_length}) "
                          f"were given; max_new_tokens takes precedence", UserWarning, stacklevel=2)
        source, max_total = "max_new_tokens", input_length + config.max_new_tokens
    elif "max_length" not in given and config.max_length == default_max:
        source, max_total = "max_length", input_length + default_max
        if max_positions is not None:
            max_total = min(max_total, max_positions)
    else:
        source, max_total = "max_length", config.max_length
    if input_length >= max_total:
        raise ValueError(
            f"the input is {input_length} tokens long but max_length is {max_total}: nothing is left to generate; "
            f"increase max_length or, better, set max_new_tokens"
            + (f" (the model's n_positions is {max_positions})" if max_positions is not None else "")
        )
    if max_positions is not None and max_total > max_positions:
        value = config.max_new_tokens if source == "max_new_tokens" else config.max_length
        raise ValueError(
            f"{source}={value} asks for sequences of {max_total} tokens (prompt included), but this GPT-2 has "
            f"position embeddings for n_positions={max_positions} tokens only; lower {source}"
        )
    if config.min_new_tokens is not None:
        min_total = input_length + config.min_new_tokens
    else:
        min_total = config.min_length
    if min_total > max_total:
        warnings.warn(f"unfeasible length constraints: the minimum length {min_total} is larger than the maximum "
                      f"{max_total}; generation will stop at the maximum", UserWarning, stacklevel=2)
    return min_total, max_total


@dataclass(frozen=True)
class Plan:
    """The run's numbers, decided before decoding. Lengths count positions of the ids buffer, prompt included;
    ``offset`` is where ids start (the prompt's length with an inputs_embeds prompt, whose positions hold no ids:
    processors, criteria and the output see only what follows, as in transformers; else 0)."""

    eos: tuple[int, ...]
    pad: int | None  # what finished rows are filled with
    rows_per_prompt: int  # max(num_beams, num_return_sequences): each prompt is repeated that many times
    input_length: int
    min_length: int
    max_length: int
    offset: int

    def may_infer_mask(self, *, has_attention_mask: bool) -> bool:
        """Whether a missing attention mask is to be inferred from the padding id (transformers' rule: when the
        prompt holds pad_token_id and it is not also an eos id; the caller checks the former)."""
        return (not has_attention_mask and self.offset == 0 and self.pad is not None and self.pad not in self.eos)


def infer_mask(run: Plan, ids, *, has_attention_mask: bool, from_embeds: bool, stacklevel: int = 4) -> bool:
    """transformers' padding rules for a prompt ``ids`` (B, T) (a numpy array or a tensor, on the host): warns when
    a batch looks right-padded (GPT-2 needs left padding), and returns whether the attention mask is to be inferred
    as ``ids != pad`` (``Plan.may_infer_mask`` and the prompt holds the padding id). Every framework's generate()
    asks here, then builds the mask in its own arrays. ``stacklevel``: the warning's, pointing at generate()'s
    caller (generate() -> its helper -> here; one more through host_loop.prepare)."""
    pad = run.pad
    if not from_embeds and pad is not None and ids.shape[0] > 1 and bool((ids[:, -1] == pad).any()):
        warnings.warn("right padding detected: GPT-2 needs left padding for batched generation", UserWarning,
                      stacklevel=stacklevel)
    return run.may_infer_mask(has_attention_mask=has_attention_mask) and bool((ids == pad).any())


def plan(cfg: GenerationConfig, *, input_length: int, max_positions: int | None, vocab_size: int,
         has_attention_mask: bool, from_embeds: bool = False, stacklevel: int = 4) -> Plan:
    """eos and padding ids (a missing pad_token_id is the first eos id, with a warning, as transformers), rows per
    prompt and lengths (``resolve_lengths``). Raises ValueError when rows can finish but the padding id is outside
    the vocabulary. ``stacklevel``: the padding warning's, as ``infer_mask``'s."""
    eos = eos_ids(cfg)
    pad = cfg.pad_token_id
    if pad is None and eos:
        warnings.warn(f"pad_token_id is not set: finished rows are padded with eos_token_id {eos[0]} (as transformers"
                      f" does){'' if has_attention_mask else '; pass attention_mask for padded batches'}",
                      UserWarning, stacklevel=stacklevel)
        pad = eos[0]
    if pad is not None and pad >= vocab_size and any(i < vocab_size for i in eos):
        raise ValueError(f"pad_token_id={pad} is outside the vocabulary (0..{vocab_size - 1}) but rows can finish")
    min_length, max_length = resolve_lengths(cfg, input_length, max_positions)
    return Plan(eos=tuple(eos), pad=pad, rows_per_prompt=max(cfg.num_beams, cfg.num_return_sequences),
                input_length=input_length, min_length=min_length, max_length=max_length,
                offset=input_length if from_embeds else 0)


# -- logits processors: which, with what options, in which order --------------------------------------------------------
# transformers 4.57's order (GenerationMixin._get_logits_processor), for all three frameworks: the processors, the
# caller's own ("custom"), then -- only when sampling -- the warpers, and renormalize_logits last.
PROCESSOR_ORDER = (
    "sequence_bias", "repetition_penalty", "no_repeat_ngram", "bad_words", "min_length", "prefix_allowed_tokens",
    "forced_bos", "forced_eos", "remove_invalid_values", "exponential_decay_length_penalty", "suppress_tokens",
    "begin_suppress_tokens", "custom",
    "temperature", "top_k", "top_p", "min_p", "typical_p", "epsilon_cutoff", "eta_cutoff",
    "renormalize_logits",
)


class ProcessorSpec(NamedTuple):
    """One logits processor to build: its name (in ``PROCESSOR_ORDER``) and resolved options. Lengths in the
    options count the ids a processor sees (from ``Plan.offset`` on), as its ``length`` argument does."""

    name: str
    options: dict


def processor_specs(cfg: GenerationConfig, run: Plan, *, vocab_size: int,
                    has_prefix_fn: bool = False) -> list[ProcessorSpec]:
    """The processors ``cfg`` asks for, in ``PROCESSOR_ORDER``, with transformers' rules resolved: a bad word that
    is one eos id is dropped; the minimum length applies only with eos ids; warpers run only when sampling, with
    filter value -inf and min_tokens_to_keep 1 (beam sampling: number of eos ids + 1, at least 2). A "custom" entry
    always marks where the caller's own processors go. Raises ValueError for bias / bad-word ids outside the
    vocabulary."""
    eos = list(run.eos)
    prompt_length = run.input_length - run.offset
    min_length, max_length = max(run.min_length - run.offset, 0), run.max_length - run.offset
    out: list[ProcessorSpec] = []

    def add(name: str, **options: Any) -> None:
        out.append(ProcessorSpec(name, options))

    def biases(pairs, what: str) -> dict[tuple, float]:
        bias = {tuple(int(t) for t in seq): float(b) for seq, b in pairs}
        outside = sorted({t for seq in bias for t in seq if t >= vocab_size})
        if outside:
            raise ValueError(f"{what} name token ids {outside} outside the vocabulary (0..{vocab_size - 1})")
        return bias

    if cfg.sequence_bias is not None:
        bias = cfg.sequence_bias
        add("sequence_bias", bias=biases(bias.items() if isinstance(bias, dict) else bias,
                                         "bad_words_ids / sequence_bias"))
    if cfg.repetition_penalty is not None and cfg.repetition_penalty != 1.0:
        add("repetition_penalty", penalty=float(cfg.repetition_penalty))
    if cfg.no_repeat_ngram_size:
        add("no_repeat_ngram", n=int(cfg.no_repeat_ngram_size))
    if cfg.bad_words_ids is not None:  # a bad word that is one eos id is dropped (transformers' rule)
        words = [w for w in cfg.bad_words_ids if not (len(w) == 1 and w[0] in eos)]
        add("bad_words", bias=biases(((w, -math.inf) for w in words), "bad_words_ids / sequence_bias"))
    if eos and min_length > 0:  # min_length and min_new_tokens: both are "no eos before min_length"
        add("min_length", min_length=min_length, eos=eos)
    if has_prefix_fn:
        add("prefix_allowed_tokens", num_beams=cfg.num_beams)
    if cfg.forced_bos_token_id is not None:
        add("forced_bos", token=cfg.forced_bos_token_id, at_length=1)
    if cfg.forced_eos_token_id is not None:
        add("forced_eos", token=cfg.forced_eos_token_id, at_length=max_length - 1)
    if cfg.remove_invalid_values:
        add("remove_invalid_values")
    if cfg.exponential_decay_length_penalty is not None:
        start, factor = cfg.exponential_decay_length_penalty
        add("exponential_decay_length_penalty", start=int(start) + prompt_length, factor=float(factor), eos=eos)
    if cfg.suppress_tokens is not None:
        add("suppress_tokens", tokens=list(cfg.suppress_tokens), at_length=None)
    if cfg.begin_suppress_tokens is not None:
        begin = prompt_length if (prompt_length > 1 or cfg.forced_bos_token_id is None) else prompt_length + 1
        add("begin_suppress_tokens", tokens=list(cfg.begin_suppress_tokens), at_length=begin)
    add("custom")
    if cfg.do_sample:
        keep = len(eos) + 1 if cfg.num_beams > 1 and eos else (2 if cfg.num_beams > 1 else 1)
        if cfg.temperature is not None and cfg.temperature != 1.0:
            add("temperature", temperature=float(cfg.temperature))
        if cfg.top_k is not None and cfg.top_k != 0:
            add("top_k", k=max(int(cfg.top_k), keep))
        if cfg.top_p is not None and cfg.top_p < 1.0:
            add("top_p", p=float(cfg.top_p), keep=keep)
        if cfg.min_p is not None:
            add("min_p", min_p=float(cfg.min_p), keep=keep)
        if cfg.typical_p is not None and cfg.typical_p < 1.0:
            add("typical_p", mass=float(cfg.typical_p), keep=keep)
        if cfg.epsilon_cutoff is not None and 0.0 < cfg.epsilon_cutoff < 1.0:
            add("epsilon_cutoff", epsilon=float(cfg.epsilon_cutoff), keep=keep)
        if cfg.eta_cutoff is not None and 0.0 < cfg.eta_cutoff < 1.0:
            add("eta_cutoff", eta=float(cfg.eta_cutoff), keep=keep)
    if cfg.renormalize_logits:
        add("renormalize_logits")
    return out


# -- what return_dict_in_generate keeps per step -----------------------------------------------------------------------
class StepRecord:
    """The per-step outputs return_dict_in_generate asks for (scores, logits, attentions, hidden states): a list for
    each flag that is on, None for the others; ``get(name)`` gives the tuple the output object holds."""

    def __init__(self, cfg: GenerationConfig) -> None:
        on = cfg.return_dict_in_generate
        self.scores, self.logits, self.attentions, self.hidden_states = (
            [] if on and flag else None
            for flag in (cfg.output_scores, cfg.output_logits, cfg.output_attentions, cfg.output_hidden_states))

    def add(self, *, scores: Any, logits: Any, output: Any) -> None:
        """One step: the processed scores, the raw logits, and the model output holding attentions / hidden
        states (read only when they are recorded)."""
        if self.scores is not None:
            self.scores.append(scores)
        if self.logits is not None:
            self.logits.append(logits)
        if self.attentions is not None:
            self.attentions.append(output.attentions)
        if self.hidden_states is not None:
            self.hidden_states.append(output.hidden_states)

    def get(self, name: str) -> tuple | None:
        values = getattr(self, name)
        return None if values is None else tuple(values)


# -- stop strings ------------------------------------------------------------------------------------------------------
class StopStrings:
    """transformers' stop_strings criterion, framework-free: a row stops when one of the strings occurs in the text of
    its tokens and that occurrence ends inside the last token (so a string that was already there earlier, in the
    prompt say, never stops a row again). The text of a token is what the tokenizer decodes for it alone, as
    transformers' StopStringCriteria builds it.

    >>> stop = StopStrings(["\\n\\n"], tokenizer)       # any object with decode(list_of_ids) -> str
    >>> stop([[198, 198], [11, 198]])                  # the last tokens of each row, oldest first
    [True, False]
    """

    def __init__(self, stop_strings, tokenizer) -> None:
        strings = [stop_strings] if isinstance(stop_strings, str) else list(stop_strings)
        if not strings or not all(isinstance(s, str) and s for s in strings):
            raise ValueError(f"stop_strings must be a non-empty string or a list of them, got {stop_strings!r}")
        if tokenizer is None or not callable(getattr(tokenizer, "decode", None)):
            raise ValueError("stop_strings need the model's tokenizer: pass it to generate() as tokenizer=... "
                             "(transformers' rule)")
        self.strings, self.tokenizer = strings, tokenizer
        self.window = max(len(s) for s in strings) + 1  # tokens to look at: each token is at least one character
        self._texts: dict[int, str] = {}

    def _text(self, token: int) -> str:
        text = self._texts.get(token)
        if text is None:
            text = self._texts[token] = self.tokenizer.decode([token])
        return text

    def __call__(self, rows: list[list[int]]) -> list[bool]:
        """``rows``: each row's last tokens (at least ``window`` of them when it has that many)."""
        out = []
        for row in rows:
            texts = [self._text(t) for t in row[-self.window:]]
            tail, last = "".join(texts), len(texts[-1]) if texts else 0
            # An occurrence starting at or after this index ends after the last token's first character.
            out.append(any(tail.find(s, max(0, len(tail) - last - len(s) + 1)) != -1 for s in self.strings))
        return out
