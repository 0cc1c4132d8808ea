#!/usr/bin/env python
"""Train the model shipped in the package (``gpt2/data/gpt2-tiny-kjv``) from nothing, reproducibly.

    python scripts/train_embedded.py                      # fetch the text, train, write gpt2/data/gpt2-tiny-kjv
    python scripts/train_embedded.py --fetch-only         # only fetch and extract the text (prints its sha256)
    python scripts/train_embedded.py --steps 20 --dest /tmp/try   # a quick try somewhere else

1. **The text.** The King James Bible (1611; public domain) from Debian's ``bible-kjv-text`` package, whose data
   file is compressed in the format of Debian's ``bible`` program (package ``bible-kjv``). Both packages are fetched
   with ``apt-get download`` and unpacked with ``dpkg -x`` into the cache folder (default ``~/.cache/gpt2/bible-kjv``,
   or ``--cache-dir``); ``bible -f "gen1:1-rev22:21"`` prints the 31,102 verses, one a line, each after its reference
   (``Ge1:1 In the beginning ...``); the references are dropped (they are not English, and a model that learnt them
   would print them), giving ``kjv.txt``: one verse a line. Its sha256 is checked against ``TEXT_SHA256`` (another
   Debian release of the text is refused unless ``--accept-other-text``) and written into the model card. Its words
   (letters only, lower-cased, sorted) go to ``tests/data/kjv-words.txt``: the tests' list of real words.
2. **Training** with the project's own trainer (``gpt2.common.training.train``, ``--framework torch``: the
   fastest on a CPU here): a new 4-layer GPT-2 with OpenAI's vocabulary, dropout 0 (one pass over the data), AdamW,
   warmup then cosine decay, a held-out 5% of the blocks for validation. ``--seed`` fixes the initialisation and the
   data order: the same seed on the same software stack (and the same torch thread count) gives the same weights.
3. **The shipped folder**: the trained fp32 weights cast to fp16 (``model.safetensors``), ``config.json``,
   ``generation_config.json``, the tokenizer's files (OpenAI's vocab.json and merges.txt, model_max_length =
   n_positions: the folder is a complete model folder, usable by path or copied anywhere), ``loss.png`` and a model
   card ``README.md`` (data, sha256, config, steps, wall time, held-out perplexity in fp32 and with the fp16
   weights, a greedy sample with and without the repetition penalty of generation_config.json). The folder is
   written beside the destination and renamed into place.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import math
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

NAME = "gpt2-tiny-kjv"
DEST = ROOT / "gpt2" / "data" / NAME
PACKAGES = ("bible-kjv-text", "bible-kjv")  # the text, and the program that reads its compressed format
TEXT_SHA256 = "b55e956fcf5f187160b3d0dfa93bbac269d127902ad9fb6c8f05a5dab019f6d5"  # kjv.txt from bible-kjv-text 4.38
VERSES = 31102
RANGE = "gen1:1-rev22:21"
REFERENCE = re.compile(r"^(?:[1-3])?[A-Z][A-Za-z]*\d+:\d+ ")  # Ge1:1, 1Co13:4, Rev22:21, Song1:1

# The model (n_positions = the block size: the card says the context it was trained on).
CONFIG = dict(vocab_size=50257, n_positions=256, n_embd=128, n_layer=4, n_head=4, resid_pdrop=0.0, embd_pdrop=0.0,
              attn_pdrop=0.0, bos_token_id=50256, eos_token_id=50256)
TRAIN = dict(steps=2400, batch_size=4, block_size=256, lr=2e-3, warmup=100, min_lr_ratio=0.1, weight_decay=0.1,
             clip=1.0, precision="fp32", val_fraction=0.05, seed=1234)
WORDS = ROOT / "tests" / "data" / "kjv-words.txt"  # the text's words, for the tests' "real words" check
THREADS = 1  # torch's intra-op threads: one thread rounds the same on any machine, and a shared CPU is not a barrier
PROMPT = "In the beginning"
SAMPLE_TOKENS = 20
# generation_config.json's repetition_penalty (transformers' rule: a token already in the text has its logit divided
# by it when positive, multiplied when negative). Greedy decoding of a model this small loops without it ("In the
# beginning of the LORD, and the LORD, and the LORD, ..."); the default a hub model sets for its demo use, and
# generate(repetition_penalty=1.0) turns it off.
REPETITION_PENALTY = 1.3


def default_cache() -> Path:
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(xdg) / "gpt2" / "bible-kjv"


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def run(command: list[str], cwd: Path | None = None, env: dict | None = None) -> str:
    try:
        done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    except FileNotFoundError:
        raise SystemExit(f"train_embedded: {command[0]!r} is not installed (a Debian/Ubuntu system with apt-get and "
                         f"dpkg is needed to fetch the text)") from None
    if done.returncode != 0:
        raise SystemExit(f"train_embedded: {' '.join(command)} failed ({done.returncode}): "
                         f"{(done.stderr or done.stdout).strip()[-500:]}")
    return done.stdout


# -- 1. the text -------------------------------------------------------------------------------------------------------
def fetch_text(cache: Path, accept_other: bool = False) -> tuple[Path, dict]:
    """kjv.txt in ``cache`` (made once, reused): one verse a line, references dropped. Returns (path, provenance)."""
    cache.mkdir(parents=True, exist_ok=True)
    text = cache / "kjv.txt"
    debs = {}
    for package in PACKAGES:
        found = sorted(cache.glob(f"{package}_*.deb"))
        if not found:
            run(["apt-get", "download", package], cwd=cache)
            found = sorted(cache.glob(f"{package}_*.deb"))
            if not found:
                raise SystemExit(f"train_embedded: apt-get download {package} left no {package}_*.deb in {cache}")
        debs[package] = found[-1]
    if not text.is_file():
        root = cache / "root"
        for deb in debs.values():
            run(["dpkg", "-x", str(deb), str(root)])
        program, data = root / "usr" / "bin" / "bible", root / "usr" / "lib"
        env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}  # no line wrapping
        out = run([str(program), "-f", "-p", str(data), RANGE], env=env)
        lines = [line for line in out.splitlines() if line.strip()]
        verses = []
        for number, line in enumerate(lines, 1):
            if not REFERENCE.match(line):
                raise SystemExit(f"train_embedded: line {number} of bible's output has no verse reference (a "
                                 f"wrapped line?): {line[:80]!r}")
            verses.append(REFERENCE.sub("", line, count=1).strip())
        if len(verses) != VERSES:
            raise SystemExit(f"train_embedded: bible printed {len(verses)} verses, expected {VERSES}")
        temporary = text.with_name(f".{text.name}.{os.getpid()}.tmp")
        temporary.write_text("\n".join(verses) + "\n", encoding="utf-8")
        os.replace(temporary, text)
    digest = sha256(text)
    if digest != TEXT_SHA256 and not accept_other:
        raise SystemExit(f"train_embedded: {text} has sha256 {digest}, not the {TEXT_SHA256} this script was run "
                         f"with (another release of {PACKAGES[0]}?); pass --accept-other-text to train on it anyway")
    provenance = {"text": str(text), "text_sha256": digest, "bytes": text.stat().st_size,
                  "debs": {p: {"file": d.name, "sha256": sha256(d)} for p, d in debs.items()}}
    return text, provenance


def write_words(text: Path, target: Path) -> None:
    """Every word of the text (letters only, lower-cased), one a line, sorted: what the tests call a real word."""
    words = sorted({w.lower() for w in re.findall(r"[A-Za-z]+", text.read_text(encoding="utf-8"))})
    temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    temporary.write_text("\n".join(words) + "\n", encoding="utf-8")
    os.replace(temporary, target)


# -- 2. training -------------------------------------------------------------------------------------------------------
def train(text: Path, work: Path, settings: dict, progress: bool) -> tuple[dict, float]:
    """Train into ``work/run``; (the trainer's summary, seconds). A ``work`` folder whose run already finished with
    these settings is reused (so that a failure after training, while writing the folder, costs no retraining)."""
    import torch

    from gpt2.common import training

    torch.set_num_threads(THREADS)
    done = work / "train_summary.json"
    if done.is_file():
        record = json.loads(done.read_text())
        if record["settings"] == settings and record["config"] == CONFIG:
            print(f"reusing the finished run in {work / 'run'}", file=sys.stderr)
            return record["summary"], record["seconds"]
        raise SystemExit(f"train_embedded: {work} holds a run with other settings; give another --work")
    config = work / "config.json"
    config.write_text(json.dumps(CONFIG, indent=2) + "\n")
    args = training.TrainArgs(framework="torch", data=str(text), config=str(config), out=str(work / "run"),
                              eval_every=0, save_every=0, eval_batches=10**6, log_every=10, keep_checkpoints=1,
                              progress=progress, **settings)
    started = time.perf_counter()
    summary = training.train(args)
    seconds = time.perf_counter() - started
    record = {"settings": settings, "config": CONFIG, "summary": summary, "seconds": seconds}
    done.write_text(json.dumps(record, indent=2, default=str) + "\n")
    return summary, seconds


def held_out_loss(folder: Path, text: Path, settings: dict) -> tuple[float, int, int]:
    """Mean next-token loss over every held-out block (the trainer's split), with the model in ``folder`` run in
    fp32. Returns (loss, tokens scored, tokens in the training blocks)."""
    import numpy as np
    import torch

    from gpt2.common.data import eval_batches, prepare, split_blocks
    from gpt2.torch import GPT2LMHeadModel

    tokens = prepare(text, progress=False)
    train_blocks, val = split_blocks(tokens, settings["block_size"], seed=settings["seed"], val_fraction=settings["val_fraction"],
                          min_val_blocks=settings["batch_size"])
    model = GPT2LMHeadModel.from_pretrained(folder).float().eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for batch in eval_batches(val, settings["batch_size"]):
            ids = torch.from_numpy(np.asarray(batch, dtype=np.int64))
            logits = model(ids).logits.float()
            loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]),
                                                     ids[:, 1:].reshape(-1), reduction="sum")
            total += float(loss)
            count += ids[:, 1:].numel()
    return total / count, count, len(train_blocks) * settings["block_size"]


def greedy(folder: Path, prompt: str, tokens: int, repetition_penalty: float = REPETITION_PENALTY) -> str:
    from gpt2.common.tokenizer import GPT2Tokenizer
    from gpt2.torch import GPT2LMHeadModel

    tokenizer = GPT2Tokenizer.from_pretrained(folder)
    model = GPT2LMHeadModel.from_pretrained(folder).float().eval()
    ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
    out = model.generate(ids, max_new_tokens=tokens, do_sample=False, repetition_penalty=repetition_penalty)
    return tokenizer.decode(out[0])


# -- 3. the shipped folder ---------------------------------------------------------------------------------------------
def write_folder(run_dir: Path, dest: Path, card: str) -> None:
    """fp16 weights, config, generation config, tokenizer config, loss.png and the card into ``dest`` (atomically:
    a temporary folder beside it, renamed into place; an older folder is removed only after)."""
    import numpy as np
    from safetensors.numpy import load_file, save_file

    from gpt2.common.generation import GenerationConfig
    from gpt2.common.tokenizer import GPT2Tokenizer

    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent))
    try:
        weights = load_file(str(run_dir / "model.safetensors"))
        save_file({k: v.astype(np.float16) if v.dtype.kind == "f" else v for k, v in weights.items()},
                  str(staging / "model.safetensors"), metadata={"format": "pt"})
        config = json.loads((run_dir / "config.json").read_text())
        config["torch_dtype"] = "float16"
        (staging / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        GenerationConfig(bos_token_id=50256, eos_token_id=50256, pad_token_id=50256, max_new_tokens=SAMPLE_TOKENS,
                         repetition_penalty=REPETITION_PENALTY).save_pretrained(staging)
        with tempfile.TemporaryDirectory() as scratch:
            GPT2Tokenizer.from_pretrained("gpt2", model_max_length=CONFIG["n_positions"]).save_pretrained(scratch)
            for name in ("vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json"):
                shutil.copy(Path(scratch) / name, staging / name)
        if (run_dir / "loss.png").is_file():
            shutil.copy(run_dir / "loss.png", staging / "loss.png")
        (staging / "README.md").write_text(card)
        for path in staging.iterdir():  # mkdtemp's 0700 and safetensors' 0600: a package's data is world-readable
            path.chmod(0o644)
        staging.chmod(0o755)
        old = None
        if dest.exists():
            old = dest.with_name(f".{dest.name}.old.{os.getpid()}")
            os.replace(dest, old)
        os.replace(staging, dest)
        if old is not None:
            shutil.rmtree(old)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def model_card(provenance: dict, settings: dict, summary: dict, seconds: float, fp32: tuple[float, int, int],
               fp16: tuple[float, int, int], sample: str, plain: str, params: int) -> str:
    import torch

    debs = ", ".join(f"`{d['file']}` (sha256 `{d['sha256']}`)" for d in provenance["debs"].values())
    config_rows = "\n".join(f"| {k} | {v} |" for k, v in CONFIG.items())
    train_rows = "\n".join(f"| {k} | {v} |" for k, v in settings.items())
    tokens = settings["steps"] * settings["batch_size"] * settings["block_size"]
    return f"""# {NAME}

A 4-layer GPT-2 ({params / 1e6:.2f}M parameters, {params - CONFIG['vocab_size'] * CONFIG['n_embd']:,} of them
outside the token embedding) with OpenAI's GPT-2 tokenizer and vocabulary, trained by this project's own trainer on the
King James Bible. It ships inside the `gpt2` package so that the package does its main job offline, in every
framework, out of the box:

```python
from gpt2.torch import GPT2LMHeadModel          # or gpt2.tf.TFGPT2LMHeadModel, gpt2.flax.FlaxGPT2LMHeadModel
from gpt2 import GPT2Tokenizer
model = GPT2LMHeadModel.from_pretrained("{NAME}")  # no download: the name resolves to this folder
```

`from_pretrained("{NAME}")` looks first for a local folder of that name, then for this embedded model, then in the
Hugging Face cache / hub.

**Intended use: a demo and a test fixture.** It writes Bible-flavoured English words and phrases; it knows nothing
else, is not instruction-following, and must not be used for anything that needs facts or judgement.

## Data

- Text: the King James Version of the Bible (1611), all 66 books, {VERSES:,} verses, one a line, verse references
  removed ({provenance['bytes']:,} bytes of UTF-8; sha256 `{provenance['text_sha256']}`).
- Source: Debian's `bible-kjv-text` package, extracted with Debian's `bible` program (package `bible-kjv`):
  {debs}. `scripts/train_embedded.py` fetches both with `apt-get download` and rebuilds the text.
- License of the text: public domain (Debian's copyright file for `bible-kjv-text`: "The copyright for the King James
  Version text of the Bible is expired"). The weights are distributed under the license of this project.
- Validation: {TRAIN['val_fraction']:.0%} of the {settings['block_size']}-token blocks, chosen by the trainer's seeded
  split, held out and never trained on.

## Model

| config | value |
|---|---|
{config_rows}

Stored in fp16 (`model.safetensors`): the fp32 result of training, cast. It runs in fp32 by default (or fp16/bf16).

## Training

`gpt2.common.training.train` (what `gpt2 train` runs) with `--framework torch`, fp32, AdamW (betas 0.9/0.95,
weight decay on the projection matrices only), linear warmup then cosine decay to 10% of the peak rate, gradient
norm clipped to 1.0:

| option | value |
|---|---|
{train_rows}

- {settings['steps']} updates of {settings['batch_size']} x {settings['block_size']} tokens ({tokens:,} tokens, about
  {tokens / fp32[2]:.2f} passes over the training blocks); wall time {seconds / 60:.1f} minutes on
  {platform.machine()} CPU ({THREADS} torch thread; {os.cpu_count()} cores, shared with other jobs), torch {torch.__version__}, Python
  {platform.python_version()}.
- Final training loss {summary.get('loss', float('nan')):.3f}.
- **Held-out perplexity** ({fp32[1]:,} tokens): **{math.exp(fp32[0]):.1f}** (loss {fp32[0]:.4f}) with the fp32
  weights; {math.exp(fp16[0]):.1f} (loss {fp16[0]:.4f}) with the shipped fp16 weights run in fp32.
- Reproduce: `python scripts/train_embedded.py` (seed {settings['seed']}). The same seed on the same software stack
  gives the same weights (one torch thread, so the core count does not matter); another torch version or CPU
  instruction set may round differently.

![training loss](loss.png)

## Greedy sample

Prompt `{PROMPT!r}`, {SAMPLE_TOKENS} new tokens, greedy with the folder's generation settings
(`generation_config.json`: `repetition_penalty` {REPETITION_PENALTY}, `max_new_tokens` {SAMPLE_TOKENS}). The same text
in torch, tf and flax; `tests/cross/test_embedded_generate.py` checks that, that every word occurs in the training
text, and that no three words repeat:

```text
{sample}
```

Without the penalty (`generate(..., repetition_penalty=1.0)`), greedy decoding loops at once:

```text
{plain}
```

## Limitations

A model of this size, trained for {seconds / 60:.0f} minutes on one book, learns the Bible's common words and phrases,
not its sense: its text reads as King James English that goes nowhere. Sampling (`do_sample=True`) varies the text,
not its quality, and any prompt outside that English gets Bible-flavoured text back.

Generated {datetime.date.today().isoformat()}.
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache-dir", type=Path, default=None, help="where the .debs and kjv.txt are kept")
    parser.add_argument("--dest", type=Path, default=DEST, help=f"the model folder to write (default {DEST})")
    parser.add_argument("--work", type=Path, default=None,
                        help="the working folder, kept (default: a temporary folder); a finished run there is reused")
    parser.add_argument("--steps", type=int, default=TRAIN["steps"])
    parser.add_argument("--seed", type=int, default=TRAIN["seed"])
    parser.add_argument("--fetch-only", action="store_true", help="fetch and extract the text, then stop")
    parser.add_argument("--accept-other-text", action="store_true",
                        help=f"train even when kjv.txt's sha256 is not {TEXT_SHA256[:12]}...")
    parser.add_argument("--no-progress", action="store_true")
    options = parser.parse_args(argv)
    if options.steps < 1:
        parser.error(f"--steps must be >= 1, got {options.steps}")

    text, provenance = fetch_text(options.cache_dir or default_cache(), options.accept_other_text)
    print(f"text: {text} ({provenance['bytes']:,} bytes, sha256 {provenance['text_sha256']})", file=sys.stderr)
    write_words(text, WORDS)
    if options.fetch_only:
        return 0
    # A shorter try (--steps) warms up for at most a tenth of its updates.
    settings = {**TRAIN, "steps": options.steps, "seed": options.seed,
                "warmup": min(TRAIN["warmup"], options.steps // 10)}
    owned = options.work is None
    work = Path(tempfile.mkdtemp(prefix="train_embedded.")) if owned else options.work
    work.mkdir(parents=True, exist_ok=True)
    try:
        summary, seconds = train(text, work, settings, progress=not options.no_progress)
        run_dir = work / "run"
        # The trainer's final evaluation covers every held-out block (eval_batches is unbounded) with the fp32
        # weights; the same blocks are scored again below with the shipped fp16 weights.
        fp32 = float(summary["eval_loss"])
        print(f"trained {settings['steps']} updates in {seconds / 60:.1f} min; held-out perplexity "
              f"{math.exp(fp32):.2f}", file=sys.stderr)
        # A first folder with the fp16 weights (its card is rewritten once the fp16 figures and sample are known).
        write_folder(run_dir, options.dest, "")
        fp16 = held_out_loss(options.dest, text, settings)
        sample = greedy(options.dest, PROMPT, SAMPLE_TOKENS)
        plain = greedy(options.dest, PROMPT, SAMPLE_TOKENS, repetition_penalty=1.0)
        import numpy as np
        from safetensors.numpy import load_file

        params = sum(int(np.prod(v.shape)) for v in load_file(str(options.dest / "model.safetensors")).values())
        card = model_card(provenance, settings, summary, seconds, (fp32, *fp16[1:]), fp16, sample, plain, params)
        write_folder(run_dir, options.dest, card)
        print(f"wrote {options.dest}; fp16 held-out perplexity {math.exp(fp16[0]):.2f}; sample: {sample!r}",
              file=sys.stderr)
    finally:
        if owned:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
