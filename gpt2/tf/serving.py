"""Text-in / text-out SavedModels: TFGPT2Tokenizer -> the XLA-compiled generate() -> the detokenizer, in one graph.

gpt2/tf's second framework-only file (DESIGN.md; tests/test_structure.py's FRAMEWORK_ONLY): torch and Flax serve
token ids; a TensorFlow deployment (TF Serving, ``tf.saved_model.load``) wants raw strings in and out, with nothing
of this package on the serving side.

>>> from gpt2.tf import TFGPT2LMHeadModel, TFGPT2Tokenizer
>>> from gpt2.tf.serving import export_text_generation
>>> model = TFGPT2LMHeadModel.from_pretrained("path/to/checkpoint")
>>> export_text_generation(model, TFGPT2Tokenizer.from_pretrained("gpt2"), "/tmp/gpt2_text", max_new_tokens=32)
>>> served = tf.saved_model.load("/tmp/gpt2_text")       # any process with TensorFlow; this package not needed
>>> served.signatures["generate"](texts=tf.constant(["Hello, my dog"]))["generated_text"]
>>> served.signatures["score"](texts=tf.constant(["Hello, my dog"]))["log_likelihood"]

Why it is built this way:
- Strings cannot enter XLA, so each signature is a plain TF graph: the tokenizer and the detokenizer run there, and
  only the decode loop is a ``tf.function(jit_compile=True)`` called from it (``model.generate`` traced inside a
  function: generate.py's ``_generate_traced``). XLA compiles it at its first call after loading, not at export.
- XLA needs static shapes: prompts are left-padded (mask 0; positions restart at the first real token, as in
  ``model.generate``) to a power-of-two bucket (at least 8) up to ``max_prompt_length``, one compiled function per
  bucket chosen at run time with ``tf.switch_case`` (only the buckets used get compiled), and the batch is cut into
  chunks of ``batch_size`` rows (the last one filled with empty rows). Longer prompts keep their last
  ``max_prompt_length`` tokens (the most recent context). An empty text is continued from ``<|endoftext|>``
  (GPT-2's document separator, what OpenAI's unconditional samples start from).
- The Keras model is not tracked as an object of the SavedModel (Keras would trace a float serving signature for
  it), only its variables: the signatures capture them as resources, not constants.
"""

from __future__ import annotations

import os

import tensorflow as tf

from ..common.decoding import SMALLEST_BUCKET, eos_ids, merge_settings, plan
from .tokenizer import TFGPT2Tokenizer


def prompt_buckets(max_prompt_length: int) -> list[int]:
    """The prompt widths compiled for: powers of two from SMALLEST_BUCKET below ``max_prompt_length``, then it."""
    buckets, b = [], SMALLEST_BUCKET
    while b < max_prompt_length:
        buckets.append(b)
        b *= 2
    return buckets + [max_prompt_length]


def _positive_int(name: str, value) -> int:
    if type(value) is not int or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return value


