"""Our TF classes and transformers' TF classes (test-only oracle, tf-keras) read each other's tf_model.h5 with the
same logits. transformers imports tf_keras itself, so its Keras 2 models share this process with our Keras 3 ones."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import requires_tf, requires_transformers

pytestmark = [requires_tf, requires_transformers, pytest.mark.skipif(
    not __import__("conftest").has("tf_keras"), reason="transformers' TF classes need tf-keras")]

CFG = dict(n_layer=2, n_embd=16, n_head=2, vocab_size=50, n_positions=12, pad_token_id=49)
IDS = np.array([[1, 5, 9, 2, 7, 30], [3, 3, 40, 8, 11, 12]], dtype=np.int32)


def _hf():
    import transformers

    transformers.logging.set_verbosity_error()
    return transformers


def test_our_tf_model_h5_loads_in_transformers_tf_class(tmp_path):
    from gpt2.common.config import GPT2Config
    from gpt2.tf import TFGPT2LMHeadModel

    ours = TFGPT2LMHeadModel(GPT2Config(**CFG))
    ours._build_for_loading()
    ours.save_pretrained(tmp_path)
    assert (tmp_path / "tf_model.h5").is_file()
    theirs = _hf().TFGPT2LMHeadModel.from_pretrained(tmp_path)
    np.testing.assert_allclose(np.asarray(theirs(input_ids=IDS).logits),
                               np.asarray(ours(input_ids=IDS, training=False).logits), atol=1e-4, rtol=0)


def test_transformers_tf_save_pretrained_loads_in_ours(tmp_path):
    from gpt2.tf import TFGPT2LMHeadModel

    T = _hf()
    theirs = T.TFGPT2LMHeadModel(T.GPT2Config(**CFG))
    theirs(input_ids=IDS)  # build
    theirs.save_pretrained(tmp_path)
    ours = TFGPT2LMHeadModel.from_pretrained(tmp_path)
    np.testing.assert_allclose(np.asarray(ours(input_ids=IDS, training=False).logits),
                               np.asarray(theirs(input_ids=IDS).logits), atol=1e-4, rtol=0)
