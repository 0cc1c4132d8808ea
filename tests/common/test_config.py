import json

import pytest

from conftest import requires_transformers
from gpt2.common.config import GPT2_DEFAULTS, PRESETS, GPT2Config


def test_defaults_and_aliases():
    c = GPT2Config()
    for name, value in GPT2_DEFAULTS.items():
        assert getattr(c, name) == value
    assert (c.hidden_size, c.num_attention_heads, c.num_hidden_layers, c.max_position_embeddings) == (768, 12, 12, 1024)
    assert c.tie_word_embeddings and not c.add_cross_attention and c.pad_token_id is None
    assert c.num_labels == 2 and c.id2label == {0: "LABEL_0", 1: "LABEL_1"}
    assert c.inner_dim == 3072 and c.head_dim == 64


def test_alias_constructor_and_setter():
    c = GPT2Config(hidden_size=64, num_attention_heads=4, num_hidden_layers=3, max_position_embeddings=32)
    assert (c.n_embd, c.n_head, c.n_layer, c.n_positions) == (64, 4, 3, 32)
    c.hidden_size = 128
    assert c.n_embd == 128
    with pytest.raises(ValueError, match="contradicts"):
        GPT2Config(hidden_size=64, n_embd=32)


def test_labels():
    c = GPT2Config(num_labels=3)
    assert c.id2label == {0: "LABEL_0", 1: "LABEL_1", 2: "LABEL_2"} and c.label2id["LABEL_2"] == 2
    c = GPT2Config(id2label={"0": "neg", "1": "pos"})
    assert c.id2label == {0: "neg", 1: "pos"} and c.label2id == {"neg": 0, "pos": 1} and c.num_labels == 2
    c.num_labels = 5
    assert len(c.id2label) == 5


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"n_embd": 10, "n_head": 3}, "n_embd"),
        ({"n_layer": 0}, "n_layer"),
        ({"vocab_size": -1}, "vocab_size"),
        ({"n_positions": 2.5}, "n_positions"),
        ({"n_inner": 0}, "n_inner"),
        ({"activation_function": "gelu_newer"}, "activation_function"),
        ({"attn_pdrop": 1.5}, "attn_pdrop"),
        ({"resid_pdrop": -0.1}, "resid_pdrop"),
        ({"embd_pdrop": float("nan")}, "embd_pdrop"),
        ({"layer_norm_epsilon": 0}, "layer_norm_epsilon"),
        ({"summary_type": "max"}, "summary_type"),
        ({"scale_attn_weights": "yes"}, "scale_attn_weights"),
        ({"eos_token_id": -3}, "eos_token_id"),
        ({"pad_token_id": "0"}, "pad_token_id"),
        ({"problem_type": "ranking"}, "problem_type"),
        ({"num_labels": -1}, "num_labels"),
    ],
)
def test_validation_names_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        GPT2Config(**kwargs)


def test_eos_list_allowed():
    assert GPT2Config(eos_token_id=[1, 2]).eos_token_id == [1, 2]


def test_json_round_trip_keeps_unknown_keys(tmp_path):
    data = {"model_type": "gpt2", "n_layer": 3, "n_ctx": 1024, "my_tool_setting": {"a": [1, 2]}, "n_embd": 16,
            "n_head": 4, "torch_dtype": "float16"}
    (tmp_path / "config.json").write_text(json.dumps(data))
    c = GPT2Config.from_pretrained(tmp_path)
    assert c.n_ctx == 1024 and c.my_tool_setting == {"a": [1, 2]} and c.dtype == "float16" == c.torch_dtype
    c.save_pretrained(tmp_path / "out")
    back = json.loads((tmp_path / "out" / "config.json").read_text())
    assert back["n_ctx"] == 1024 and back["my_tool_setting"] == {"a": [1, 2]} and back["dtype"] == "float16"
    assert GPT2Config.from_pretrained(tmp_path / "out") == c
    assert list(back) == sorted(back)


def test_from_pretrained_overrides_and_files(tmp_path):
    c = GPT2Config.from_pretrained("gpt2", n_layer=2)
    assert c.n_layer == 2 and c.n_embd == 768
    GPT2Config(n_layer=1).to_json_file(tmp_path / "c.json")
    assert GPT2Config.from_json_file(tmp_path / "c.json").n_layer == 1
    assert GPT2Config.from_pretrained(tmp_path / "c.json").n_layer == 1


