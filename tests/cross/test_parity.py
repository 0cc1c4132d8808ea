"""The parity matrix: one random checkpoint, written by our PyTorch model's save_pretrained, loaded by our PyTorch,
TensorFlow and Flax models; every test is written once and runs per framework pair (torch-tf, torch-flax, tf-flax)
through the adapters of tests/cross/frameworks.py (a framework, or our package for it, that is absent is a skip).

- logits within 1e-4 pairwise (fp32, CPU) on configs with every attention flag, with left padding (position ids
  from the mask, as generate() derives them) and at lengths n_positions - 1 and n_positions;
- greedy generate() token-identical for 64 new tokens (n_positions 96), on weights whose next-token logits are
  never near a tie (the top-2 gap is asserted, so the test cannot pass or fail by tie-breaking);
- every format ``gpt2 convert`` writes (and OpenAI's TF checkpoint, which it reads) loads in every framework with
  the same logits.

Speed: the checkpoints, loaded models and outputs are computed once per module (each framework runs each input
once; the pair tests compare cached arrays), with few distinct shapes (TF and JAX compile per shape).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from frameworks import ADAPTERS, NAMES, PAIRS, adapter, positions_from_mask

TOL = 1e-4  # max-abs, fp32 logits between frameworks
# Random weights at initializer_range 0.4 (as tests/torch/test_generate.py): logits of order 1-10, so a wrong
# scale, mask or transpose is far outside TOL, and next-token distributions are peaked.
BASE = dict(n_layer=2, n_embd=16, n_head=2, vocab_size=50, n_positions=12, initializer_range=0.4)
CONFIGS = {
    "default": {},
    "unscaled": dict(scale_attn_weights=False),
    "inverse-layer-idx": dict(scale_attn_by_inverse_layer_idx=True),
    "reorder-upcast": dict(reorder_and_upcast_attn=True),
    "all-flags": dict(scale_attn_weights=False, scale_attn_by_inverse_layer_idx=True, reorder_and_upcast_attn=True),
}
N = BASE["n_positions"]
_rng = np.random.default_rng(0)
# Left padding at the longest length: rows with 0, 1 and 4 padding tokens at the start.
PAD_MASK = np.ones((3, N), dtype=np.int64)
PAD_MASK[1, :1] = 0
PAD_MASK[2, :4] = 0
CASES = {
    "left-pad-T=n_positions": dict(ids=_rng.integers(0, BASE["vocab_size"], (3, N)), attention_mask=PAD_MASK,
                                   position_ids=positions_from_mask(PAD_MASK)),
    "T=n_positions-1": dict(ids=_rng.integers(0, BASE["vocab_size"], (2, N - 1)), attention_mask=None,
                            position_ids=None),
}

# Greedy decoding: 64 new tokens after an 8-token left-padded prompt, within n_positions = 96. No eos (every row
# makes all 64 tokens) and no pad token (generate() pads nothing then).
GEN = dict(n_layer=2, n_embd=32, n_head=4, vocab_size=100, n_positions=96, initializer_range=0.4,
           bos_token_id=0, eos_token_id=None, pad_token_id=None)
GEN_SEED = 1  # chosen for its margins (asserted below)
NEW_TOKENS = 64
GEN_MASK = np.array([[0, 0, 0, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1, 1, 1], [0, 1, 1, 1, 1, 1, 1, 1]])
GEN_IDS = np.where(GEN_MASK == 1, np.random.default_rng(1).integers(1, GEN["vocab_size"], GEN_MASK.shape), 7)
# Each step's winning logit beats the runner-up by at least this much (asserted on the reference's logits): far
# above 2 * TOL, so frameworks whose logits on that sequence agree within TOL (also asserted) must pick the same
# token at every step; a difference in the tokens is then a difference in the models, not a tie broken otherwise.
MIN_GAP = 50 * TOL

FORMATS = {"safetensors": "model.safetensors", "pytorch": "pytorch_model.bin", "tf": "tf_model.h5",
           "flax": "flax_model.msgpack", "openai": "model.ckpt.index"}


class Store:
    """Checkpoints, loaded models and outputs, each made once for the whole module."""

    def __init__(self, root: Path):
        self.root = root
        self._cache: dict[tuple, object] = {}

    def _once(self, key: tuple, make):
        if key not in self._cache:
            self._cache[key] = make()
        return self._cache[key]

    def folder(self, name: str) -> Path:
        """A checkpoint written by our torch model's save_pretrained: "gen" or a name of CONFIGS."""
        return self._once(("folder", name), lambda: self._write(name))

    def _write(self, name: str) -> Path:
        import torch

        import gpt2.torch as ours
        from gpt2.common.config import GPT2Config

        config = GEN if name == "gen" else {**BASE, **CONFIGS[name]}
        torch.manual_seed(GEN_SEED if name == "gen" else 0)
        model = ours.GPT2LMHeadModel(GPT2Config(**config)).eval()
        folder = self.root / name
        model.save_pretrained(folder)
        return folder

    def model(self, fw: str, name: str):
        return self._once(("model", fw, name), lambda: ADAPTERS[fw].load(self.folder(name)))

    def logits(self, fw: str, name: str, case: str) -> np.ndarray:
        return self._once(("logits", fw, name, case),
                          lambda: ADAPTERS[fw].logits(self.model(fw, name), **CASES[case]))

    def sequence_logits(self, fw: str, tokens: np.ndarray) -> np.ndarray:
        """The plain forward over a generated sequence (GEN_MASK extended by ones, positions from it)."""
        mask = np.concatenate([GEN_MASK, np.ones((len(tokens), NEW_TOKENS), dtype=GEN_MASK.dtype)], axis=1)
        return self._once(("sequence", fw, tokens.tobytes()), lambda: ADAPTERS[fw].logits(
            self.model(fw, "gen"), tokens, mask, positions_from_mask(mask)))

    def greedy(self, fw: str) -> np.ndarray:
        return self._once(("greedy", fw), lambda: ADAPTERS[fw].greedy(
            self.model(fw, "gen"), GEN_IDS, GEN_MASK, max_new_tokens=NEW_TOKENS))


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    adapter("torch")  # every checkpoint here is written by our torch model
    return Store(tmp_path_factory.mktemp("parity"))


