"""stop_strings (common/generation.py StopStrings, wired into the PyTorch generate()) against transformers 4.57.6's
StopStringCriteria, with the real GPT-2 vocabulary and random tiny models."""

from __future__ import annotations

import warnings

import pytest

from conftest import requires_torch, requires_transformers

pytestmark = [requires_torch, requires_transformers]

torch = pytest.importorskip("torch")

from gpt2.common.generation import StopStrings  # noqa: E402


class Texts:
    """A stand-in tokenizer: token i decodes to texts[i]."""

    def __init__(self, texts):
        self.texts = texts

    def decode(self, ids):
        return "".join(self.texts[i] for i in ids)


@pytest.mark.parametrize("tokens, hit", [
    (["st", "op"], True), (["stop"], True), (["st", "opera"], True), (["sto", "pper"], True),
    (["las", "topper"], True), (["s", "to", "pped"], True), (["xstopx"], True),
    (["stop", "at"], False), (["st", "op", "at"], False), (["st", "opera", "tion"], False), (["sto"], False),
])
def test_matches_transformers_documented_cases(tokens, hit):
    """The examples of transformers' StopStringCriteria docstring (and one occurrence inside a single token)."""
    stop = StopStrings(["stop"], Texts(tokens))
    assert stop([list(range(len(tokens)))]) == [hit]


def test_bad_stop_strings():
    with pytest.raises(ValueError, match="tokenizer"):
        StopStrings(["x"], None)
    with pytest.raises(ValueError, match="non-empty string"):
        StopStrings([""], Texts([]))


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    import transformers

    from gpt2 import GPT2Tokenizer
    from gpt2.torch import GPT2LMHeadModel

    transformers.logging.set_verbosity_error()
    folder = tmp_path_factory.mktemp("model")
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=4, n_positions=64, initializer_range=0.4,
                                     attn_implementation="eager")
    theirs = transformers.GPT2LMHeadModel(config).eval()
    theirs.save_pretrained(folder)
    ours_tok = GPT2Tokenizer.from_pretrained("gpt2")
    ours_tok.save_pretrained(folder)
    their_tok = transformers.GPT2Tokenizer.from_pretrained(folder)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ours = GPT2LMHeadModel.from_pretrained(folder)
    return theirs, ours, their_tok, ours_tok


def test_generate_stops_like_transformers(setup):
    theirs, ours, their_tok, ours_tok = setup
    prompt = torch.tensor([ours_tok.encode("The meaning of life is"), ours_tok.encode(" Once upon a time there")])
    free = ours.generate(prompt, max_new_tokens=16, pad_token_id=0, tokenizer=ours_tok)
    # Stop strings that straddle token boundaries of what each row produces freely, so that rows stop early.
    texts = [[ours_tok.decode([t]) for t in row[prompt.shape[1]:]] for row in free.tolist()]
    stops = [texts[0][3][-1:] + texts[0][4][:1], texts[1][6]]
    kwargs = dict(max_new_tokens=16, pad_token_id=0, stop_strings=stops)
    expected = theirs.generate(prompt, tokenizer=their_tok, **kwargs)
    got = ours.generate(prompt, tokenizer=ours_tok, **kwargs)
    assert torch.equal(got, expected)
    assert got.shape[1] < free.shape[1]  # it did stop early
    beams = dict(kwargs, num_beams=3)
    assert torch.equal(ours.generate(prompt, tokenizer=ours_tok, **beams),
                       theirs.generate(prompt, tokenizer=their_tok, **beams))


def test_stop_string_in_the_prompt_does_not_stop(setup):
    _, ours, _, tok = setup
    prompt = torch.tensor([tok.encode("stop here and stop, please")])
    free = ours.generate(prompt, max_new_tokens=6, pad_token_id=0)
    assert "stop" not in tok.decode(free[0, prompt.shape[1] - 1:].tolist())  # this model's text never says it again
    assert torch.equal(ours.generate(prompt, max_new_tokens=6, pad_token_id=0, stop_strings="stop", tokenizer=tok),
                       free)


def test_stop_strings_need_a_tokenizer(setup):
    _, ours, _, _ = setup
    with pytest.raises(ValueError, match="tokenizer"):
        ours.generate(torch.tensor([[1, 2]]), max_new_tokens=3, pad_token_id=0, stop_strings=["x"])
