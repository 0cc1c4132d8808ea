"""The three implementations stay translations of one another (DESIGN.md in the project's shared folder).

Read with ``ast`` only: nothing here imports the package or a framework. Checked:
- ``gpt2/common`` (and ``gpt2/__init__.py``) imports no framework at module level, and only the few named places
  import one inside a function (``return_tensors``, ``pytorch_model.bin``); nothing in the package imports
  transformers (a test-only oracle);
- no framework folder imports another framework or another framework's folder;
- no float literal >= 1e3 in a model file (mask values come from the dtype, common/numerics.py);
- the torch folder against an explicit outline (its files, the classes in each in order, the attribute paths that
  are checkpoint names, in constructor order, the shape comments of the attention);
- tf/ and flax/, as soon as they exist: the same files as torch/ (less each one's framework-only files), the same
  classes in the same order (public ones with the TF / Flax prefix), the same public methods (forward / call /
  __call__ count as one), the same attributes in constructor order, the same ordered shape comments.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "gpt2"
FRAMEWORK_MODULES = ("torch", "tensorflow", "keras", "tf_keras", "jax", "jaxlib", "flax", "optax", "orbax")
# folder -> (public class prefix, the modules it may import, the other folders' names)
FRAMEWORKS = {
    "torch": ("", {"torch"}),
    "tf": ("TF", {"tensorflow", "keras"}),
    "flax": ("Flax", {"jax", "jaxlib", "flax", "optax", "orbax"}),
}
# Files one framework has and the others do not (DESIGN.md names them; keep both in step).
FRAMEWORK_ONLY = {
    "torch": {"attention.py", "compiled.py", "assisted.py"},
    "tf": {"tokenizer.py", "serving.py"},
    "flax": {"sharding.py"},
}
MODEL_FILES = ("model.py", "heads.py", "attention.py", "cache.py", "compiled.py")
# Framework imports inside a function in common/: where a user asks for that framework's tensors or file format.
COMMON_LAZY_FRAMEWORK_IMPORTS = {
    "common/formats/torch_bin.py": {"torch"},  # pytorch_model.bin is a torch pickle
    "common/encoding.py": {"jax"},  # return_tensors="jax" (pt and tf go through __import__ of the name asked for)
    "commands.py": {"torch", "tensorflow"},  # gpt2 generate / score: the framework the user picks, when it runs
    "cli.py": {"tensorflow"},  # --framework tf: TensorFlow loaded with its start-up log lines held aside
}
# Methods a framework needs for its own machinery, not part of the shared outline.
FRAMEWORK_METHODS = {
    "torch": {"extra_repr"},
    "tf": {"build", "get_config", "compute_output_shape", "serving", "input_signature", "train_step", "test_step",
           "predict_step", "compute_loss", "from_config", "build_from_config"},
    # transformers' FlaxPreTrainedModel conventions: the weights as a pytree, the static cache of its generate loop
    "flax": {"params", "init_cache"},
}
SHAPE_COMMENT = re.compile(r"#\s*(\((?:[A-Za-z0-9_*+\-/ ]+,\s*)*[A-Za-z0-9_*+\-/ ]+\))")


# -- reading -----------------------------------------------------------------------------------------------------
def parse(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def imports(tree: ast.AST, *, module_level_only: bool) -> list[tuple[str, int]]:
    """(top-level module name, line) of every import; relative imports as '.name' (with their level of dots)."""
    nodes = tree.body if module_level_only else list(ast.walk(tree))
    if module_level_only:  # module level includes imports under if/try at the top (TYPE_CHECKING aside)
        nodes = [n for top in tree.body for n in ast.walk(top)
                 if not isinstance(top, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))]
    found = []
    for node in nodes:
        if isinstance(node, ast.Import):
            found += [(alias.name.split(".")[0], node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                found.append(("." * node.level + (node.module or ""), node.lineno))
            else:
                found.append((node.module.split(".")[0], node.lineno))
    return found


def classes(tree: ast.Module) -> list[ast.ClassDef]:
    return [node for node in tree.body if isinstance(node, ast.ClassDef)]


def methods(cls: ast.ClassDef) -> list[str]:
    names = []
    for node in cls.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            name = "forward" if node.name in ("forward", "call", "__call__") else node.name
            names.append(name)
    return names


def constructor_attributes(cls: ast.ClassDef) -> list[str]:
    """The ``self.<name> = ...`` targets of ``__init__``, in order, each once."""
    init = next((n for n in cls.body if isinstance(n, ast.FunctionDef) and n.name == "__init__"), None)
    if init is None:
        return []
    names: list[str] = []
    for node in ast.walk(init):
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(
            node, (ast.AnnAssign, ast.AugAssign)) else []
        for target in targets:
            for t in (target.elts if isinstance(target, ast.Tuple) else [target]):
                if isinstance(t, ast.Attribute) and isinstance(t.value, ast.Name) and t.value.id == "self":
                    if t.attr not in names:
                        names.append(t.attr)
    names.sort(key=lambda n: _first_line(init, n))
    return names


def _first_line(init: ast.FunctionDef, name: str) -> tuple[int, int]:
    for node in ast.walk(init):
        if isinstance(node, ast.Attribute) and node.attr == name and isinstance(node.ctx, ast.Store):
            return node.lineno, node.col_offset
    return 1 << 30, 0


def shape_comments(path: Path) -> list[str]:
    return [m.group(1).replace(" ", "") for line in path.read_text(encoding="utf-8").splitlines()
            for m in [SHAPE_COMMENT.search(line)] if m]


def framework_folders() -> list[str]:
    return [name for name in FRAMEWORKS if (PACKAGE / name).is_dir()]


def python_files(folder: Path) -> dict[str, Path]:
    return {str(p.relative_to(folder)): p for p in sorted(folder.rglob("*.py"))}


# -- the rules for every folder ----------------------------------------------------------------------------------
def test_common_imports_no_framework():
    problems = []
    files = {**{f"common/{k}": v for k, v in python_files(PACKAGE / "common").items()},
             "__init__.py": PACKAGE / "__init__.py", "cli.py": PACKAGE / "cli.py", "__main__.py": PACKAGE / "__main__.py",
             "commands.py": PACKAGE / "commands.py", "demo.py": PACKAGE / "demo.py"}
    for rel, path in files.items():
        tree = parse(path)
        for module, line in imports(tree, module_level_only=True):
            if module in FRAMEWORK_MODULES or module == "transformers":
                problems.append(f"{rel}:{line} imports {module} at module level")
        for module, line in imports(tree, module_level_only=False):
            if module in FRAMEWORK_MODULES and module not in COMMON_LAZY_FRAMEWORK_IMPORTS.get(rel, set()):
                problems.append(f"{rel}:{line} imports {module} (not a place named in COMMON_LAZY_FRAMEWORK_IMPORTS)")
            if module.startswith(".") and module.lstrip(".").split(".")[0] in FRAMEWORKS and rel.startswith("common"):
                problems.append(f"{rel}:{line} imports the framework folder {module}")
    assert not problems, "\n".join(problems)


def test_nothing_in_the_package_imports_transformers():
    problems = [f"{p.relative_to(PACKAGE)}:{line}" for p in PACKAGE.rglob("*.py")
                for module, line in imports(parse(p), module_level_only=False) if module == "transformers"]
    assert not problems, f"transformers is a test-only oracle, imported at: {problems}"


@pytest.mark.parametrize("framework", list(FRAMEWORKS))
def test_no_framework_imports_another(framework):
    folder = PACKAGE / framework
    if not folder.is_dir():
        pytest.skip(f"gpt2/{framework} does not exist yet")
    own = FRAMEWORKS[framework][1]
    others = {m for f, (_, mods) in FRAMEWORKS.items() if f != framework for m in mods} | {"tf_keras"}
    problems = []
    for rel, path in python_files(folder).items():
        for module, line in imports(parse(path), module_level_only=False):
            if module in others and module not in own:
                problems.append(f"{framework}/{rel}:{line} imports {module}")
            if module.startswith("..") and module.lstrip(".").split(".")[0] in set(FRAMEWORKS) - {framework}:
                problems.append(f"{framework}/{rel}:{line} imports {module}")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("framework", list(FRAMEWORKS))
def test_no_large_float_literals_in_model_files(framework):
    """Mask values and other magic numbers come from the dtype (common/numerics.py), not from literals."""
    folder = PACKAGE / framework
    if not folder.is_dir():
        pytest.skip(f"gpt2/{framework} does not exist yet")
    problems = []
    for name in MODEL_FILES:
        path = folder / name
        if not path.is_file():
            continue
        for node in ast.walk(parse(path)):
            if isinstance(node, ast.Constant) and isinstance(node.value, float) and abs(node.value) >= 1e3:
                problems.append(f"{framework}/{name}:{node.lineno}: {node.value!r}")
    assert not problems, "\n".join(problems)


# -- torch against its outline -----------------------------------------------------------------------------------
# The files of gpt2/torch and, per file, its classes in order. TF and Flax translate this outline.
TORCH_OUTLINE = {
    "__init__.py": [],
    "model.py": ["Attention", "MLP", "Block", "GPT2Model"],
    "heads.py": ["GPT2LMHeadModel", "SequenceSummary", "GPT2DoubleHeadsModel", "GPT2ForSequenceClassification",
                 "GPT2ForTokenClassification", "GPT2ForQuestionAnswering"],
    "pretrained.py": ["GPT2PreTrainedModel"],
    "weights.py": [],  # the weight map: functions only (canonical arrays <-> parameters)
    "cache.py": ["KVCache"],
    "generation.py": ["Decoder", "GenerationMixin"],
    "logits_process.py": [],
    "stopping.py": ["Stop"],
    "beam_search.py": [],
    "train.py": [],  # the training loop: functions only (common/training.py holds the framework-free half)
}
# Constructor attributes that are checkpoint names, in the order the constructor sets them (other attributes may
# come between them).
TORCH_ATTRIBUTES = {
    ("model.py", "Attention"): ["c_attn", "c_proj"],
    ("model.py", "MLP"): ["c_fc", "c_proj"],
    ("model.py", "Block"): ["ln_1", "attn", "ln_2", "mlp"],
    ("model.py", "GPT2Model"): ["wte", "wpe", "h", "ln_f"],
    ("heads.py", "GPT2LMHeadModel"): ["transformer", "lm_head"],
    ("heads.py", "GPT2DoubleHeadsModel"): ["transformer", "lm_head", "multiple_choice_head"],
    ("heads.py", "GPT2ForSequenceClassification"): ["transformer", "score"],
    ("heads.py", "GPT2ForTokenClassification"): ["transformer", "classifier"],
    ("heads.py", "GPT2ForQuestionAnswering"): ["transformer", "qa_outputs"],
}
# The shape comments the attention must carry, in this order (all three frameworks write the same).
ATTENTION_SHAPES = ["(B,nh,T,hs)", "(B,T,C)"]


def test_torch_files_and_classes_follow_the_outline():
    folder = PACKAGE / "torch"
    files = python_files(folder)
    assert set(files) == set(TORCH_OUTLINE) | FRAMEWORK_ONLY["torch"], (
        f"gpt2/torch holds {sorted(files)}; the outline names {sorted(set(TORCH_OUTLINE) | FRAMEWORK_ONLY['torch'])}")
    for name, expected in TORCH_OUTLINE.items():
        found = [c.name for c in classes(parse(files[name])) if not c.name.startswith("_")]
        assert found == expected, f"gpt2/torch/{name}: classes {found}, the outline says {expected}"
    for name in FRAMEWORK_ONLY["torch"]:
        assert name in files, f"FRAMEWORK_ONLY names torch/{name}, which does not exist"


def test_torch_attribute_paths_are_checkpoint_names_in_order():
    folder = PACKAGE / "torch"
    for (name, cls_name), expected in TORCH_ATTRIBUTES.items():
        cls = next(c for c in classes(parse(folder / name)) if c.name == cls_name)
        found = [a for a in constructor_attributes(cls) if a in expected]
        assert found == expected, f"torch/{name} {cls_name}: checkpoint attributes {found}, expected {expected}"


def test_torch_attention_shape_comments():
    found = shape_comments(PACKAGE / "torch" / "model.py")
    it = iter(found)
    assert all(any(c == want for c in it) for want in ATTENTION_SHAPES), (
        f"torch/model.py shape comments {found} do not contain {ATTENTION_SHAPES} in order")


# -- tf and flax against torch -----------------------------------------------------------------------------------
def _public_name(name: str, prefix: str) -> str:
    return name[len(prefix):] if prefix and name.startswith(prefix + "GPT2") else name


def _outline(framework: str) -> dict[str, dict]:
    """file -> {"classes": [(name without prefix, methods, attributes)], "shapes": [...]} for the shared files."""
    prefix = FRAMEWORKS[framework][0]
    folder = PACKAGE / framework
    out = {}
    for rel, path in python_files(folder).items():
        if rel in FRAMEWORK_ONLY[framework]:
            continue
        tree = parse(path)
        out[rel] = {
            "classes": [(_public_name(c.name, prefix),
                         [m for m in methods(c) if m == "forward" or (not m.startswith("_")
                                                                        and m not in FRAMEWORK_METHODS[framework])],
                         constructor_attributes(c)) for c in classes(tree) if not c.name.startswith("_")],
            "shapes": shape_comments(path),
        }
    return out


@pytest.mark.parametrize("framework", ["tf", "flax"])
def test_translation_matches_torch(framework):
    if not (PACKAGE / framework).is_dir():
        pytest.skip(f"gpt2/{framework} does not exist yet")
    ours, reference = _outline(framework), _outline("torch")
    assert sorted(ours) == sorted(reference), (
        f"gpt2/{framework} files {sorted(ours)} differ from torch's shared files {sorted(reference)} "
        f"(framework-only files go in FRAMEWORK_ONLY)")
    for rel in reference:
        want, got = reference[rel], ours[rel]
        assert [c[0] for c in got["classes"]] == [c[0] for c in want["classes"]], f"{framework}/{rel}: classes"
        for (name, got_methods, got_attrs), (_, want_methods, want_attrs) in zip(got["classes"], want["classes"]):
            assert got_methods == want_methods, f"{framework}/{rel} {name}: methods {got_methods} vs {want_methods}"
            shared = [a for a in want_attrs if a in got_attrs]
            assert [a for a in got_attrs if a in shared] == shared, (
                f"{framework}/{rel} {name}: attributes {got_attrs} not in torch's order {want_attrs}")
            assert set(want_attrs) <= set(got_attrs), (
                f"{framework}/{rel} {name}: lacks attributes {sorted(set(want_attrs) - set(got_attrs))}")
        assert got["shapes"] == want["shapes"], f"{framework}/{rel}: shape comments {got['shapes']} vs {want['shapes']}"


# -- the checker itself ------------------------------------------------------------------------------------------
def test_the_checker_sees_what_it_checks(tmp_path):
    """The ast readers on a small sample, so that the rules above cannot pass by reading nothing."""
    source = tmp_path / "sample.py"
    source.write_text(
        "import torch\n"
        "from ..tf import x\n"
        "def f():\n    import jax\n"
        "class A:\n"
        "    def __init__(self):\n        self.b = 1\n        self.a, self.c = 2, 3\n"
        "    def call(self, x):\n        y = x  # (B, T, C)\n        return 1e4\n")
    tree = parse(source)
    assert imports(tree, module_level_only=True) == [("torch", 1), ("..tf", 2)]
    assert ("jax", 4) in imports(tree, module_level_only=False)
    (cls,) = classes(tree)
    assert methods(cls) == ["__init__", "forward"] and constructor_attributes(cls) == ["b", "a", "c"]
    assert shape_comments(source) == ["(B,T,C)"]