class TextGenerationModule(tf.Module):
    """The tf.Module that ``export_text_generation`` saves; usable in-process too (its functions are traced graphs).

    - ``generate(texts)`` (or ``generate(texts, seed)`` when sampling): texts (B,) tf.string ->
      ``generated_text`` (B,) (the continuation, up to and without the first eos), ``text`` (B,) (the prompt as the
      model read it -- after left truncation -- then the continuation), ``generated_ids`` (B, max_new_tokens) int32
      (padded with the pad id after each row's end), ``generated_length`` (B,) and ``prompt_length`` (B,) int32.
    - ``score(texts)``: texts (B,) -> ``log_likelihood`` (B,) float32 (the sum over the text's tokens of log p(token |
      the tokens before it), with ``<|endoftext|>`` as the context of the first, as GPT-2 reads a document),
      ``mean_log_likelihood`` (B,) (per token; 0 for an empty text), ``num_tokens`` (B,) int32 and
      ``token_log_probs`` (B, T) float32 (0 after each row's end). A text of more than n_positions - 1 tokens is an
      InvalidArgumentError (scoring a truncated text would answer another question).

    ``generation_options``: GenerationConfig fields for model.generate (greedy by default; ``do_sample=True`` with
    ``temperature``, ``top_k``, ``top_p``, ... adds a ``seed`` input; ``repetition_penalty``, ``min_new_tokens``,
    ``eos_token_id``, ``pad_token_id``, ...). ``num_return_sequences`` and ``num_beams`` other than 1 are refused:
    a signature maps each text to one text.
    """

    def __init__(self, model, tokenizer: TFGPT2Tokenizer, *, max_new_tokens: int, max_prompt_length: int | None = None,
                 batch_size: int = 1, **generation_options):
        super().__init__(name="gpt2_text_generation")
        if not hasattr(model, "lm_head") or not hasattr(model, "generate"):
            raise TypeError(f"export_text_generation needs a language model (TFGPT2LMHeadModel), got "
                            f"{type(model).__name__}")
        if not isinstance(tokenizer, TFGPT2Tokenizer):
            raise TypeError(f"export_text_generation needs a TFGPT2Tokenizer (strings in the graph), got "
                            f"{type(tokenizer).__name__}")
        config = model.config
        if tokenizer.vocab_size > config.vocab_size:
            raise ValueError(f"the tokenizer has {tokenizer.vocab_size} ids, more than the model's vocab_size="
                             f"{config.vocab_size}")
        N = _positive_int("max_new_tokens", max_new_tokens)
        if max_prompt_length is None:
            max_prompt_length = min(64, config.n_positions - N)
        P = _positive_int("max_prompt_length", max_prompt_length)
        if P + N > config.n_positions:
            raise ValueError(f"max_prompt_length={P} + max_new_tokens={N} is more than the model's n_positions="
                             f"{config.n_positions}")
        self.batch_size = _positive_int("batch_size", batch_size)
        for name in ("num_return_sequences", "num_beams"):
            if generation_options.get(name, 1) != 1:
                raise ValueError(f"{name}={generation_options[name]!r}: a text signature maps each text to one text "
                                 f"(call generate() once per beam or sample, with a seed, instead)")
        for name in ("max_length", "max_new_tokens"):
            if name in generation_options:
                raise ValueError(f"{name} in generation_options: give max_new_tokens= (and max_prompt_length=)")
        cfg = merge_settings(model.generation_config, None, **generation_options)
        if cfg.pad_token_id is None and eos_ids(cfg):  # GPT-2 has no pad: eos (transformers' rule, said once here)
            generation_options = {**generation_options, "pad_token_id": eos_ids(cfg)[0]}
            cfg = merge_settings(model.generation_config, None, **generation_options)
        run = plan(cfg, input_length=P, max_positions=config.n_positions, vocab_size=config.vocab_size,
                   has_attention_mask=True)
        eos = list(run.eos)
        pad = run.pad if run.pad is not None else 0  # no eos and no pad: rows never finish, 0 pads the prompts
        start = eos[0] if eos else (cfg.bos_token_id if cfg.bos_token_id is not None else 0)
        self.max_new_tokens, self.max_prompt_length, self.buckets = N, P, prompt_buckets(P)
        self.pad_token_id, self.eos_token_ids, self.start_token_id = pad, eos, start
        self.do_sample = bool(cfg.do_sample)
        options = {**generation_options, "pad_token_id": pad, "max_new_tokens": N}
        # Tracked: the tokenizer (its lookup tables) and the model's variables, not the Keras model itself.
        self.tokenizer = tokenizer
        self.model_variables = list(model.variables)
        bs = self.batch_size

        def decode(ids, mask, seed):
            """(bs, bucket) left-padded prompts -> (bs, bucket + N): model.generate traced in this function."""
            return model.generate(ids, attention_mask=mask, seed=seed, **options)

        self._decoders = [tf.function(decode, jit_compile=True, input_signature=[
            tf.TensorSpec([bs, b], tf.int32), tf.TensorSpec([bs, b], tf.int32), tf.TensorSpec([2], tf.int64)])
            for b in self.buckets]
        self._model = _Untracked(model)
        texts = tf.TensorSpec([None], tf.string, name="texts")
        if self.do_sample:
            self.generate = tf.function(self._generate, input_signature=[texts, tf.TensorSpec([], tf.int64, "seed")])
        else:
            self.generate = tf.function(self._generate_greedy, input_signature=[texts])
        self.score = tf.function(self._score, input_signature=[texts])

    def signatures(self) -> dict:
        """The serving signatures: ``{"generate": ..., "score": ..., "serving_default": generate}``."""
        generate = self.generate.get_concrete_function()
        return {"generate": generate, "score": self.score.get_concrete_function(), "serving_default": generate}

    # -- generate ---------------------------------------------------------------------------------------------------
    def _generate_greedy(self, texts):
        return self._generate(texts, tf.constant(0, tf.int64))

    def _generate(self, texts, seed):
        bs, P, N, pad = self.batch_size, self.max_prompt_length, self.max_new_tokens, self.pad_token_id
        n = tf.size(texts)
        ids = tf.cast(self.tokenizer.tokenize(texts), tf.int32)[:, -P:]  # (B, None): the last P tokens
        prompt_length = tf.cast(ids.row_lengths(), tf.int32)
        # Empty rows, and the rows that fill the last chunk, start from <|endoftext|>.
        rows = (n + bs - 1) // bs * bs
        lengths = tf.concat([prompt_length, tf.zeros([rows - n], tf.int32)], 0)
        start = tf.RaggedTensor.from_row_lengths(tf.fill([tf.reduce_sum(tf.cast(lengths == 0, tf.int32))],
                                                         self.start_token_id), tf.cast(lengths == 0, tf.int64))
        filler = tf.RaggedTensor.from_row_lengths(tf.zeros([0], tf.int32), tf.zeros([rows - n], tf.int64))
        prompts = tf.concat([tf.concat([ids, filler], axis=0), start], axis=1)  # (rows, None), no row empty
        width = tf.cast(prompts.row_lengths(), tf.int32)
        right = prompts.to_tensor(pad, shape=[None, P])  # (rows, P)
        col = tf.range(P)[None, :] - (P - width)[:, None]  # left padding: row r's tokens in its last columns
        left = tf.where(col >= 0, tf.gather(right, tf.maximum(col, 0), batch_dims=1), pad)
        mask = tf.cast(col >= 0, tf.int32)
        chunks = rows // bs
        chunked = (tf.reshape(left, [chunks, bs, P]), tf.reshape(mask, [chunks, bs, P]),
                   tf.reshape(width, [chunks, bs]), tf.range(chunks, dtype=tf.int64))

        def one_chunk(chunk):
            ids, mask, width, index = chunk
            smaller = tf.constant(self.buckets[:-1], tf.int32) < tf.reduce_max(width)
            branch = tf.reduce_sum(tf.cast(smaller, tf.int32))  # the first bucket that holds every row
            key = tf.stack([index, seed])  # one noise stream per chunk (chunk 0: model.generate's seed=seed)

            def run(decoder, b):
                return lambda: decoder(ids[:, P - b:], mask[:, P - b:], key)[:, b:]  # (bs, N) the new tokens

            return tf.switch_case(branch, [run(d, b) for d, b in zip(self._decoders, self.buckets)])

        generated = tf.map_fn(one_chunk, chunked, fn_output_signature=tf.TensorSpec([bs, N], tf.int32))
        generated = tf.reshape(generated, [rows, N])[:n]  # (B, N)
        if self.eos_token_ids:  # a row ends at its first eos (not included)
            is_eos = tf.reduce_any(generated[:, :, None] == tf.constant(self.eos_token_ids, tf.int32), axis=-1)
            generated_length = tf.where(tf.reduce_any(is_eos, axis=1),
                                        tf.argmax(tf.cast(is_eos, tf.int32), axis=1, output_type=tf.int32), N)
        else:
            generated_length = tf.fill([n], N)
        keep = tf.range(N)[None, :] < generated_length[:, None]
        generated = tf.where(keep, generated, pad)
        new = tf.RaggedTensor.from_tensor(generated, lengths=generated_length)
        return {"generated_text": self.tokenizer.detokenize(new),
                "text": self.tokenizer.detokenize(tf.concat([ids, new], axis=1)),
                "generated_ids": generated, "generated_length": generated_length, "prompt_length": prompt_length}

    # -- score ------------------------------------------------------------------------------------------------------
    def _score(self, texts):
        model = self._model.value
        limit = model.config.n_positions
        ids = tf.cast(self.tokenizer.tokenize(texts), tf.int32)
        n_tokens = tf.cast(ids.row_lengths(), tf.int32)
        check = tf.debugging.assert_less(n_tokens, limit, message=f"score: a text has more than {limit - 1} tokens "
                                         f"(n_positions={limit}, one position holds <|endoftext|>)")
        start = tf.fill([tf.size(texts), 1], self.start_token_id)
        with tf.control_dependencies([check]):
            full = tf.concat([start, ids], axis=1)  # (B, 1 + T): <|endoftext|>, then the text
        dense = full.to_tensor(self.pad_token_id)  # right padding: positions 0.. as in one text alone
        mask = tf.sequence_mask(n_tokens + 1, tf.shape(dense)[1], tf.int32)
        logits = model(input_ids=dense, attention_mask=mask).logits[:, :-1]  # (B, T, V): predicts dense[:, 1:]
        log_probs = tf.nn.log_softmax(tf.cast(logits, tf.float32), axis=-1)
        target = tf.gather(log_probs, dense[:, 1:], batch_dims=2)  # (B, T) log p(x_t | x_<t)
        target = tf.where(mask[:, 1:] == 1, target, 0.0)
        total = tf.reduce_sum(target, axis=1)
        mean = total / tf.cast(tf.maximum(n_tokens, 1), tf.float32)
        return {"log_likelihood": total, "mean_log_likelihood": mean, "num_tokens": n_tokens,
                "token_log_probs": target}


