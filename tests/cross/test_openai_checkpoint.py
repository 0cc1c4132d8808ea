"""OpenAI's original TF checkpoint: written here with TensorFlow in OpenAI's layout (names of gpt-2/src/model.py,
conv weights [1, in, out], hparams.json, encoder.json, vocab.bpe), converted by us, loaded by transformers; and
checked against transformers' own reader of that format (load_tf_weights_in_gpt2, which needs TensorFlow)."""

import json

import numpy as np
import pytest

from conftest import requires_tf, requires_torch, requires_transformers
from gpt2.common.checkpoint import load_checkpoint
from gpt2.common.convert import convert
from gpt2.common.formats.openai_tf import key_of

pytestmark = [requires_transformers, requires_torch, requires_tf]
HPARAMS = {"n_vocab": 40, "n_ctx": 10, "n_embd": 16, "n_head": 4, "n_layer": 2}


@pytest.fixture(scope="module")
def openai_dir(tmp_path_factory):
    import tensorflow as tf
    import torch
    import transformers as T

    folder = tmp_path_factory.mktemp("openai") / "124M"
    folder.mkdir()
    config = T.GPT2Config(vocab_size=40, n_positions=10, n_embd=16, n_head=4, n_layer=2)
    torch.manual_seed(0)
    model = T.GPT2LMHeadModel(config).eval()
    names, tensors = [], []
    for name, value in model.state_dict().items():
        mapped = key_of(name)
        if mapped is not None:
            array = value.numpy()
            names.append(mapped[0])
            tensors.append(tf.constant(array[None] if mapped[1] == "openai_conv" else array))
    tf.raw_ops.SaveV2(prefix=str(folder / "model.ckpt"), tensor_names=names, shape_and_slices=[""] * len(names),
                      tensors=tensors)
    (folder / "checkpoint").write_text('model_checkpoint_path: "model.ckpt"\n')
    (folder / "hparams.json").write_text(json.dumps(HPARAMS))
    (folder / "encoder.json").write_text(json.dumps({chr(97 + i): i for i in range(26)}))
    (folder / "vocab.bpe").write_text("#version: 0.2\na b\n")
    ids = torch.tensor([[1, 2, 3, 4, 5, 6]])
    with torch.no_grad():
        reference = model(ids).logits.numpy()
    return folder, ids, reference, model


def test_openai_to_every_format_loads_in_transformers(openai_dir, tmp_path):
    import transformers as T

    folder, ids, reference, _ = openai_dir
    convert(folder, tmp_path / "pt", to="safetensors")
    assert (tmp_path / "pt" / "vocab.json").read_text() == (folder / "encoder.json").read_text()
    assert (tmp_path / "pt" / "merges.txt").read_text() == (folder / "vocab.bpe").read_text()
    config = json.loads((tmp_path / "pt" / "config.json").read_text())
    assert (config["n_layer"], config["vocab_size"], config["n_positions"]) == (2, 40, 10)
    model = T.GPT2LMHeadModel.from_pretrained(tmp_path / "pt").eval()
    np.testing.assert_allclose(model(ids).logits.detach().numpy(), reference, atol=1e-6, rtol=0)
    convert(folder, tmp_path / "tf", to="tf")
    tf_model = T.TFGPT2LMHeadModel.from_pretrained(tmp_path / "tf")
    np.testing.assert_allclose(tf_model(ids.numpy()).logits.numpy(), reference, atol=1e-4, rtol=0)


def test_same_tensors_as_transformers_own_openai_reader(openai_dir):
    import transformers as T

    folder, _, _, _ = openai_dir
    config = T.GPT2Config(vocab_size=40, n_positions=10, n_embd=16, n_head=4, n_layer=2)
    theirs = T.GPT2Model(config)
    T.load_tf_weights_in_gpt2(theirs, config, str(folder / "model.ckpt"))
    ours, _ = load_checkpoint(folder)
    their_state = {"transformer." + k: v.numpy() for k, v in theirs.state_dict().items()}
    assert ours.keys() == their_state.keys()
    for name in ours:
        np.testing.assert_array_equal(ours[name], their_state[name], err_msg=name)