def pair(names: tuple[str, str]):
    return adapter(names[0]), adapter(names[1])


def assert_close(a: np.ndarray, b: np.ndarray, what: str, tol: float = TOL) -> None:
    assert a.shape == b.shape, f"{what}: shapes {a.shape} and {b.shape}"
    err = np.abs(a.astype(np.float64) - b.astype(np.float64))
    where = np.unravel_index(int(err.argmax()), err.shape)
    assert err.max() <= tol, f"{what}: max-abs {err.max():.3g} > {tol:g} at (row, position, token) {where}"


# -- logits on every attention flag, left padding, lengths near n_positions ------------------------------------------
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("config", list(CONFIGS))
@pytest.mark.parametrize("names", PAIRS, ids="-".join)
def test_logits_match(store, names, config, case):
    a, b = pair(names)
    la, lb = store.logits(a.name, config, case), store.logits(b.name, config, case)
    T = CASES[case]["ids"].shape[1]
    assert la.shape == (len(CASES[case]["ids"]), T, BASE["vocab_size"])
    assert np.isfinite(la).all() and np.isfinite(lb).all()
    mask = CASES[case]["attention_mask"]
    if mask is None:
        assert_close(la, lb, f"{a}-{b} {config} {case}")
    else:  # real tokens first (the numbers that matter), then the padding rows (the half-mask-value rule)
        assert_close(la[mask == 1], lb[mask == 1], f"{a}-{b} {config} {case}, real tokens")
        assert_close(la[mask == 0], lb[mask == 0], f"{a}-{b} {config} {case}, padding positions")


def test_the_flags_change_the_logits(store):
    """The configs are distinct computations (else the flag cases would test nothing): torch's logits differ
    between each flag config and the default by far more than TOL, on the same weights. reorder_and_upcast_attn
    alone is the exception: it changes only the order and precision of the scaling (transformers'
    _upcast_and_reordered_attn), the same maths in fp32; there it is tested for running the same in every
    framework, and with the other flags in "all-flags"."""
    torch_ = adapter("torch")
    base = store.logits(torch_.name, "default", "T=n_positions-1")
    for config in CONFIGS:
        if config not in ("default", "reorder-upcast"):
            diff = np.abs(store.logits(torch_.name, config, "T=n_positions-1") - base).max()
            assert diff > 100 * TOL, (config, diff)


def test_left_padding_is_only_padding(store):
    """Left padding with position ids from the mask gives each row the logits of its unpadded prompt (torch, the
    reference the pairs are compared with), so the padded case tests padding, not a different input."""
    torch_ = adapter("torch")
    case = CASES["left-pad-T=n_positions"]
    model = store.model(torch_.name, "all-flags")
    padded = store.logits(torch_.name, "all-flags", "left-pad-T=n_positions")
    for row, mask in enumerate(case["attention_mask"]):
        alone = torch_.logits(model, case["ids"][row:row + 1, mask == 1])
        assert_close(padded[row, mask == 1], alone[0], f"row {row}", tol=1e-5)


# -- greedy generation ----------------------------------------------------------------------------------------------
def _reference_gaps(store) -> tuple[np.ndarray, np.ndarray]:
    """torch's greedy tokens, and for each generated token the top-1 minus top-2 logit of the plain forward over the
    whole sequence (mask extended by ones, positions from it), asserting that forward's argmax is each token."""
    torch_ = adapter("torch")
    tokens = store.greedy(torch_.name)
    T = GEN_IDS.shape[1]
    assert tokens.shape == (len(GEN_IDS), T + NEW_TOKENS)
    assert np.array_equal(tokens[:, :T], GEN_IDS)
    logits = store.sequence_logits(torch_.name, tokens)
    steps = logits[:, T - 1:-1]  # (B, NEW_TOKENS, V): the logits each new token was chosen from
    assert np.array_equal(steps.argmax(-1), tokens[:, T:]), "torch's generate() is not its forward's argmax"
    top2 = np.sort(steps, axis=-1)[..., -2:]
    return tokens, top2[..., 1] - top2[..., 0]


