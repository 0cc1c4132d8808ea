"""``gpt2 demo``: what the package does today, end to end (no download needed).

1. Text generation with PyTorch: ``--model DIR`` (any checkpoint format, e.g. converted GPT-2 weights) or, without
   one, a tiny random GPT-2 with the real vocabulary (its text is noise, but every step is the real one).
2. A checkpoint tour: a random GPT-2 converted through every format the package writes, each result read back and
   checked bit for bit.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np

from .common.checkpoint import WRITABLE_FORMATS, all_shapes, load_checkpoint, save_checkpoint, trunk_shapes
from .common.config import GPT2Config
from .common.convert import convert


def random_state(config: GPT2Config, seed: int = 0, heads: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
    """A random canonical state for ``config`` (trunk, plus the tensors of ``heads`` such as "score")."""
    rng = np.random.default_rng(seed)
    shapes = trunk_shapes(config)
    shapes.update({n: s for n, s in all_shapes(config).items() if n.split(".")[0] in heads})
    return {n: (rng.standard_normal(s) * 0.02).astype(np.float32) for n, s in shapes.items()}


def generate_text(model_path: str | None, prompt: str, max_new_tokens: int = 30) -> None:
    import torch

    from .common.tokenizer_fast import GPT2TokenizerFast
    from .torch import GPT2LMHeadModel, TextStreamer

    has_vocab = model_path is not None and (Path(model_path) / "vocab.json").is_file()
    tok = GPT2TokenizerFast.from_pretrained(model_path if has_vocab else "gpt2")  # else OpenAI's, shipped
    if model_path:
        model = GPT2LMHeadModel.from_pretrained(model_path)
        print(f"generating with {model_path} ({model.num_parameters() / 1e6:.0f}M parameters):")
    else:
        torch.manual_seed(0)
        model = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=64, n_head=4, initializer_range=0.2)).eval()
        print("generating with a tiny random GPT-2 (real vocabulary, random weights: the text is noise; "
              "pass --model DIR for real weights):")
    inputs = tok(prompt, return_tensors="pt")
    start = time.perf_counter()
    ids = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tok.eos_token_id,
                         streamer=TextStreamer(tok))
    new = ids.shape[1] - inputs["input_ids"].shape[1]
    print(f"({new} tokens in {time.perf_counter() - start:.2f}s, greedy)\n")


def run_demo(model_path: str | None = None, prompt: str = "The quick brown fox") -> int:
    if _has_torch():
        generate_text(model_path, prompt)
    else:
        print("(text generation skipped: PyTorch is not installed)\n")
    config = GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=1000, n_positions=128)
    state = random_state(config)
    formats = [f for f in WRITABLE_FORMATS if f != "pytorch" or _has_torch()]
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "start"
        save_checkpoint(state, src, config, format="safetensors")
        print(f"tiny random GPT-2 ({config.n_layer} layers, n_embd {config.n_embd}, {len(state)} tensors) "
              f"-> {src.name}/model.safetensors")
        previous = src
        for fmt in formats[1:] + formats[:1]:
            dst = Path(tmp) / fmt
            start = time.perf_counter()
            written = convert(previous, dst, to=fmt)
            back, _ = load_checkpoint(dst)
            same = all(np.array_equal(back[k], state[k]) for k in state) and back.keys() == state.keys()
            print(f"convert {previous.name:>11} -> {fmt:<11} {', '.join(p.name for p in written):<40} "
                  f"{(time.perf_counter() - start) * 1e3:6.1f} ms  tensors identical: {same}")
            if not same:
                return 1
            previous = dst
    if "pytorch" not in formats:
        print("(pytorch_model.bin skipped: PyTorch is not installed)")
    print("every format round-tripped exactly")
    return 0


def _has_torch() -> bool:
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True
