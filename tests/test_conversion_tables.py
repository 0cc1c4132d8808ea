"""conversion/*.md are generated from the format modules; a stale table fails here."""

import importlib.util
from pathlib import Path

import pytest

from gpt2.common.checkpoint import FORMAT_NAMES

ROOT = Path(__file__).resolve().parent.parent


def _make_tables():
    spec = importlib.util.spec_from_file_location("make_tables", ROOT / "conversion" / "make_tables.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("fmt", FORMAT_NAMES)
def test_table_is_current(fmt):
    assert (ROOT / "conversion" / f"{fmt}.md").read_text() == _make_tables().table(fmt), (
        "stale table: run python conversion/make_tables.py")
