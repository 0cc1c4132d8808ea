"""gpt2.common.loading (the framework-free half of from_pretrained) and the shape of gpt2.common's imports: no
cycle, no reach into another module's private names."""

from __future__ import annotations

import ast
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from conftest import TINY
from gpt2.common import loading
from gpt2.common.checkpoint import save_checkpoint, trunk_shapes
from gpt2.common.config import GPT2Config
from gpt2.common.generation import GenerationConfig

PACKAGE = Path(__file__).resolve().parents[2] / "gpt2"


def _saved(folder: Path, fmt: str = "safetensors", **config) -> GPT2Config:
    config = GPT2Config(**{**TINY, **config})
    rng = np.random.default_rng(0)
    state = {n: rng.standard_normal(s).astype(np.float32) for n, s in trunk_shapes(config).items()}
    save_checkpoint(state, folder, config, format=fmt, architecture="GPT2LMHeadModel")
    return config


def test_prepare_reads_config_and_state_and_applies_overrides_to_a_copy(tmp_path):
    _saved(tmp_path)
    plan = loading.prepare("GPT2ForSequenceClassification", tmp_path, num_labels=3, resid_pdrop=0.0,
                           low_cpu_mem_usage=True, trust_remote_code=False)
    assert plan.config.num_labels == 3 and plan.config.resid_pdrop == 0.0
    assert plan.format == "safetensors" and plan.source.name == "model.safetensors"
    assert plan.where == "GPT2ForSequenceClassification.from_pretrained()"
    assert "transformer.wte.weight" in plan.state and plan.checkpoint_dtype() == "float32"
    given = GPT2Config.from_pretrained(tmp_path)
    before = given.to_dict()
    plan = loading.prepare("GPT2Model", tmp_path, config=given)
    assert plan.config is not given and plan.config.to_dict() == before
    plan = loading.prepare("GPT2Model", tmp_path, config=given, n_positions=TINY["n_positions"], num_labels=5)
    assert given.to_dict() == before and plan.config.num_labels == 5


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(token="hf_x"), TypeError, r"GPT2Model.from_pretrained\(\): token= is not supported.*HF_TOKEN"),
    (dict(subfolder="x"), TypeError, "subfolder= is not supported"),
    (dict(weights_only=False), TypeError, "never unpickled"),
    (dict(n_layerz=3), TypeError, "unexpected keyword argument.*n_layerz"),
    (dict(config={"n_layer": 2}), TypeError, "config must be a GPT2Config"),
    (dict(use_safetensors=False), ValueError, "use_safetensors=False.*'safetensors' format"),
])
def test_prepare_refuses_by_name(tmp_path, kwargs, error, match):
    _saved(tmp_path)
    with pytest.raises(error, match=match):
        loading.prepare("GPT2Model", tmp_path, **kwargs)


def test_use_safetensors_true_needs_safetensors(tmp_path):
    _saved(tmp_path, fmt="flax")
    with pytest.raises(FileNotFoundError, match="use_safetensors=True.*'flax' format.*gpt2 convert"):
        loading.prepare("GPT2Model", tmp_path, use_safetensors=True)
    assert loading.prepare("GPT2Model", tmp_path).format == "flax"


def test_loading_options_are_shared_with_the_tokenizers():
    assert loading.loading_options({"from_tf": True, "padding_side": "left"}, "x") == {"padding_side": "left"}
    with pytest.raises(TypeError, match="x: force_download=True is not supported"):
        loading.loading_options({"force_download": True}, "x")


def test_report_warns_and_returns_transformers_loading_info(tmp_path):
    _saved(tmp_path)
    plan = loading.prepare("GPT2ForTokenClassification", tmp_path)
    with pytest.warns(UserWarning, match="newly initialised.*classifier.weight, classifier.bias"):
        info = loading.report(plan, ["classifier.weight", "classifier.bias"], [])
    assert info == {"missing_keys": ["classifier.weight", "classifier.bias"], "unexpected_keys": [],
                    "mismatched_keys": [], "error_msgs": []}
    with pytest.warns(UserWarning, match="does not use: lm_head.weight"):
        loading.report(plan, [], ["lm_head.weight"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert loading.report(plan, [], [])["missing_keys"] == []


def test_generation_config_beside_the_weights(tmp_path):
    _saved(tmp_path)
    assert loading.generation_config(tmp_path) is None
    GenerationConfig(max_new_tokens=7).save_pretrained(tmp_path)
    assert loading.generation_config(tmp_path).max_new_tokens == 7
    assert loading.generation_config(tmp_path / "model.safetensors").max_new_tokens == 7  # a single file: beside it


# -- the shape of gpt2.common's imports ------------------------------------------------------------------------------
def _common_modules() -> dict[str, Path]:
    root = PACKAGE / "common"
    return {"gpt2.common." + ".".join(p.relative_to(root).with_suffix("").parts).removesuffix(".__init__"): p
            for p in sorted(root.rglob("*.py"))}


def _imported(module: str, path: Path, known: set[str]) -> set[str]:
    """The gpt2.common modules that ``module`` imports anywhere (module level or inside a function), except in a
    module-level ``__getattr__`` (PEP 562: an old import path resolved on first use, by design after both modules
    are loaded)."""
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found = set()
    tree = ast.parse(path.read_text(encoding="utf-8"))
    shims = {id(n) for top in tree.body if isinstance(top, ast.FunctionDef) and top.name == "__getattr__"
             for n in ast.walk(top)}
    for node in ast.walk(tree):
        if id(node) in shims:
            continue
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            names = [base] + [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        found |= {n for n in names if n in known and n != module}
    return found


def test_gpt2_common_imports_form_no_cycle():
    modules = _common_modules()
    graph = {m: _imported(m, p, set(modules)) for m, p in modules.items()}
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for n in sorted(graph[m]):
            if n.startswith(m + "."):  # a package importing its own submodule is no cycle
                continue
            if state.get(n) == 1:
                cycle = path[path.index(n):] + [n] if n in path else [m, n]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if n not in state:
                visit(n, path + [n])
        state[m] = 2

    for m in graph:
        if m not in state:
            visit(m, [m])


@pytest.mark.parametrize("module", [m for m in _common_modules() if not m.endswith("__main__")])
def test_each_common_module_imports_fresh(module):
    done = subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True, text=True,
                          cwd=PACKAGE.parent)
    assert done.returncode == 0, done.stderr[-2000:]




def test_no_module_reaches_into_another_modules_private_names():
    """``from .x import _name`` and ``x._name`` on a module of the package: a private name is the module's own."""
    problems = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = str(path.relative_to(PACKAGE))
        tree = ast.parse(path.read_text(encoding="utf-8"))
        modules = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level:
                for alias in node.names:
                    if alias.name.startswith("_") and not alias.name.startswith("__"):
                        problems.append(f"{rel}:{node.lineno}: from {'.' * node.level}{node.module or ''} import "
                                        f"{alias.name}")
                    if node.module is None or (node.module in ("formats", "common") and alias.name):
                        modules.add(alias.asname or alias.name)
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in modules \
                    and node.attr.startswith("_") and not node.attr.startswith("__"):
                problems.append(f"{rel}:{node.lineno}: {node.value.id}.{node.attr}")
    assert not problems, "\n".join(problems)
