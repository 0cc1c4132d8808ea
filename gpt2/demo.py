"""``gpt2 demo`` (and ``make demo``): what the package does, end to end, offline.

1. Text generation in each installed framework (PyTorch, TensorFlow, JAX/Flax) with the model the package ships
   (``gpt2-tiny-kjv``, see gpt2/data/gpt2-tiny-kjv/README.md) or ``--model`` (a folder in any checkpoint format, or
   a name): the same greedy text three times, streamed on a terminal.
2. A checkpoint tour: a random GPT-2 converted through every format the package writes, each result read back and
   checked bit for bit.
"""

from __future__ import annotations

import importlib.util
import tempfile
import time
from pathlib import Path

import numpy as np

from .common.checkpoint import WRITABLE_FORMATS, all_shapes, load_checkpoint, save_checkpoint, trunk_shapes
from .common.config import GPT2Config
from .common.convert import convert

_NAMES = {"torch": "PyTorch", "tf": "TensorFlow", "flax": "JAX/Flax"}
_MODULES = {"torch": "torch", "tf": "tensorflow", "flax": "flax"}


def random_state(config: GPT2Config, seed: int = 0, heads: tuple[str, ...] = (), std: float = 0.02
                 ) -> dict[str, np.ndarray]:
    """A random canonical state for ``config`` (trunk, plus the tensors of ``heads`` such as "score"): normal
    values of standard deviation ``std`` (GPT-2's initializer_range by default; larger gives peakier logits)."""
    rng = np.random.default_rng(seed)
    shapes = trunk_shapes(config)
    shapes.update({n: s for n, s in all_shapes(config).items() if n.split(".")[0] in heads})
    return {n: (rng.standard_normal(s) * std).astype(np.float32) for n, s in shapes.items()}


def installed(framework: str) -> bool:
    return importlib.util.find_spec(_MODULES[framework]) is not None


def generate_text(model: str, prompt: str, framework: str, max_new_tokens: int = 30) -> None:
    """Greedy text from ``model`` in ``framework``, streamed on a terminal, then the tokens and time it took."""
    from .commands import generate

    print(f"generating with {model} in {_NAMES[framework]}:", flush=True)
    result = generate([prompt], model=model, framework=framework, max_new_tokens=max_new_tokens,
                      note=lambda text: print(f"({text})"))[0]
    print(f"({result.new_tokens[0]} tokens in {result.seconds:.2f}s, greedy)\n", flush=True)


def run_demo(model_path: str | None = None, prompt: str = "In the beginning",
             frameworks: tuple[str, ...] = ("torch", "tf", "flax")) -> int:
    from .commands import default_model

    model = model_path or default_model()
    if model is None:
        print("(text generation skipped: this package ships no model; pass --model FOLDER_OR_NAME)\n")
    else:
        for framework in frameworks:
            if installed(framework):
                generate_text(str(model), prompt, framework)
            else:
                print(f"(generation in {_NAMES[framework]} skipped: it is not installed)\n")
    config = GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=1000, n_positions=128)
    state = random_state(config)
    formats = [f for f in WRITABLE_FORMATS if f != "pytorch" or installed("torch")]
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
