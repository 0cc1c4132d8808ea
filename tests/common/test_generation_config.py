"""GenerationConfig: transformers' defaults and file format, validation, and the helpers generate() shares."""

import json
import warnings

import pytest

from conftest import TINY, requires_transformers
from gpt2.common.config import GPT2Config
from gpt2.common.generation import (
    GENERATION_DEFAULTS,
    GenerationConfig,
    eos_ids,
    merge,
    resolve_lengths,
)

# Non-default values of many kinds, all valid together (beam sampling), plus keys we do not model.
NON_DEFAULT = dict(
    max_new_tokens=32, min_new_tokens=2, max_length=60, min_length=3, early_stopping="never", max_time=5.0,
    stop_strings=["\n\n"], do_sample=True, num_beams=4, temperature=0.7, top_k=10, top_p=0.9, min_p=0.05,
    typical_p=0.95, epsilon_cutoff=3e-4, eta_cutoff=1e-3, repetition_penalty=1.2, length_penalty=0.8,
    no_repeat_ngram_size=3, bad_words_ids=[[3], [4, 5]], renormalize_logits=True, forced_eos_token_id=[1, 2],
    remove_invalid_values=True, exponential_decay_length_penalty=[10, 1.5], suppress_tokens=[7],
    begin_suppress_tokens=[8], sequence_bias=[[[9], -1.0]], num_return_sequences=2, output_scores=True,
    output_logits=True, return_dict_in_generate=True, pad_token_id=0, bos_token_id=1, eos_token_id=[2, 50256],
)
EXTRAS = dict(guidance_scale=1.5, my_tool_key={"a": 1})  # a transformers field we do not model, another tool's key


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def transformers():
    import transformers

    transformers.logging.set_verbosity_error()
    return transformers


@requires_transformers
def test_defaults_match_transformers(transformers):
    ours, theirs = GenerationConfig(), transformers.GenerationConfig()
    for name in GENERATION_DEFAULTS:
        assert getattr(ours, name) == getattr(theirs, name), name
    assert ours._from_model_config is False and ours.to_diff_dict() == {}
    assert ours == GenerationConfig.from_dict({}) and ours != GenerationConfig(do_sample=True, top_k=5)


@requires_transformers
def test_file_written_by_transformers_round_trips(transformers, tmp_path):
    theirs = transformers.GenerationConfig(**NON_DEFAULT, **EXTRAS)
    theirs.save_pretrained(tmp_path / "t")
    ours = GenerationConfig.from_pretrained(tmp_path / "t")
    for name in GENERATION_DEFAULTS:
        assert getattr(ours, name) == getattr(theirs, name), name
    assert ours.guidance_scale == 1.5 and ours.my_tool_key == {"a": 1}
    assert ours.transformers_version == transformers.__version__  # kept as read

    ours.save_pretrained(tmp_path / "o")
    written = json.loads((tmp_path / "o" / "generation_config.json").read_text())
    assert written == json.loads((tmp_path / "t" / "generation_config.json").read_text())  # byte-for-byte keys
    back = transformers.GenerationConfig.from_pretrained(tmp_path / "o")
    assert back == theirs
    for name in GENERATION_DEFAULTS:
        assert getattr(back, name) == getattr(ours, name), name


@requires_transformers
def test_our_defaults_file_loads_in_transformers(transformers, tmp_path):
    GenerationConfig(eos_token_id=5).save_pretrained(tmp_path)
    assert json.loads((tmp_path / "generation_config.json").read_text()) == {"eos_token_id": 5}
    assert transformers.GenerationConfig.from_pretrained(tmp_path) == transformers.GenerationConfig(eos_token_id=5)


@requires_transformers
def test_from_model_config_matches_transformers(transformers):
    kwargs = dict(pad_token_id=3, output_attentions=True, max_length=50, use_cache=False)
    ours = GenerationConfig.from_model_config(GPT2Config(**kwargs))
    theirs = transformers.GenerationConfig.from_model_config(transformers.GPT2Config(**kwargs))
    assert ours.to_diff_dict() == {k: v for k, v in theirs.to_diff_dict().items() if k != "transformers_version"}
    assert ours._from_model_config and ours.return_dict_in_generate
    plain = GenerationConfig.from_model_config(GPT2Config())
    assert plain.to_diff_dict() == {"_from_model_config": True, "bos_token_id": 50256, "eos_token_id": 50256}


def test_from_pretrained_falls_back_to_model_config(tmp_path):
    gen = GenerationConfig.from_pretrained("gpt2")  # a preset name: offline, no files
    assert (gen.bos_token_id, gen.eos_token_id, gen._from_model_config) == (50256, 50256, True)
    assert GenerationConfig.from_pretrained("distilgpt2", max_new_tokens=7).max_new_tokens == 7
    GPT2Config(**TINY, pad_token_id=4, eos_token_id=5).save_pretrained(tmp_path / "m")
    gen = GenerationConfig.from_pretrained(tmp_path / "m")
    assert (gen.pad_token_id, gen.eos_token_id, gen.bos_token_id) == (4, 5, 50256)
    GenerationConfig(eos_token_id=[5, 6]).save_pretrained(tmp_path / "m")  # the file wins once it exists
    assert GenerationConfig.from_pretrained(tmp_path / "m").eos_token_id == [5, 6]
    assert GenerationConfig.from_pretrained(tmp_path / "m" / "generation_config.json").eos_token_id == [5, 6]
    with pytest.raises(FileNotFoundError, match="generation_config.json"):
        GenerationConfig.from_pretrained(tmp_path / "nothing-here")


