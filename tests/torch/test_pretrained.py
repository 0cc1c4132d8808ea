"""The PyTorch base class and weight map: a caller's config is never changed, the visible config matches
transformers' (test-only oracle), the weight map round-trips, the public import paths hold."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from conftest import requires_torch, requires_transformers

pytestmark = requires_torch

torch = pytest.importorskip("torch")

BASE = dict(n_layer=2, n_embd=16, n_head=2, vocab_size=50, n_positions=12, pad_token_id=49, num_labels=3)
CLASSES = ["GPT2Model", "GPT2LMHeadModel", "GPT2ForSequenceClassification", "GPT2ForTokenClassification",
           "GPT2ForQuestionAnswering", "GPT2DoubleHeadsModel"]
IDS = torch.tensor([[1, 5, 9, 2, 7, 30], [3, 3, 40, 8, 11, 12]])


def _labels(cls_name: str) -> dict:
    """Inputs with labels for each class, so that every loss runs (and may infer problem_type)."""
    if cls_name == "GPT2DoubleHeadsModel":
        return dict(input_ids=IDS[None], labels=IDS[None], mc_labels=torch.tensor([0]))
    if cls_name == "GPT2ForSequenceClassification":
        return dict(input_ids=IDS, labels=torch.tensor([0, 2]))
    if cls_name == "GPT2ForTokenClassification":
        return dict(input_ids=IDS, labels=torch.zeros_like(IDS) + 1)
    if cls_name == "GPT2ForQuestionAnswering":
        return dict(input_ids=IDS, start_positions=torch.tensor([1, 2]), end_positions=torch.tensor([3, 4]))
    if cls_name == "GPT2LMHeadModel":
        return dict(input_ids=IDS, labels=IDS)
    return dict(input_ids=IDS)


@pytest.mark.parametrize("cls_name", CLASSES)
def test_the_callers_config_is_unchanged_by_construction_and_forward(cls_name):
    import gpt2.torch as ours
    from gpt2.common.config import GPT2Config

    config = GPT2Config(**BASE)
    before = config.to_dict()
    model = getattr(ours, cls_name)(config)
    model(**_labels(cls_name))
    assert config.to_dict() == before
    assert model.config is not config
    assert model.trunk.config is model.config  # one config for the model and its trunk, as transformers'


@requires_transformers
@pytest.mark.parametrize("cls_name", CLASSES)
def test_model_config_shows_what_transformers_shows(cls_name):
    """num_labels after construction (GPT2DoubleHeadsModel: 1) and problem_type after a loss, as transformers'
    model.config shows them (transformers writes them into the caller's config too; we do not)."""
    import transformers

    import gpt2.torch as ours
    from gpt2.common.config import GPT2Config

    transformers.logging.set_verbosity_error()
    theirs = getattr(transformers, cls_name)(transformers.GPT2Config(**BASE))
    model = getattr(ours, cls_name)(GPT2Config(**BASE))
    assert (model.config.num_labels, model.config.problem_type) == (theirs.config.num_labels,
                                                                    theirs.config.problem_type)
    theirs(**_labels(cls_name))
    model(**_labels(cls_name))
    assert (model.config.num_labels, model.config.problem_type) == (theirs.config.num_labels,
                                                                    theirs.config.problem_type)


def test_from_pretrained_leaves_a_given_config_unchanged(tmp_path):
    import gpt2.torch as ours
    from gpt2.common.config import GPT2Config

    ours.GPT2LMHeadModel(GPT2Config(**BASE)).save_pretrained(tmp_path)
    config = GPT2Config.from_pretrained(tmp_path)
    before = config.to_dict()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the multiple-choice head is newly initialised
        model = ours.GPT2DoubleHeadsModel.from_pretrained(tmp_path, config=config, resid_pdrop=0.0)
        seq = ours.GPT2ForSequenceClassification.from_pretrained(tmp_path, config=config)
    seq(input_ids=IDS, labels=torch.tensor([0, 1]))
    assert config.to_dict() == before
    assert model.config.num_labels == 1 and model.config.resid_pdrop == 0.0
    assert seq.config.problem_type == "single_label_classification"


def test_resize_shows_in_the_trunks_config_too():
    import gpt2.torch as ours
    from gpt2.common.config import GPT2Config

    model = ours.GPT2LMHeadModel(GPT2Config(**BASE))
    model.resize_token_embeddings(64)
    assert model.config.vocab_size == model.transformer.config.vocab_size == 64


@pytest.mark.parametrize("cls_name", ["GPT2Model", "GPT2LMHeadModel", "GPT2DoubleHeadsModel"])
def test_weight_map_round_trips_with_one_transpose(cls_name):
    """canonical -> parameters -> canonical is the identity; Conv1D weights are the Linear weights transposed."""
    import gpt2.torch as ours
    from gpt2.common.config import GPT2Config
    from gpt2.torch import weights

    model = getattr(ours, cls_name)(GPT2Config(**BASE, tie_word_embeddings=cls_name != "GPT2DoubleHeadsModel"))
    state = weights.state_to_canonical(model)
    assert all(name.startswith("transformer.") or name.split(".")[0] in ("lm_head", "multiple_choice_head")
               for name in state)
    assert ("lm_head.weight" in state) == (cls_name == "GPT2DoubleHeadsModel")  # only untied heads are stored
    fc = state["transformer.h.0.mlp.c_fc.weight"]
    assert fc.shape == (16, 64)  # [in, out]
    trunk = model.trunk
    np.testing.assert_array_equal(fc, trunk.h[0].mlp.c_fc.weight.detach().numpy().T)
    other = getattr(ours, cls_name)(model.config)
    missing, unused = weights.load_canonical(other, state)
    assert unused == [] and missing == []
    for name, array in weights.state_to_canonical(other).items():
        np.testing.assert_array_equal(array, state[name], err_msg=name)


def test_load_canonical_names_a_wrong_shape():
    import gpt2.torch as ours
    from gpt2.common.config import GPT2Config
    from gpt2.torch import weights

    model = ours.GPT2Model(GPT2Config(**BASE))
    state = weights.state_to_canonical(model)
    state["transformer.wpe.weight"] = state["transformer.wpe.weight"][:3]
    with pytest.raises(ValueError, match="transformer.wpe.weight.*checkpoint shape"):
        weights.load_canonical(model, state)


def test_public_import_paths():
    import gpt2
    import gpt2.torch
    from gpt2.torch.pretrained import GPT2PreTrainedModel

    assert gpt2.torch.GPT2PreTrainedModel is GPT2PreTrainedModel
    assert issubclass(gpt2.torch.GPT2LMHeadModel, GPT2PreTrainedModel)
    assert issubclass(gpt2.torch.GPT2Model, GPT2PreTrainedModel)
    if "GPT2PreTrainedModel" in getattr(gpt2, "__all__", ()):
        assert gpt2.GPT2PreTrainedModel is GPT2PreTrainedModel