@pytest.mark.parametrize("name, layers, embd, heads", [
    ("gpt2", 12, 768, 12), ("gpt2-medium", 24, 1024, 16), ("gpt2-large", 36, 1280, 20),
    ("gpt2-xl", 48, 1600, 25), ("distilgpt2", 6, 768, 12), ("openai-community/gpt2-large", 36, 1280, 20),
])
def test_presets_offline(name, layers, embd, heads, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.chdir(tmp_path)
    c = GPT2Config.from_pretrained(name)
    assert (c.n_layer, c.n_embd, c.n_head, c.vocab_size, c.n_positions) == (layers, embd, heads, 50257, 1024)


def test_local_folder_wins_over_preset(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "gpt2").mkdir()
    GPT2Config(n_layer=1).save_pretrained(tmp_path / "gpt2")
    assert GPT2Config.from_pretrained("gpt2").n_layer == 1


def test_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        GPT2Config.from_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError):
        GPT2Config.from_pretrained("no-such-model-anywhere", local_files_only=True)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="config.json"):
        GPT2Config.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ValueError, match="bert"):
        GPT2Config.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"n_embd": 10, "n_head": 4}))
    with pytest.raises(ValueError, match="config.json.*n_embd"):
        GPT2Config.from_pretrained(tmp_path)
    with pytest.raises(TypeError):
        GPT2Config.from_dict([1, 2])


def test_openai_hparams(tmp_path):
    (tmp_path / "hparams.json").write_text(json.dumps({"n_vocab": 50, "n_ctx": 16, "n_embd": 8, "n_head": 2,
                                                       "n_layer": 3}))
    c = GPT2Config.from_pretrained(tmp_path)
    assert (c.vocab_size, c.n_positions, c.n_embd, c.n_head, c.n_layer) == (50, 16, 8, 2, 3)
    (tmp_path / "hparams.json").write_text(json.dumps({"n_vocab": 50}))
    with pytest.raises(ValueError, match="hparams.json"):
        GPT2Config.from_pretrained(tmp_path)


CASES = [
    {},
    dict(n_layer=3, n_embd=32, n_head=4, n_inner=40, activation_function="relu", scale_attn_weights=False,
         scale_attn_by_inverse_layer_idx=True, reorder_and_upcast_attn=True, tie_word_embeddings=False,
         add_cross_attention=True, pad_token_id=0, num_labels=5, problem_type="multi_label_classification",
         eos_token_id=[3, 4], summary_type="mean", layer_norm_epsilon=1e-6),
    dict(id2label={0: "neg", 1: "pos", 2: "neutral"}, architectures=["GPT2ForSequenceClassification"]),
]


@requires_transformers
@pytest.mark.parametrize("kwargs", CASES)
def test_ours_loads_in_transformers_with_every_field_equal(kwargs, tmp_path):
    import transformers

    ours = GPT2Config(**kwargs)
    ours.save_pretrained(tmp_path)
    theirs = transformers.GPT2Config.from_pretrained(tmp_path)
    for name, value in ours.to_dict().items():
        assert getattr(theirs, name) == value, name
    assert theirs.num_labels == ours.num_labels


@requires_transformers
@pytest.mark.parametrize("kwargs", CASES)
def test_theirs_loads_in_ours_with_every_field_equal(kwargs, tmp_path):
    import transformers

    theirs = transformers.GPT2Config(**kwargs)
    theirs.save_pretrained(tmp_path)
    ours = GPT2Config.from_pretrained(tmp_path)
    their_fields = theirs.to_dict()
    for name, value in ours.to_dict().items():
        if name == "label2id" and theirs.label2id is None:  # transformers leaves it unset when given id2label only
            assert value == {v: k for k, v in theirs.id2label.items()}
        elif name != "dtype":
            assert their_fields[name] == value, name
    ours.save_pretrained(tmp_path / "back")  # and back again, unknown keys included
    expected = json.loads((tmp_path / "config.json").read_text())
    if expected.get("label2id", 0) is None:  # transformers writes null beside id2label; we write the inverse
        expected["label2id"] = {v: int(k) for k, v in expected["id2label"].items()}
    assert json.loads((tmp_path / "back" / "config.json").read_text()) == expected


def test_presets_table_is_consistent():
    for name, preset in PRESETS.items():
        GPT2Config.from_dict(preset)  # every preset validates


def test_from_pretrained_overrides_are_fields_only(tmp_path):
    GPT2Config(n_layer=2, foo_extra=1).save_pretrained(tmp_path)
    cfg = GPT2Config.from_pretrained(tmp_path, n_layer=3, foo_extra=2, hidden_size=48, num_labels=4)
    assert (cfg.n_layer, cfg.foo_extra, cfg.n_embd, cfg.num_labels) == (3, 2, 48, 4)
    with pytest.raises(TypeError, match="unexpected keyword argument.*token"):
        GPT2Config.from_pretrained(tmp_path, token="hf_secret")
    with pytest.raises(TypeError, match="n_layerz"):
        GPT2Config.from_pretrained("gpt2", n_layerz=1)