def test_save_is_atomic_and_validated(tmp_path):
    GenerationConfig(max_new_tokens=3).save_pretrained(tmp_path)
    before = (tmp_path / "generation_config.json").read_text()
    with pytest.warns(UserWarning, match="temperature"):
        bad = GenerationConfig(temperature=0.5)  # ignored without sampling: a warning, not an error
    with pytest.raises(ValueError, match="temperature"):
        bad.save_pretrained(tmp_path)  # transformers refuses to save it too
    assert (tmp_path / "generation_config.json").read_text() == before
    assert [p.name for p in tmp_path.iterdir()] == ["generation_config.json"]
    with pytest.raises(ValueError, match="not a valid JSON"):
        (tmp_path / "generation_config.json").write_text("{")
        GenerationConfig.from_pretrained(tmp_path)


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"max_new_tokens": 0}, "max_new_tokens"),
        ({"max_length": -1}, "max_length"),
        ({"min_new_tokens": -1}, "min_new_tokens"),
        ({"num_beams": 0}, "num_beams"),
        ({"num_return_sequences": 0}, "num_return_sequences"),
        ({"top_k": -1}, "top_k"),
        ({"do_sample": True, "temperature": 0.0}, "temperature"),
        ({"temperature": -1.0}, "temperature"),
        ({"do_sample": True, "top_p": 0.0}, "top_p"),
        ({"do_sample": True, "top_p": 1.5}, "top_p"),
        ({"do_sample": True, "min_p": 1.1}, "min_p"),
        ({"do_sample": True, "typical_p": 0.0}, "typical_p"),
        ({"repetition_penalty": 0.0}, "repetition_penalty"),
        ({"no_repeat_ngram_size": -2}, "no_repeat_ngram_size"),
        ({"num_return_sequences": 2}, "num_return_sequences"),  # greedy
        ({"num_beams": 2, "num_return_sequences": 3}, "num_return_sequences"),
        ({"num_beams": 2, "do_sample": True, "num_return_sequences": 3}, "num_return_sequences"),
        ({"bad_words_ids": [[1], []]}, "bad_words_ids"),
        ({"bad_words_ids": [1, 2]}, "bad_words_ids"),
        ({"bad_words_ids": [[-1]]}, "bad_words_ids"),
        ({"bad_words_ids": []}, "bad_words_ids"),
        ({"eos_token_id": -1}, "eos_token_id"),
        ({"eos_token_id": [1, -2]}, "eos_token_id"),
        ({"pad_token_id": -1}, "pad_token_id"),
        ({"bos_token_id": 1.5}, "bos_token_id"),
        ({"early_stopping": "sometimes"}, "early_stopping"),
        ({"do_sample": "yes"}, "do_sample"),
        ({"suppress_tokens": [1, "a"]}, "suppress_tokens"),
        ({"streamer": object()}, "streamer"),
    ],
)
def test_validation_names_the_field(kwargs, field):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ValueError, match=field):
            GenerationConfig(**kwargs)


