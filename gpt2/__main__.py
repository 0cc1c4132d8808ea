"""``python -m gpt2`` — the gpt2 command (see gpt2/cli.py)."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
