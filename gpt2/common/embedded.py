"""The model shipped inside the package: ``gpt2-tiny-kjv``, a 4-layer GPT-2 trained on the King James Bible.

``from_pretrained("gpt2-tiny-kjv")`` (GPT2Config, the tokenizers, every framework's models) finds it offline:
``hub.resolve_file`` looks for a local folder of that name first, then here, then in the Hugging Face cache / hub.
It is what ``gpt2 generate`` uses when no ``--model`` is given. Its card (data, training, held-out perplexity) is
``gpt2/data/gpt2-tiny-kjv/README.md``; ``scripts/train_embedded.py`` rebuilds it.

>>> from gpt2.common import embedded
>>> embedded.NAME, embedded.folder("gpt2-tiny-kjv")      # ('gpt2-tiny-kjv', PosixPath('.../gpt2/data/gpt2-tiny-kjv'))
"""

from __future__ import annotations

import os
from pathlib import Path

NAME = "gpt2-tiny-kjv"  # not a Hugging Face hub id (the hub's names without an owner are a fixed, older set)
FOLDER = Path(__file__).resolve().parent.parent / "data" / NAME


def folder(name_or_path: str | os.PathLike) -> Path | None:
    """The embedded model's folder when ``name_or_path`` is its name (exactly) and the package holds it, else None.
    A path (anything but the bare name) never resolves here: a local folder is the caller's business."""
    if not isinstance(name_or_path, str) or name_or_path != NAME:
        return None
    return FOLDER if (FOLDER / "config.json").is_file() else None