def test_valid_edge_cases_and_warnings():
    GenerationConfig(do_sample=True, num_return_sequences=4)  # sampling: any number of sequences
    GenerationConfig(num_beams=4, num_return_sequences=4, early_stopping=True)
    GenerationConfig(do_sample=True, temperature=None, top_k=None, top_p=None)  # None = unset, as transformers
    GenerationConfig(force_words_ids=[[[1, 2], [3]], [[4]]])
    with pytest.warns(UserWarning, match="length_penalty"):
        GenerationConfig(length_penalty=2.0)
    with pytest.warns(UserWarning, match="output_scores"):
        GenerationConfig(output_scores=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        GenerationConfig(do_sample=True, temperature=0.3, top_k=0, top_p=0.5)


def test_update_returns_unused_and_is_atomic():
    gen = GenerationConfig(custom=1, do_sample=True)
    assert gen.update(top_k=5, custom=2, foo=3, bar=None) == {"foo": 3, "bar": None}
    assert (gen.top_k, gen.custom) == (5, 2) and not hasattr(gen, "foo")
    with pytest.raises(ValueError, match="num_beams"):
        gen.update(num_beams=0)
    assert gen.num_beams == 1


def test_dict_json_copy_eq():
    gen = GenerationConfig(eos_token_id=[1, 2], extra="x", transformers_version="4.0.0", _commit_hash="abc")
    d = gen.to_dict()
    written = [k for k in GENERATION_DEFAULTS if k != "compile_config"]  # in memory only, as in transformers
    assert list(d)[: len(written)] == written
    assert d["extra"] == "x" and d["transformers_version"] == "4.0.0" and "_commit_hash" not in d
    assert gen.to_diff_dict() == {"eos_token_id": [1, 2], "extra": "x", "transformers_version": "4.0.0"}
    assert GenerationConfig.from_dict(json.loads(gen.to_json_string())) == gen
    other = gen.copy()
    other.transformers_version, other._from_model_config = "9.9", True
    assert other == gen  # metadata is ignored, as in transformers
    other.eos_token_id.append(3)
    assert gen.eos_token_id == [1, 2] and other != gen
    assert "GenerationConfig" in repr(gen) and "transformers_version" not in repr(gen)


def test_eos_ids():
    assert eos_ids(GenerationConfig()) == []
    assert eos_ids(GenerationConfig(eos_token_id=7)) == [7]
    assert eos_ids(GenerationConfig(eos_token_id=[7, 8])) == [7, 8]


def test_merge():
    base = GenerationConfig(eos_token_id=9, top_k=5, do_sample=True)
    run = merge(base, max_new_tokens=4, top_k=None)
    assert (run.max_new_tokens, run.top_k, run.eos_token_id) == (4, None, 9)
    assert base.max_new_tokens is None and base.top_k == 5  # a copy
    assert merge(None, num_beams=2).num_beams == 2
    with pytest.raises(TypeError, match="max_tokens, tempreature"):
        merge(base, max_tokens=3, tempreature=0.5)
    with pytest.raises(TypeError, match="guidance_scale"):  # a transformers option these generate()s do not have
        merge(base, guidance_scale=2.0)
    with pytest.raises(ValueError, match="max_new_tokens"):
        merge(base, max_new_tokens=0)


@pytest.mark.parametrize(
    "config_kwargs, call_kwargs, input_length, max_positions, expected",
    [
        ({}, {}, 5, 1024, (0, 25)),  # the global default max_length means 20 new tokens...
        ({}, {}, 1010, 1024, (0, 1024)),  # ...capped at n_positions
        ({}, {"max_length": 20}, 5, 1024, (0, 20)),  # given to generate(): a total length
        ({"max_length": 50}, {}, 5, 1024, (0, 50)),  # a model's own max_length: a total length
        ({"max_length": 50}, {"max_new_tokens": 10}, 5, 1024, (0, 15)),  # max_new_tokens wins
        ({"min_length": 8}, {"max_new_tokens": 10}, 5, 1024, (8, 15)),
        ({"min_length": 8}, {"min_new_tokens": 2, "max_new_tokens": 10}, 5, 1024, (7, 15)),  # min_new_tokens wins
        ({}, {"max_new_tokens": 3}, 4, 7, (0, 7)),  # exactly fills the position table
        ({"max_length": 5000}, {"max_new_tokens": 3}, 4, None, (0, 7)),
    ],
)
def test_resolve_lengths(config_kwargs, call_kwargs, input_length, max_positions, expected):
    run = merge(GenerationConfig(**config_kwargs), **call_kwargs)
    assert resolve_lengths(run, input_length, max_positions) == expected


def test_resolve_lengths_errors_and_warnings():
    with pytest.raises(ValueError, match="input is 30 tokens long but max_length is 30"):
        resolve_lengths(merge(None, max_length=30), 30, 1024)
    with pytest.raises(ValueError, match="max_length"):
        resolve_lengths(GenerationConfig(), 1024, 1024)  # the prompt fills the position table
    with pytest.raises(ValueError, match="max_new_tokens=4 .* n_positions=7"):
        resolve_lengths(merge(None, max_new_tokens=4), 4, 7)
    with pytest.raises(ValueError, match="max_length=2000 .* n_positions=1024"):
        resolve_lengths(merge(None, max_length=2000), 4, 1024)
    with pytest.raises(ValueError, match="input_length"):
        resolve_lengths(GenerationConfig(), -1, 1024)
    with pytest.warns(UserWarning, match="max_new_tokens takes precedence"):
        resolve_lengths(merge(None, max_length=30, max_new_tokens=3), 5, 1024)
    with pytest.warns(UserWarning, match="minimum length 15"):
        resolve_lengths(merge(None, min_new_tokens=10, max_new_tokens=3), 5, 1024)


@pytest.mark.slow  # imports torch and builds a model: seconds
@requires_transformers
def test_resolve_lengths_matches_transformers_generate(transformers):
    """The lengths transformers' generate() reaches with a tiny random GPT-2 (PyTorch), for the default cases."""
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(**{**TINY, "n_positions": 16})).eval()
    prompt = torch.tensor([[1, 2, 3]])
    for kwargs in ({}, {"max_length": 9}, {"max_new_tokens": 4}, {"max_length": 5, "max_new_tokens": 6}):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out = model.generate(prompt, pad_token_id=0, eos_token_id=None, **kwargs)
            _, max_total = resolve_lengths(merge(None, **kwargs), 3, 16)
        assert out.shape[1] == max_total, kwargs
