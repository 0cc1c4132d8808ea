"""The model shipped in the package (gpt2-tiny-kjv): its folder, its size, its name's resolution (a local folder
first, then the package, then the Hugging Face cache / hub; never a download). (Its logits and text in torch, tf and
flax: tests/cross/test_embedded_generate.py)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from safetensors import safe_open

from gpt2.common import embedded, hub
from gpt2.common.checkpoint import resolve_checkpoint
from gpt2.common.config import GPT2Config
from gpt2.common.tokenizer import GPT2Tokenizer
from gpt2.common.tokenizer_fast import GPT2TokenizerFast

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "gpt2" / "data"
NAME = embedded.NAME


@pytest.fixture(autouse=True)
def elsewhere(monkeypatch, tmp_path):
    """Run from an empty folder with an empty Hugging Face cache, and fail any download."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))

    def no_download(*args, **kwargs):
        raise AssertionError(f"the embedded model must resolve without the hub (asked for {args})")

    monkeypatch.setattr(hub, "_download", no_download)


def test_the_folder_is_a_complete_model_in_fp16():
    folder = embedded.folder(NAME)
    assert folder == embedded.FOLDER
    for name in ("config.json", "model.safetensors", "generation_config.json", "README.md", "vocab.json",
                 "merges.txt", "tokenizer_config.json"):
        assert (folder / name).is_file(), name
    with safe_open(folder / "model.safetensors", "np") as f:
        dtypes = {f.get_slice(k).get_dtype() for k in f.keys()}
        names = set(f.keys())
    assert dtypes == {"F16"}
    config = json.loads((folder / "config.json").read_text())
    assert config["vocab_size"] == 50257 and 4 <= config["n_layer"] <= 6 and 128 <= config["n_embd"] <= 256
    assert "transformer.wte.weight" in names and len([n for n in names if n.endswith("ln_1.weight")]) == \
        config["n_layer"]


def test_package_data_is_under_25_mb():
    total = sum(p.stat().st_size for p in DATA.rglob("*") if p.is_file())
    assert total < 25 * 2**20, f"gpt2/data holds {total / 2**20:.1f} MiB"


def test_the_card_names_data_license_training_and_perplexity():
    card = (embedded.FOLDER / "README.md").read_text()
    script = (ROOT / "scripts" / "train_embedded.py").read_text()
    text_sha = re.search(r'^TEXT_SHA256 = "([0-9a-f]{64})"', script, re.M).group(1)
    assert text_sha in card
    for needed in ("King James", "public domain", "bible-kjv-text", "Held-out perplexity", "scripts/train_embedded.py",
                   "fp16", "test fixture", "wall time"):
        assert needed in card, needed
    perplexity = float(re.search(r"Held-out perplexity\*\* \([\d,]+ tokens\): \*\*([\d.]+)\*\*", card).group(1))
    assert 1 < perplexity < 200  # a trained model (a random one: ~50,000)


def test_config_and_tokenizers_resolve_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    config = GPT2Config.from_pretrained(NAME)
    assert config.to_dict()["n_layer"] == json.loads((embedded.FOLDER / "config.json").read_text())["n_layer"]
    for cls in (GPT2Tokenizer, GPT2TokenizerFast):
        tokenizer = cls.from_pretrained(NAME)
        assert tokenizer.model_max_length == config.n_positions
        assert tokenizer("In the beginning God")["input_ids"] == cls.from_pretrained("gpt2")("In the beginning God")[
            "input_ids"]
    fmt, path = resolve_checkpoint(NAME)
    assert path == embedded.FOLDER / "model.safetensors"


def test_resolves_without_offline_mode_and_never_downloads(monkeypatch):
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    assert hub.resolve_file(NAME, "config.json") == embedded.FOLDER / "config.json"
    assert hub.resolve_file(NAME, "pytorch_model.bin") is None  # not there: missing, not looked up on the hub
    assert "shipped in the package" in hub.describe_lookup(NAME)


def test_a_local_folder_of_that_name_comes_first(tmp_path):
    local = tmp_path / NAME
    local.mkdir()
    GPT2Config(n_layer=1, n_embd=8, n_head=2, vocab_size=11, n_positions=7).save_pretrained(local)
    assert GPT2Config.from_pretrained(NAME).n_layer == 1
    assert hub.resolve_file(NAME, "model.safetensors") is None  # the local folder is authoritative


def test_only_the_exact_name_is_embedded():
    assert embedded.folder(Path(NAME)) is None  # a path is a path (no such folder here)
    assert embedded.folder(NAME.upper()) is None and embedded.folder(f"./{NAME}") is None
    with pytest.raises(FileNotFoundError):
        GPT2Config.from_pretrained(f"./{NAME}")
