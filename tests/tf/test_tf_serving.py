"""Text-in / text-out SavedModels (gpt2/tf/serving.py): exported once per module, reloaded in a FRESH Python process
that has TensorFlow but cannot import this package (an import hook refuses ``gpt2``), and compared there with what
the Python side gives: ``model.generate`` + GPT2TokenizerFast.decode for generation, the eager model's
log-softmax for scoring.

The model is tiny but has GPT-2's vocabulary (the real tokenizer's ids), random weights with initializer_range=0.4
(peaked next-token distributions: greedy compares decisions, not float ties). One export (two prompt buckets,
chunks of two rows) serves every generation case; the fresh process prints its load and first-call times (XLA
compiles at the first call after loading).
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from conftest import requires_tf

pytestmark = requires_tf
tf = pytest.importorskip("tensorflow")

EOS = 50256
NEW, PROMPT, BATCH = 6, 16, 2  # max_new_tokens, max_prompt_length (buckets 8 and 16), rows per compiled call
CONFIG = dict(n_layer=2, n_embd=16, n_head=2, n_positions=40, initializer_range=0.4)
TEXTS = [
    "Hello world",
    "",  # continued from <|endoftext|>
    "The quick brown fox jumps over the lazy dog, again and again and again.",  # > 8 tokens: the 16 bucket
    "a",
    "日本語のテキスト 😀 and\n\nnewlines  ",
    "word " * 400,  # 400 tokens: its last 16 are the prompt
    "<|endoftext|>",
]

# Runs in a fresh interpreter (-I: no user site, no PYTHONPATH, the working directory not on sys.path) where
# importing gpt2 fails: the SavedModel must stand on TensorFlow alone.
FRESH = textwrap.dedent("""
    import json, sys, time

    class NoGPT2:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] == "gpt2":
                raise ImportError("gpt2 is not importable in the serving process")

    sys.meta_path.insert(0, NoGPT2())
    import tensorflow as tf

    path, texts = sys.argv[1], json.loads(sys.argv[2])
    t = time.perf_counter()
    served = tf.saved_model.load(path)
    load_s = time.perf_counter() - t
    generate, score = served.signatures["generate"], served.signatures["score"]
    t = time.perf_counter()
    out = generate(texts=tf.constant(texts))
    first_s = time.perf_counter() - t
    t = time.perf_counter()
    again = generate(texts=tf.constant(texts))
    second_s = time.perf_counter() - t
    scored = score(texts=tf.constant(texts[:5]))  # the texts that fit n_positions
    empty = generate(texts=tf.constant([], tf.string))
    print(json.dumps({
        "generated_text": [s.decode("utf-8") for s in out["generated_text"].numpy()],
        "text": [s.decode("utf-8") for s in out["text"].numpy()],
        "generated_ids": out["generated_ids"].numpy().tolist(),
        "generated_length": out["generated_length"].numpy().tolist(),
        "prompt_length": out["prompt_length"].numpy().tolist(),
        "same_again": bool((again["generated_ids"].numpy() == out["generated_ids"].numpy()).all()),
        "log_likelihood": scored["log_likelihood"].numpy().tolist(),
        "mean_log_likelihood": scored["mean_log_likelihood"].numpy().tolist(),
        "num_tokens": scored["num_tokens"].numpy().tolist(),
        "empty_batch": list(empty["generated_text"].shape),
        "signatures": sorted(served.signatures),
        "variables": len(served.model_variables),
        "gpt2_imported": any(m.split(".")[0] == "gpt2" for m in sys.modules),
        "load_s": load_s, "first_call_s": first_s, "second_call_s": second_s,
    }))
