"""``gpt2 demo``: what the package does today, end to end, on a tiny random model (no download needed).

It writes a random GPT-2 checkpoint, converts it through every format the package writes, reads each result back
and checks that every tensor survived bit for bit.
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


def run_demo() -> int:
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
