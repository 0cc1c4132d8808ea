"""The call API of the tokenizers (``tokenizer(texts, ...)``, encode, encode_plus, batch_encode_plus, pad): turning
token ids into model inputs -- special tokens, pairs, truncation, overflow windows, padding, tensors -- as
transformers' tokenizers do. ``CallMixin`` is mixed into ``TokenizerBase`` (tokenizer.py), which supplies the ids
(``_encode_ids``, ``_encode_batch``) and the class attributes that tell transformers' two tokenizers apart.
"""

from __future__ import annotations

from .encoding import (BatchEncoding, overflow_tail, overflow_windows, pad_rows, padding_strategy, to_tensor,
                       truncate_pair, truncation_strategy)

_PLAIN_INPUTS = ["input_ids", "attention_mask"]  # model_input_names for which a plain call returns exactly these


class CallMixin:
    """tokenizer(...), encode, encode_plus, batch_encode_plus and pad, over ``self._encode_batch``."""

    def __call__(
        self,
        text: str | list[str] | list[list[str]],
        text_pair: str | list[str] | None = None,
        add_special_tokens: bool = True,
        padding: bool | str = False,
        truncation: bool | str | None = None,
        max_length: int | None = None,
        is_split_into_words: bool = False,
        pad_to_multiple_of: int | None = None,
        padding_side: str | None = None,
        return_tensors: str | None = None,
        return_token_type_ids: bool | None = None,
        return_attention_mask: bool | None = None,
        return_special_tokens_mask: bool = False,
        return_offsets_mapping: bool = False,
        return_length: bool = False,
        stride: int = 0,
        return_overflowing_tokens: bool = False,
        split_special_tokens: bool | None = None,
    ) -> BatchEncoding:
        """Tokenize one text or a batch (and optional pairs) into model inputs, as transformers' tokenizers do.

        ``return_overflowing_tokens`` with truncation: GPT2TokenizerFast returns every window of each text (windows
        overlap by ``stride`` tokens) as extra rows with ``overflow_to_sample_mapping``; GPT2Tokenizer returns the
        kept row with ``overflowing_tokens`` and ``num_truncated_tokens`` -- each as its transformers counterpart.
        ``split_special_tokens=True`` (default: the tokenizer's setting) reads special tokens in the text as plain
        text. A sequence longer than ``model_max_length`` with no truncation warns once per tokenizer.
        """
        split = self.split_special_tokens if split_special_tokens is None else self._split_special(split_special_tokens)
        # The plain call -- one str or a list of str, every option at a value that changes nothing -- skips the
        # general path below (~5 us a call: a tenth of encoding a 100-byte text) and gives exactly its output
        # (tests/common/test_tokenizer_plain.py). Each option is tested the way the general path reads it
        # (truthiness where it reads truthiness); any other value takes the general path, which validates it.
        if (text_pair is None and padding is False and truncation is None and max_length is None
                and return_tensors is None and return_attention_mask is None and not return_token_type_ids
                and not (return_special_tokens_mask or return_offsets_mapping or return_length
                         or return_overflowing_tokens or is_split_into_words)
                and padding_side is None and type(stride) is int and stride >= 0
                and not (add_special_tokens and self.add_bos_token) and self.model_input_names == _PLAIN_INPUTS):
            if type(text) is str:
                ids = self._plain_ids(text, split)
                if len(ids) > self.model_max_length:
                    self._warn_if_too_long(len(ids))
                out = BatchEncoding()
                out["input_ids"] = ids
                out["attention_mask"] = [1] * len(ids)
                return out
            if type(text) in (list, tuple) and all(type(t) is str for t in text):
                rows = self._plain_batch(list(text), split)
                if rows and max(map(len, rows)) > self.model_max_length:
                    self._warn_if_too_long(max(map(len, rows)))
                out = BatchEncoding()
                out["input_ids"] = rows
                out["attention_mask"] = [[1] * len(ids) for ids in rows]
                return out
        batched = isinstance(text, (list, tuple)) and (
            not is_split_into_words or (len(text) > 0 and isinstance(text[0], (list, tuple))))
        texts = list(text) if batched else [text]
        pairs = None
        if text_pair is not None:
            pairs = list(text_pair) if batched else [text_pair]
            if len(pairs) != len(texts):
                raise ValueError(f"got {len(texts)} texts but {len(pairs)} text_pair entries")
        if is_split_into_words:
            texts = [self._join_words(t) for t in texts]
            pairs = None if pairs is None else [self._join_words(t) for t in pairs]
        trunc = truncation_strategy(truncation)
        if trunc == "do_not_truncate" and truncation is None and max_length is not None and padding != "max_length":
            trunc = "longest_first"  # transformers: max_length alone implies truncation
        if max_length is None and (trunc != "do_not_truncate" or padding == "max_length"):
            max_length = self.model_max_length
        pad = padding_strategy(padding, max_length)
        side = padding_side or self.padding_side
        if side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {side!r}")
        if max_length is not None and (not isinstance(max_length, int) or max_length < 0):
            raise ValueError(f"max_length must be a non-negative integer, got {max_length!r}")
        if not isinstance(stride, int) or isinstance(stride, bool) or stride < 0:
            raise ValueError(f"stride must be a non-negative integer, got {stride!r}")
        if return_overflowing_tokens and not self._overflow_windows and trunc == "do_not_truncate":
            raise ValueError("return_overflowing_tokens needs truncation (and a max_length, or model_max_length) to "
                             "report what was cut")
        wants = {
            "token_type_ids": return_token_type_ids if return_token_type_ids is not None
            else "token_type_ids" in self.model_input_names,
            "attention_mask": return_attention_mask if return_attention_mask is not None
            else "attention_mask" in self.model_input_names,
            "special_tokens_mask": return_special_tokens_mask,
            "offset_mapping": return_offsets_mapping,
        }
        encoded = self._encode_batch(texts, return_offsets_mapping, split)
        encoded_pairs = self._encode_batch(pairs, return_offsets_mapping, split) if pairs is not None else None
        rows, mapping, tails = [], [], []
        for i, (ids, spans) in enumerate(encoded):
            pair_ids, pair_spans = encoded_pairs[i] if encoded_pairs is not None else (None, None)
            built, tail = self._build_rows(ids, spans, pair_ids, pair_spans, add_special_tokens, trunc, max_length,
                                           wants, stride, return_overflowing_tokens)
            rows += built
            mapping += [i] * len(built)
            tails.append(tail)
        lengths = [len(r["input_ids"]) for r in rows]
        if max_length is None and lengths:  # no truncation applies (nor padding to a length)
            self._warn_if_too_long(max(lengths))
        pad_rows(rows, pad, max_length, pad_to_multiple_of, side, self.pad_token_id)
        if self._length_counts_padding:
            lengths = [len(r["input_ids"]) for r in rows]
        out = BatchEncoding()
        # A single text gives flat lists, or tensors with a batch axis of 1 when tensors are asked for (and always a
        # batch when the windows of overflowing tokens are rows).
        windows = return_overflowing_tokens and self._overflow_windows
        keep_batch = batched or return_tensors is not None or windows
        if return_overflowing_tokens and not windows:
            overflowing = [t[0] for t in tails]
            out["overflowing_tokens"] = overflowing if batched else overflowing[0]
            out["num_truncated_tokens"] = [t[1] for t in tails] if batched else tails[0][1]
        for key in ("input_ids", *wants):
            if key == "input_ids" or wants[key]:
                values = [r[key] for r in rows]
                out[key] = values if keep_batch else values[0]
        if return_length:
            out["length"] = lengths if keep_batch or self._length_counts_padding else lengths[0]
        if windows:
            out["overflow_to_sample_mapping"] = mapping
        return out.convert_to_tensors(return_tensors)

    def _plain_ids(self, text: str, split: bool) -> list[int]:
        """The ids of one str for a plain call: the engine directly when the text holds no added token that could be
        recognised (with ``split``, only non-special ones can), else the general encoder."""
        if self.added.finders[not split](text) is None and not self.add_prefix_space:
            return self.bpe.encode_ordinary(text)
        return self._encode_text(text, split_special=split)[0]

    def _plain_batch(self, texts: list[str], split: bool) -> list[list[int]]:
        """``[self._plain_ids(t, split) for t in texts]``, with the per-text lookups hoisted out of the loop
        (GPT2TokenizerFast runs big batches of this on threads)."""
        if self.add_prefix_space:
            return [self._encode_text(t, split_special=split)[0] for t in texts]
        encode, find = self.bpe.encode_ordinary, self.added.finders[not split]
        return [encode(t) if find(t) is None else self._encode_text(t, split_special=split)[0] for t in texts]

    def _join_words(self, words) -> str:
        if not isinstance(words, (list, tuple)) or not all(isinstance(w, str) for w in words):
            raise TypeError("with is_split_into_words=True, each text must be a list of str")
        if not self.add_prefix_space:
            raise ValueError("is_split_into_words=True needs a tokenizer made with add_prefix_space=True")
        return " ".join(words)

    def _build_rows(self, ids, spans, pair_ids, pair_spans, add_special, trunc, max_length, wants, stride=0,
                    overflow=False) -> tuple[list[dict], tuple[list[int], int] | None]:
        """The rows of one input -- one, or one per window (``_overflow_windows`` and return_overflowing_tokens) --
        and, for the other style, its ``(overflowing_tokens, num_truncated_tokens)`` (else None)."""
        want_offsets = wants["offset_mapping"]
        bos = [self.bos_token_id] if (add_special and self.add_bos_token and self.bos_token_id is not None) else []
        windows = overflow and self._overflow_windows
        if not bos and pair_ids is None and not want_offsets and (trunc == "do_not_truncate" or max_length is None
                                                                   or len(ids) <= max_length):
            n = len(ids)  # the common case, kept cheap: one text, nothing to add or cut
            row = {"input_ids": ids, "attention_mask": [1] * n}
            if wants["token_type_ids"]:
                row["token_type_ids"] = [0] * n
            if wants["special_tokens_mask"]:
                row["special_tokens_mask"] = [0] * n
            return [row], (([], n - max_length) if overflow and not windows else None)
        mid = bos if self._bos_before_pair else []
        n_special = len(bos) + (len(mid) if pair_ids is not None else 0)
        first = list(zip(ids, spans)) if want_offsets else ids
        second = None if pair_ids is None else (list(zip(pair_ids, pair_spans)) if want_offsets else pair_ids)
        pieces, tail = [(first, second)], None
        if max_length is not None and trunc != "do_not_truncate":
            budget = max(max_length - n_special, 0)
            if windows or (self._overflow_windows and stride):
                pieces = overflow_windows(first, second, budget, trunc, self.truncation_side, stride,
                                          self._balanced_truncation)
                pieces = pieces if windows else pieces[:1]
            else:
                if overflow:
                    cut = overflow_tail(first, second, budget, trunc, self.truncation_side, stride)
                    total = len(ids) + len(pair_ids or []) + n_special
                    tail = ([t[0] for t in cut] if want_offsets else cut, total - max_length)
                pieces = [truncate_pair(first, second, budget, trunc, self.truncation_side,
                                        self._balanced_truncation)]
        return [self._assemble(a, b if pair_ids is not None else None, bos, mid, want_offsets)
                for a, b in pieces], tail

    @staticmethod
    def _assemble(first, second, bos, mid, want_offsets) -> dict:
        """One row from the (truncated) pieces: bos, the first sequence, [bos,] the second."""
        if want_offsets:
            ids, spans = [i for i, _ in first], [s for _, s in first]
            pair_ids = None if second is None else [i for i, _ in second]
            pair_spans = None if second is None else [s for _, s in second]
        else:
            ids, pair_ids = first, second
        row = {"input_ids": bos + ids, "token_type_ids": [0] * (len(bos) + len(ids)),
               "special_tokens_mask": [1] * len(bos) + [0] * len(ids)}
        if want_offsets:
            row["offset_mapping"] = [(0, 0)] * len(bos) + spans
        if pair_ids is not None:
            row["input_ids"] = row["input_ids"] + mid + pair_ids
            row["token_type_ids"] += [1] * (len(mid) + len(pair_ids))
            row["special_tokens_mask"] += [1] * len(mid) + [0] * len(pair_ids)
            if want_offsets:
                row["offset_mapping"] += [(0, 0)] * len(mid) + pair_spans
        row["attention_mask"] = [1] * len(row["input_ids"])
        return row

    def encode(self, text, text_pair=None, add_special_tokens: bool = True, padding=False, truncation=None,
               max_length: int | None = None, return_tensors: str | None = None, **kwargs) -> list[int]:
        """The ids of one text (a list, or a tensor when ``return_tensors`` is given)."""
        if (type(text) is str and text_pair is None and padding is False and truncation is None and max_length is None
                and return_tensors is None and not kwargs and not (add_special_tokens and self.add_bos_token)):
            ids = self._plain_ids(text, self.split_special_tokens)  # the plain call: see __call__
            if len(ids) > self.model_max_length:
                self._warn_if_too_long(len(ids))
            return ids
        if isinstance(text, (list, tuple)) and not kwargs.get("is_split_into_words"):
            raise TypeError("encode takes one text; call the tokenizer on a list for a batch")
        if (text_pair is None and not padding and max_length is None and truncation in (None, False)
                and return_tensors is None and not (set(kwargs) - {"split_special_tokens"})
                and not (add_special_tokens and self.add_bos_token)):
            ids = self._encode_ids(text, self._split_special(kwargs.get("split_special_tokens")))
            self._warn_if_too_long(len(ids))
            return ids  # the plain case, without building a BatchEncoding
        out = self(text, text_pair, add_special_tokens=add_special_tokens, padding=padding, truncation=truncation,
                   max_length=max_length, **kwargs)["input_ids"]
        return to_tensor([out], return_tensors) if return_tensors is not None else out

    def encode_plus(self, text, text_pair=None, **kwargs) -> BatchEncoding:
        return self(text, text_pair, **kwargs)

    def batch_encode_plus(self, batch_text_or_text_pairs, **kwargs) -> BatchEncoding:
        items = list(batch_text_or_text_pairs)
        if items and isinstance(items[0], tuple):
            return self([a for a, _ in items], [b for _, b in items], **kwargs)
        return self(items, **kwargs)

    def pad(self, encoded_inputs, padding=True, max_length: int | None = None, pad_to_multiple_of: int | None = None,
            padding_side: str | None = None, return_attention_mask: bool | None = None,
            return_tensors: str | None = None) -> BatchEncoding:
        """Pad already-encoded inputs (a dict of lists, or a list of dicts), as data collators do."""
        if isinstance(encoded_inputs, (list, tuple)):
            rows = [{k: list(v) for k, v in e.items()} for e in encoded_inputs]
        else:
            keys = list(encoded_inputs)
            n = len(encoded_inputs["input_ids"])
            rows = [{k: list(encoded_inputs[k][i]) for k in keys} for i in range(n)]
        for row in rows:
            if return_attention_mask is not False:
                row.setdefault("attention_mask", [1] * len(row["input_ids"]))
        pad_rows(rows, padding_strategy(padding, max_length), max_length, pad_to_multiple_of,
                 padding_side or self.padding_side, self.pad_token_id)
        out = BatchEncoding({k: [r[k] for r in rows] for k in (rows[0] if rows else {})})
        return out.convert_to_tensors(return_tensors)
