"""tokenizer.json: folders holding only it load (both classes), and GPT2TokenizerFast.save_pretrained writes the
file transformers writes -- the same JSON, loadable by the tokenizers library with the same ids."""

from __future__ import annotations

import json

import pytest

from conftest import requires_transformers
from gpt2 import GPT2Tokenizer, GPT2TokenizerFast
from test_tokenizer import TEXTS, theirs

pytestmark = requires_transformers


def _hf_folder(tmp_path, **kwargs):
    tok = theirs("fast", **kwargs)
    tok.add_tokens(["<new>", " extra"])
    tok.add_special_tokens({"pad_token": "<pad>"})
    tok.save_pretrained(tmp_path)
    return tok


@pytest.mark.parametrize("cls", [GPT2Tokenizer, GPT2TokenizerFast])
def test_folder_with_only_tokenizer_json_loads(cls, tmp_path):
    tok = _hf_folder(tmp_path)
    for name in ("vocab.json", "merges.txt", "added_tokens.json"):
        (tmp_path / name).unlink()
    ours = cls.from_pretrained(tmp_path)
    texts = TEXTS + ["a <new> b<pad> extra"]
    assert [ours(t)["input_ids"] for t in texts] == [tok(t)["input_ids"] for t in texts]
    assert ours.pad_token == "<pad>" and ours.convert_tokens_to_ids("<new>") == 50257


def test_old_merges_as_strings_are_read(tmp_path):
    _hf_folder(tmp_path)
    data = json.loads((tmp_path / "tokenizer.json").read_text())
    data["model"]["merges"] = [" ".join(pair) for pair in data["model"]["merges"]]  # tokenizers < 0.20
    (tmp_path / "tokenizer.json").write_text(json.dumps(data))
    (tmp_path / "vocab.json").unlink()
    assert GPT2TokenizerFast.from_pretrained(tmp_path)("Hello world")["input_ids"] == [15496, 995]


@pytest.mark.parametrize("kwargs", [{}, {"add_bos_token": True, "add_prefix_space": True}])
def test_fast_writes_transformers_tokenizer_json(kwargs, tmp_path):
    from tokenizers import Tokenizer

    tok = _hf_folder(tmp_path / "theirs", **kwargs)
    ours = GPT2TokenizerFast.from_pretrained("gpt2", **kwargs)
    ours.add_tokens(["<new>", " extra"])
    ours.add_special_tokens({"pad_token": "<pad>"})
    ours.save_pretrained(tmp_path / "ours")
    assert json.loads((tmp_path / "ours" / "tokenizer.json").read_text()) == \
        json.loads((tmp_path / "theirs" / "tokenizer.json").read_text())
    rust = Tokenizer.from_file(str(tmp_path / "ours" / "tokenizer.json"))
    for text in TEXTS + ["a <new> b<pad> extra"]:
        assert rust.encode(text).ids == tok(text)["input_ids"] == ours(text)["input_ids"], text
    assert not (tmp_path / "slow").exists()
    GPT2Tokenizer.from_pretrained("gpt2").save_pretrained(tmp_path / "slow")
    assert not (tmp_path / "slow" / "tokenizer.json").exists()  # transformers' Python tokenizer writes none


@pytest.mark.parametrize("edit, match", [
    (lambda d: d["model"].update(type="WordPiece"), "not a BPE tokenizer"),
    (lambda d: d["model"].update(byte_fallback=True), "byte_fallback"),
    (lambda d: d.update(normalizer={"type": "NFC"}), "normalizer"),
    (lambda d: d["model"]["merges"].append(["zz", "qq"]), "merge 50000.*'zzqq' is not in"),
    (lambda d: d.update(pre_tokenizer={"type": "Metaspace"}), "pre_tokenizer 'Metaspace'"),
])
def test_bad_tokenizer_json(edit, match, tmp_path):
    _hf_folder(tmp_path)
    data = json.loads((tmp_path / "tokenizer.json").read_text())
    edit(data)
    (tmp_path / "tokenizer.json").write_text(json.dumps(data))
    (tmp_path / "merges.txt").unlink()
    with pytest.raises(ValueError, match=match):
        GPT2TokenizerFast.from_pretrained(tmp_path)