def test_greedy_is_decided_by_clear_margins(store):
    """Guards the next test: no step is near a tie, so equal tokens mean equal models, not luck."""
    tokens, gaps = _reference_gaps(store)
    assert gaps.min() >= MIN_GAP, f"smallest top-2 gap {gaps.min():.3g}: pick another GEN_SEED"
    assert len(np.unique(tokens[:, GEN_IDS.shape[1]:])) > 10  # not one token repeated


@pytest.mark.parametrize("names", PAIRS, ids="-".join)
def test_greedy_tokens_match(store, names):
    """The same tokens, and the same logits (within TOL) on the reference's sequence: with MIN_GAP > 2 * TOL the
    second makes the first a test of the models (their decoding loops and caches), not of tie-breaking."""
    a, b = pair(names)
    tokens, _ = _reference_gaps(store)
    ta, tb = store.greedy(a.name), store.greedy(b.name)
    assert ta.shape == tb.shape == (len(GEN_IDS), GEN_IDS.shape[1] + NEW_TOKENS), (ta.shape, tb.shape)
    differ = np.argwhere(ta != tb)
    assert not len(differ), f"{a} and {b} first differ at (row, position) {tuple(differ[0])}"
    real = np.concatenate([GEN_MASK, np.ones((len(tokens), NEW_TOKENS), dtype=GEN_MASK.dtype)], axis=1) == 1
    assert_close(store.sequence_logits(a.name, tokens)[real], store.sequence_logits(b.name, tokens)[real],
                 f"{a}-{b} logits on the generated sequence")  # padding positions: test_logits_match


# -- every format gpt2 convert writes, in every framework ------------------------------------------------------------
def _write_openai(state: dict[str, np.ndarray], config, folder: Path) -> None:
    """OpenAI's TF checkpoint layout (gpt-2/src/model.py's names, conv weights [1, in, out], hparams.json), written
    with TensorFlow's own bundle writer; ``gpt2 convert`` reads this format but does not write it."""
    import tensorflow as tf

    from gpt2.common.formats.openai_tf import key_of

    names, tensors = [], []
    for name, array in state.items():
        mapped = key_of(name)
        assert mapped is not None, name
        names.append(mapped[0])
        tensors.append(tf.constant(array[None] if mapped[1] == "openai_conv" else array))
    folder.mkdir(parents=True)
    tf.raw_ops.SaveV2(prefix=str(folder / "model.ckpt"), tensor_names=names, shape_and_slices=[""] * len(names),
                      tensors=tensors)
    (folder / "checkpoint").write_text('model_checkpoint_path: "model.ckpt"\n')
    hparams = dict(n_vocab=config.vocab_size, n_ctx=config.n_positions, n_embd=config.n_embd, n_head=config.n_head,
                   n_layer=config.n_layer)
    (folder / "hparams.json").write_text(json.dumps(hparams))


@pytest.fixture(scope="module")
def formats(store):
    """format -> a folder holding only that format: `gpt2 convert SRC DST --to FORMAT` of the "default" checkpoint
    (tied embeddings, default flags: what OpenAI's format can hold), and OpenAI's layout written from it."""
    from gpt2.cli import main
    from gpt2.common.checkpoint import load_checkpoint

    src = store.folder("default")
    out = {}
    for fmt in FORMATS:
        dst = store.root / f"as-{fmt}"
        if fmt == "openai":
            if ADAPTERS["tf"].skip_reason() is not None:
                continue  # written with TensorFlow's bundle writer; the cases skip below
            state, config = load_checkpoint(src)
            _write_openai(state, config, dst)
        else:
            assert main(["convert", str(src), str(dst), "--to", fmt]) == 0
        weights = {p.name for p in dst.iterdir()} & set(FORMATS.values())
        assert weights == {FORMATS[fmt]}, (fmt, weights)  # that format and no other: no fallback to load
        out[fmt] = dst
    return out


@pytest.mark.parametrize("fmt", list(FORMATS))
@pytest.mark.parametrize("fw", NAMES)
def test_every_format_loads_in_every_framework(store, formats, fw, fmt):
    """The same logits as torch's from the original checkpoint (within TOL), and exactly this framework's own from
    the original: a conversion changes no weight."""
    ours = adapter(fw)
    if fmt not in formats:
        pytest.skip(f"OpenAI's checkpoint is written with TensorFlow here: {ADAPTERS['tf'].skip_reason()}")
    case = CASES["left-pad-T=n_positions"]
    got = ours.logits(ours.load(formats[fmt]), **case)
    assert_close(got, store.logits("torch", "default", "left-pad-T=n_positions"), f"{fw} from {fmt} vs torch")
    np.testing.assert_array_equal(got, store.logits(fw, "default", "left-pad-T=n_positions"),
                                  err_msg=f"{fw}: {fmt} vs the original safetensors")