""")


@pytest.fixture(scope="module")
def python_tokenizer():
    from gpt2 import GPT2TokenizerFast

    return GPT2TokenizerFast.from_pretrained("gpt2")


@pytest.fixture(scope="module")
def tf_tokenizer():
    from gpt2.tf import TFGPT2Tokenizer

    return TFGPT2Tokenizer.from_pretrained("gpt2")


@pytest.fixture(scope="module")
def model():
    import keras

    from gpt2.common.config import GPT2Config
    from gpt2.tf import TFGPT2LMHeadModel

    keras.utils.set_random_seed(0)
    model = TFGPT2LMHeadModel(GPT2Config(**CONFIG))
    model(input_ids=tf.constant([[1, 2]]))
    return model


@pytest.fixture(scope="module")
def exported(model, tf_tokenizer, tmp_path_factory):
    from gpt2.tf.serving import export_text_generation

    path = tmp_path_factory.mktemp("served") / "gpt2_text"
    module = export_text_generation(model, tf_tokenizer, path, max_new_tokens=NEW, max_prompt_length=PROMPT,
                                    batch_size=BATCH)
    return path, module


@pytest.fixture(scope="module")
def fresh(exported, tmp_path_factory):
    """The SavedModel's answers from a fresh process without gpt2 (and its timings)."""
    path, _ = exported
    t = time.perf_counter()
    done = subprocess.run([sys.executable, "-I", "-c", FRESH, str(path), json.dumps(TEXTS)], capture_output=True,
                          text=True, cwd=tmp_path_factory.mktemp("elsewhere"), timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["process_s"] = time.perf_counter() - t
    print(f"\nfresh process: load {result['load_s']:.2f} s, first generate call {result['first_call_s']:.2f} s "
          f"(XLA compiles both prompt buckets), second {result['second_call_s']:.3f} s, whole process "
          f"{result['process_s']:.1f} s")
    return result


def reference(model, python_tokenizer, text: str) -> tuple[list[int], list[int]]:
    """(prompt ids as the SavedModel reads them, new ids up to the first eos) from model.generate in Python."""
    prompt = python_tokenizer(text)["input_ids"][-PROMPT:]
    start = prompt or [EOS]
    out = model.generate(tf.constant([start]), max_new_tokens=NEW, pad_token_id=EOS).numpy()[0, len(start):]
    new = out.tolist()
    return prompt, new[:new.index(EOS)] if EOS in new else new


def test_fresh_process_without_gpt2_gives_model_generate_text(fresh, model, python_tokenizer):
    assert not fresh["gpt2_imported"]
    assert fresh["signatures"] == ["generate", "score", "serving_default"]
    assert fresh["variables"] == len(model.variables)  # the weights travel as variables
    for i, text in enumerate(TEXTS):
        prompt, new = reference(model, python_tokenizer, text)
        assert fresh["prompt_length"][i] == len(prompt)
        assert fresh["generated_length"][i] == len(new)
        assert fresh["generated_ids"][i][:len(new)] == new, text
        assert fresh["generated_ids"][i][len(new):] == [EOS] * (NEW - len(new))
        assert fresh["generated_text"][i] == python_tokenizer.decode(new), text
        assert fresh["text"][i] == python_tokenizer.decode(prompt + new), text
    assert fresh["same_again"]
    assert fresh["empty_batch"] == [0]


def test_fresh_process_scores_are_the_model_log_likelihood(fresh, model, python_tokenizer):
    for i, text in enumerate(TEXTS[:5]):  # the scored texts fit n_positions
        ids = [EOS] + python_tokenizer(text)["input_ids"]
        logits = model(input_ids=tf.constant([ids])).logits.numpy()[0, :-1].astype(np.float64)
        top = logits.max(-1, keepdims=True)
        logp = logits - top - np.log(np.exp(logits - top).sum(-1, keepdims=True))  # log-softmax, float64
        want = logp[np.arange(len(ids) - 1), ids[1:]]
        assert fresh["num_tokens"][i] == len(ids) - 1
        assert fresh["log_likelihood"][i] == pytest.approx(want.sum(), abs=1e-4)
        assert fresh["mean_log_likelihood"][i] == pytest.approx(want.mean() if want.size else 0.0, abs=1e-4)


def test_saved_decode_loop_is_xla_and_strings_stay_outside(exported):
    path, _ = exported
    graph = (path / "saved_model.pb").read_bytes()
    assert b"_XlaMustCompile" in graph  # the decode loop: compiled by XLA at its first call
    assert b"StringSplit" in graph or b"RegexReplace" in graph  # the tokenizer: plain graph ops around it


def test_in_process_module_matches_and_chunks(exported, model, python_tokenizer):
    """The module itself (no reload): a batch of 5 runs as 3 chunks of 2; rows do not depend on their chunk."""
    _, module = exported
    texts = ["a", "Hello world", "", "a", "Hello world"]
    out = module.generate(tf.constant(texts))
    ids = out["generated_ids"].numpy()
    np.testing.assert_array_equal(ids[0], ids[3])
    np.testing.assert_array_equal(ids[1], ids[4])
    for i, text in enumerate(texts):
        _, new = reference(model, python_tokenizer, text)
        assert ids[i, :len(new)].tolist() == new


def test_score_refuses_texts_longer_than_the_positions(exported):
    _, module = exported
    with pytest.raises(tf.errors.InvalidArgumentError, match="more than 39 tokens"):
        module.score(tf.constant(["word " * 50]))


def test_sampling_takes_a_seed_and_is_model_generate_for_one_row(model, tf_tokenizer, python_tokenizer):
    """do_sample=True adds a ``seed`` input; one row in its first chunk and bucket draws what
    model.generate(seed=...) draws (the same noise stream: seed and step)."""
    from gpt2.tf.serving import TextGenerationModule

    module = TextGenerationModule(model, tf_tokenizer, max_new_tokens=NEW, max_prompt_length=8, batch_size=1,
                                  do_sample=True, top_k=20)
    texts = tf.constant(["Hello world"])
    a = module.generate(texts, tf.constant(7, tf.int64))["generated_ids"].numpy()
    b = module.generate(texts, tf.constant(7, tf.int64))["generated_ids"].numpy()
    c = module.generate(texts, tf.constant(8, tf.int64))["generated_ids"].numpy()
    np.testing.assert_array_equal(a, b)
    assert (a != c).any()
    ids = python_tokenizer("Hello world")["input_ids"]
    want = model.generate(tf.constant([ids]), max_new_tokens=NEW, do_sample=True, top_k=20, seed=7,
                          pad_token_id=EOS).numpy()[0, len(ids):]
    assert a[0, :len(want)].tolist() == want.tolist()


@pytest.mark.parametrize("options, error, words", [
    (dict(num_beams=2), ValueError, "num_beams=2"),
    (dict(num_return_sequences=3), ValueError, "num_return_sequences=3"),
    (dict(max_prompt_length=36), ValueError, "n_positions=40"),
    (dict(max_new_tokens=0), ValueError, "max_new_tokens must be"),
    (dict(batch_size=0), ValueError, "batch_size must be"),
    (dict(max_length=20), ValueError, "max_length in generation_options"),
])
def test_refusals_name_the_value(model, tf_tokenizer, options, error, words):
    from gpt2.tf.serving import TextGenerationModule

    kwargs = {"max_new_tokens": NEW, **options}
    with pytest.raises(error, match=words):
        TextGenerationModule(model, tf_tokenizer, **kwargs)


def test_refuses_what_is_not_a_language_model_or_a_graph_tokenizer(model, python_tokenizer, tf_tokenizer):
    from gpt2.tf.serving import TextGenerationModule

    with pytest.raises(TypeError, match="TFGPT2Tokenizer"):
        TextGenerationModule(model, python_tokenizer, max_new_tokens=NEW)
    with pytest.raises(TypeError, match="TFGPT2Model"):
        TextGenerationModule(model.transformer, tf_tokenizer, max_new_tokens=NEW)


def test_prompt_buckets():
    from gpt2.tf.serving import prompt_buckets

    assert prompt_buckets(16) == [8, 16]
    assert prompt_buckets(5) == [5]
    assert prompt_buckets(100) == [8, 16, 32, 64, 100]