class _Untracked:
    """Holds the Keras model out of tf.Module's tracking (Keras would add a float serving signature of its own)."""

    __slots__ = ("value",)

    def __init__(self, value):
        self.value = value


def export_text_generation(model, tokenizer: TFGPT2Tokenizer, path: str | os.PathLike, *, max_new_tokens: int,
                           max_prompt_length: int | None = None, batch_size: int = 1,
                           **generation_options) -> TextGenerationModule:
    """Write one SavedModel at ``path`` with the signatures ``generate`` (texts -> continuations; the default
    signature) and ``score`` (texts -> log-likelihoods); see TextGenerationModule for their inputs and outputs.

    ``max_new_tokens``: tokens generated per text (fewer when a row meets eos). ``max_prompt_length``: the longest
    prompt kept (its last tokens; default min(64, n_positions - max_new_tokens)); one XLA function per power-of-two
    bucket up to it, compiled at its first call after loading. ``batch_size``: rows per compiled call (a larger
    batch is run in chunks of it). ``generation_options``: model.generate's options (greedy by default).

    Reload with ``tf.saved_model.load(path)`` anywhere TensorFlow is installed (no gpt2, no Keras model code).
    Returns the module that was saved.
    """
    module = TextGenerationModule(model, tokenizer, max_new_tokens=max_new_tokens,
                                  max_prompt_length=max_prompt_length, batch_size=batch_size, **generation_options)
    tf.saved_model.save(module, os.fspath(path), signatures=module.signatures())
    return module


__all__ = ["TextGenerationModule", "export_text_generation", "prompt_buckets"]
