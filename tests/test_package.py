"""Packaging promises: importing gpt2 imports no framework; public names resolve lazily."""

import subprocess
import sys


def test_import_gpt2_imports_no_framework():
    code = (
        "import sys, gpt2, gpt2.common.checkpoint, gpt2.common.convert, gpt2.cli\n"
        "from gpt2 import GPT2Config, GPT2Tokenizer, GPT2TokenizerFast, load_checkpoint\n"
        "GPT2Config.from_pretrained('gpt2')\n"
        "GPT2TokenizerFast.from_pretrained('gpt2')(['a b', 'c'], return_tensors=None)\n"
        "bad = [m for m in ('torch', 'tensorflow', 'jax', 'flax', 'transformers') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_public_names():
    import gpt2

    for name in gpt2.__all__:
        assert getattr(gpt2, name) is not None
