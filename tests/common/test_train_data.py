"""Training data (gpt2.common.data): the token file, its reuse, bad files, blocks, the split and the batches."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from gpt2.common import data
from gpt2.common.data import (Batches, Blocks, TokenFile, check_block_size, check_divides, eval_batches, prepare,
                              split_blocks)
from gpt2.common.tokenizer_fast import GPT2TokenizerFast

GENESIS = Path(__file__).resolve().parent.parent / "data" / "genesis.txt"
EOT = 50256


@pytest.fixture(scope="module")
def tokenizer():
    return GPT2TokenizerFast()


@pytest.fixture
def corpus(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # never the user's cache
    path = tmp_path / "genesis.txt"
    shutil.copy(GENESIS, path)
    return path


def ids(tokenizer, text):
    return tokenizer(text, add_special_tokens=False)["input_ids"]


# -- the token file ----------------------------------------------------------------------------------------------------
def test_made_once_then_reused(corpus, tokenizer):
    first = prepare(corpus, progress=False)
    assert first.made and first.path == corpus.with_name("genesis.txt.gpt2-tokens")
    assert isinstance(first.tokens, np.memmap) and first.tokens.dtype == np.uint16
    assert list(first.tokens) == ids(tokenizer, corpus.read_text()) + [EOT]
    assert len(first) == first.meta["count"] == len(first.tokens)
    entry = first.meta["files"][0]
    assert entry["path"] == "genesis.txt" and entry["size"] == corpus.stat().st_size and len(entry["sha256"]) == 64
    assert first.meta["tokenizer"]["size"] == 50257 and first.meta["tokenizer"]["class"] == "GPT2TokenizerFast"
    second = prepare(corpus, progress=False)
    assert not second.made and np.array_equal(second.tokens, first.tokens)
    os.utime(corpus, ns=(1, 1))  # touched, same bytes: the hash says unchanged
    assert not prepare(corpus, progress=False).made
    # the token file itself (or its JSON) is accepted as data
    assert not prepare(first.path).made and len(prepare(first.meta_path)) == len(first)


def test_remade_when_the_source_changes(corpus, tokenizer):
    before = prepare(corpus, progress=False)
    text = corpus.read_text().replace("God", "Gad")  # same size, other bytes
    corpus.write_text(text)
    os.utime(corpus, ns=(5, 5))
    after = prepare(corpus, progress=False)
    assert after.made and list(after.tokens) == ids(tokenizer, text) + [EOT]
    assert after.meta["files"][0]["sha256"] != before.meta["files"][0]["sha256"]
    corpus.write_text("In the beginning.\n")  # another size
    assert list(prepare(corpus, progress=False).tokens) == ids(tokenizer, "In the beginning.\n") + [EOT]


def test_remade_for_another_tokenizer(corpus, tokenizer):
    prepare(corpus, progress=False)
    other = GPT2TokenizerFast()
    other.add_tokens(["Abram"])
    again = prepare(corpus, tokenizer=other, progress=False)
    assert again.made and again.max_id == len(other) - 1


def test_chunked_reading_gives_the_ids_of_the_whole_text(tmp_path, tokenizer, monkeypatch):
    monkeypatch.setattr(data, "_CHUNK_CHARS", 300)   # many cuts ...
    monkeypatch.setattr(data, "_READ_BYTES", 97)     # ... and reads that split UTF-8 sequences
    tricky = ("Ge1:1 In the beginning.\n  \nAnd   \n\n\n x\n'll\n's \n\t\nNaïve café — ünïcode 😀\n" * 40 +
              "last line without newline")
    path = tmp_path / "tricky.txt"
    path.write_text(GENESIS.read_text()[:20000] + tricky, encoding="utf-8")
    made = prepare(path, progress=False, cache_dir=tmp_path / "cache")
    assert list(made.tokens) == ids(tokenizer, path.read_text(encoding="utf-8")) + [EOT]


def test_folder_documents_bom_and_separators(tmp_path, tokenizer):
    folder = tmp_path / "corpus"
    (folder / "sub").mkdir(parents=True)
    (folder / "b.txt").write_text("second document")
    (folder / "a.txt").write_bytes("\ufefffirst<|endoftext|>one more".encode())  # BOM dropped, separator kept
    (folder / "sub" / "c.txt").write_text("third")
    (folder / "notes.md").write_text("not text data")
    made = prepare(folder, progress=False)
    assert made.path == folder / "gpt2-tokens"
    expected = (ids(tokenizer, "first") + [EOT] + ids(tokenizer, "one more") + [EOT]
                + ids(tokenizer, "second document") + [EOT] + ids(tokenizer, "third") + [EOT])
    assert list(made.tokens) == expected
    assert [f["path"] for f in made.meta["files"]] == ["a.txt", "b.txt", "sub/c.txt"]
    assert not prepare(folder, progress=False).made  # its own token file is not read as a source
    (folder / "d.txt").write_text("a new file")
    assert prepare(folder, progress=False).made


def test_read_only_source_goes_to_the_cache(corpus, tmp_path, monkeypatch):
    real = data._make

    def refuse_beside(place, *args):  # the process runs as root in CI: chmod would not stop it
        if place.parent == corpus.parent:
            raise PermissionError(13, "Permission denied", str(place))
        return real(place, *args)

    monkeypatch.setattr(data, "_make", refuse_beside)
    made = prepare(corpus, progress=False, cache_dir=tmp_path / "tokcache")
    assert made.made and (tmp_path / "tokcache") in made.path.parents
    assert not corpus.with_name("genesis.txt.gpt2-tokens").exists()
    assert not prepare(corpus, progress=False, cache_dir=tmp_path / "tokcache").made  # found there next time


@pytest.mark.parametrize("content, message", [
    (b"", "empty"),
    (b" \n\t\n", "empty"),
    (b"good text\n" * 3 + b"caf\xe9 au lait", "byte offset 33"),
    (b"ok \xf0\x9f\x98", "byte offset 3"),            # a sequence cut short at the end
    (b"\xff", "byte offset 0"),
])
def test_bad_files(tmp_path, content, message):
    path = tmp_path / "bad.txt"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=message) as info:
        prepare(path, progress=False)
    assert "bad.txt" in str(info.value)
    assert not list(tmp_path.glob("*gpt2-tokens*"))  # nothing half-made left behind


def test_bad_offset_past_a_read_boundary(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "_READ_BYTES", 7)
    path = tmp_path / "bad.txt"
    path.write_bytes("é".encode() * 10 + b"\x80" + b"tail")
    with pytest.raises(ValueError, match="byte offset 20"):
        prepare(path, progress=False)


def test_missing_and_empty_folders(tmp_path):
    with pytest.raises(FileNotFoundError, match="no training data"):
        prepare(tmp_path / "nope.txt")
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "x.csv").write_text("a,b")
    with pytest.raises(FileNotFoundError, match="no .txt files"):
        prepare(tmp_path / "folder")


def test_damaged_token_file(corpus):
    made = prepare(corpus, progress=False)
    with open(made.path, "ab") as f:
        f.write(b"\0")
    with pytest.raises(ValueError, match="damaged"):
        TokenFile(made.path)
    assert prepare(corpus, progress=False).made  # prepare from the text remakes it
    made.meta_path.write_text(json.dumps({"format": "something else"}))
    with pytest.raises(ValueError, match="not a gpt2-tokens"):
        prepare(made.path)


def test_vocab_check(corpus):
    made = prepare(corpus, progress=False)
    made.check_vocab(50257)
    with pytest.raises(ValueError, match="past the model's vocab_size 1000"):
        made.check_vocab(1000)


# -- blocks, split, batches --------------------------------------------------------------------------------------------
TOKENS = np.arange(1000, dtype=np.uint16)  # token i at position i: rows tell which block they are


def test_blocks_are_packed_and_not_overlapping():
    blocks = Blocks(TOKENS, 32)
    assert len(blocks) == 1000 // 32
    rows = blocks.rows([0, 1, 30])
    assert rows.dtype == np.int32 and rows.shape == (3, 32)
    assert rows[1].tolist() == list(range(32, 64)) and rows[2][-1] == 30 * 32 + 31


def test_split_is_seeded_and_disjoint():
    train, val = split_blocks(TOKENS, 10, seed=3, val_fraction=0.1, min_val_blocks=4)
    assert len(val) == 10 and len(train) == 90
    assert not set(train.index) & set(val.index) and set(train.index) | set(val.index) == set(range(100))
    again, _ = split_blocks(TOKENS, 10, seed=3, val_fraction=0.1)
    assert np.array_equal(train.index, again.index)
    other, _ = split_blocks(TOKENS, 10, seed=4, val_fraction=0.1)
    assert not np.array_equal(train.index, other.index)
    _, big = split_blocks(TOKENS, 10, seed=3, val_fraction=0.01, min_val_blocks=8)
    assert len(big) == 8
    # with validation data, all of each
    t, v = split_blocks(TOKENS, 10, val_tokens=TOKENS[:200])
    assert len(t) == 100 and len(v) == 20
    with pytest.raises(ValueError, match="too few"):
        split_blocks(TOKENS[:20], 10, val_fraction=0.5, min_val_blocks=2)


def test_batches_are_a_function_of_the_step():
    train, val = split_blocks(TOKENS, 8, seed=0)
    a = Batches(train, batch_size=4, grad_accum=2, seed=7)
    b = Batches(train, batch_size=4, grad_accum=2, seed=7)
    steps = [a.global_batch(s) for s in range(40)]
    assert steps[0].shape == (2, 4, 8) and steps[0].dtype == np.int32
    # resume: a fresh object asked for step s gives the same batch, in any order of asking
    for s in (39, 17, 0, 25):
        assert np.array_equal(b.global_batch(s), steps[s])
    assert not np.array_equal(Batches(train, batch_size=4, grad_accum=2, seed=8).global_batch(0), steps[0])
    # an epoch visits every training block once, never a validation block
    per_epoch = len(train)
    rows = np.concatenate([x.reshape(-1, 8) for x in steps])[:per_epoch]
    starts = rows[:, 0] // 8
    assert sorted(starts.tolist()) == sorted(train.index.tolist())
    assert not set(starts.tolist()) & set(val.index.tolist())
    assert a.position(3) == {"step": 3, "epoch": 0, "block_in_epoch": 24, "rows_seen": 24,
                             "epochs_done": 24 / per_epoch}


def test_epochs_follow_seeded_permutations():
    blocks = Blocks(TOKENS, 100)  # 10 blocks
    batches = Batches(blocks, batch_size=5, seed=1)
    order = [r[0] // 100 for s in range(4) for r in batches.global_batch(s)[0]]
    assert order[:10] == np.random.default_rng([1, 0]).permutation(10).tolist()
    assert order[10:] == np.random.default_rng([1, 1]).permutation(10).tolist()
    straddle = Batches(blocks, batch_size=3, seed=1)  # steps cross epoch boundaries
    flat = [r[0] // 100 for s in range(10) for r in straddle.global_batch(s)[0]]
    assert flat[:20] == order[:20]


@pytest.mark.parametrize("world", [1, 2, 4])
def test_ranks_partition_the_global_batch(world):
    train, _ = split_blocks(TOKENS, 8, seed=0)
    batches = Batches(train, batch_size=8, grad_accum=3, seed=2, world=world)
    for step in (0, 5, 31):
        whole = batches.global_batch(step)
        parts = [batches.batch(step, rank) for rank in range(world)]
        assert all(p.shape == (3, 8 // world, 8) for p in parts)
        assert np.array_equal(np.concatenate(parts, axis=1), whole)
    single = Batches(train, batch_size=8, grad_accum=3, seed=2)
    assert np.array_equal(single.global_batch(5), batches.global_batch(5))  # world does not change the data


def test_refusals():
    train, _ = split_blocks(TOKENS, 8, seed=0)
    with pytest.raises(ValueError, match="does not divide over 3 processes"):
        Batches(train, batch_size=8, world=3)
    with pytest.raises(ValueError, match="does not divide over 3 devices"):
        check_divides(8, 3)
    with pytest.raises(ValueError, match="above the model's n_positions 64"):
        check_block_size(128, 64)
    with pytest.raises(ValueError, match="rank must be"):
        Batches(train, batch_size=8, world=2).batch(0, rank=2)
    with pytest.raises(ValueError, match="step must be"):
        Batches(train, batch_size=8).batch(-1)
    with pytest.raises(ValueError, match="fewer than one block"):
        Blocks(TOKENS[:5], 8)
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        Batches(train, batch_size=0)


def test_eval_batches_fixed_and_sharded():
    _, val = split_blocks(TOKENS, 8, seed=0, val_fraction=0.2)
    full = list(eval_batches(val, 4))
    assert len(full) == len(val) // 4 and all(b.shape == (4, 8) for b in full)
    assert [b.tolist() for b in eval_batches(val, 4)] == [b.tolist() for b in full]
    assert len(list(eval_batches(val, 4, max_batches=2))) == 2
    halves = [list(eval_batches(val, 4, rank=r, world=2)) for r in range(2)]
    assert all(np.array_equal(np.concatenate([halves[0][i], halves[1][i]]), full[i]) for i in range(len(full)))
    with pytest.raises(ValueError, match="fewer than one batch"):
        list(eval_batches(val, 1000))


def test_a_real_text_prepared_end_to_end(corpus):
    made = prepare(corpus, progress=False)
    train, val = split_blocks(made, 32, seed=0, min_val_blocks=8)
    batches = Batches(train, batch_size=8, seed=0)
    x = batches.batch(0)
    assert x.shape == (1, 8, 32) and x.max() < 50257 and len(val) >= 8


def test_preparing_at_once_from_several_workers(tmp_path, tokenizer):
    from concurrent.futures import ThreadPoolExecutor

    path = tmp_path / "shared.txt"
    path.write_text(GENESIS.read_text()[:5000])
    with ThreadPoolExecutor(4) as pool:
        made = list(pool.map(lambda _: prepare(path, tokenizer=tokenizer, progress=False), range(8)))
    assert all(np.array_equal(m.tokens, made[0].tokens) for m in made)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shared.txt", "shared.txt.gpt2-tokens",
                                                          "shared.txt.gpt2-tokens.json"]
