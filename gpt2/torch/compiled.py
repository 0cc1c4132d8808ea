"""A fixed-shape decoding step for generate(): captured in a CUDA graph, or compiled with torch.compile; and the
stop check read one step late on CUDA (LateCheck). Framework-only (torch): CUDA graphs, torch.compile, CUDA events.

The eager step (generation.Decoder) attends over the first ``n`` cached positions, so its shapes change with every
token, and GPT2Model.forward checks ids on the host: neither can be captured. This step has the same shapes at every
token: it writes the new key/value at ``position`` (a device tensor) into the static cache with ``index_copy_`` and
attends over the whole buffer, the positions not yet written (and left padding) hidden by an additive mask that the
caller opens one column per token. Masked columns weigh exactly 0 after the softmax, so the logits equal the eager
step's up to float summation order; generate() is token for token the same (tests/torch/test_compiled.py).

It is the trunk's own code (GPT2Model.embed and GPT2Model.core, the Block and Attention of model.py): only the
boundary differs, and the cache's write rule (KVCache.at). When generate() uses it (generation._fixed_step,
docs/generation.md): by default on a CUDA device, as a CUDA graph kept for the next call of the same shape, and on
the CPU, run as it is ("fixed": per token it skips forward's host checks and mask building; with nothing captured,
it attends over the n + 1 positions written, not the whole buffer: the same numbers up to summation order); on any
device with ``compile_config=...`` (transformers' CompileConfig fields: fullgraph, dynamic, backend, mode,
options), through torch.compile. ``disable_compile=True`` turns it off. Never with output_attentions /
output_hidden_states, token types or dropout (training mode): those take the eager step.
"""

from __future__ import annotations

import threading
import weakref

import torch

from .attention import mask_value, scores_dtype
from .cache import KVCache
from .model import project

COMPILE_OPTIONS = ("fullgraph", "dynamic", "backend", "mode", "options")
# What a model keeps between generate() calls (its last FixedStep, its torch.compile wrappers), outside the model so
# that copy.deepcopy / pickling a model never meets a CUDA graph or a lock; gone with the model.
_KEPT: "weakref.WeakKeyDictionary[torch.nn.Module, dict]" = weakref.WeakKeyDictionary()


def decode_step(model, ids, positions, mask, cache):
    """One token per row through ``model`` (an LM-head model in eval mode); returns next-token logits (B, V) fp32.

    ids, positions: (B, 1) long; mask: (B, 1, 1, L) additive, in the scores' dtype; cache: a static cache written at
    a device-tensor position (``KVCache.at``). The trunk's own embed and core: the same Block and Attention code
    as GPT2Model.forward, only without its host checks and with fixed shapes.
    """
    t = model.transformer
    x, *_ = t.core(t.embed(ids, position_ids=positions), mask=mask, cache=cache)  # (B, 1, C)
    return project(model.lm_head, x)[:, -1, :].float()


def compile_options(compile_config) -> dict:
    """transformers' CompileConfig (or a dict of its fields) -> torch.compile keyword arguments."""
    if isinstance(compile_config, dict):
        unknown = sorted(set(compile_config) - set(COMPILE_OPTIONS))
        if unknown:
            raise ValueError(f"compile_config: unknown key(s) {', '.join(unknown)}; expected some of "
                             f"{', '.join(COMPILE_OPTIONS)}")
        options = dict(compile_config)
    else:
        options = {k: getattr(compile_config, k) for k in COMPILE_OPTIONS if hasattr(compile_config, k)}
        if not options:
            raise TypeError(f"compile_config must be a dict or transformers' CompileConfig, got "
                            f"{type(compile_config).__name__}")
    options = {"fullgraph": True, "dynamic": False, **options}
    if options.get("mode") is not None and options.get("options"):
        raise ValueError("compile_config: give mode or options, not both (torch.compile's rule)")
    return options


class FixedStep:
    """The fixed-shape step over a static ``cache`` of capacity L, for rows whose first ``T`` positions hold the
    prompt (``attention_mask`` (B, T) marks its left padding, or None). ``step(ids, positions, n)`` writes position
    ``n`` and returns the logits (B, V) fp32; ``how`` is "cuda_graph", "compile" (with ``options``) or "fixed"
    (decode_step run as it is, without capture, over the positions written so far: the CPU's default, which the
    CPU tests use; the whole buffer's shapes are tested through "compile").

    ``FixedStep.for_run`` keeps the last one on the model: the next generate() of the same batch size, cache
    bucket and dtype re-uses its graph and buffers instead of capturing again (``release()`` frees it for that).
    """

    def __init__(self, model, cache, how: str, options: dict | None = None) -> None:
        B, L = cache.keys[0].shape[0], cache.keys[0].shape[2]
        device = cache.keys[0].device
        self.model_ref, self.cache, self.how = weakref.ref(model), cache, how  # weak: _KEPT must not keep it alive
        self.ids = torch.zeros(B, 1, dtype=torch.long, device=device)
        self.positions = torch.zeros(B, 1, dtype=torch.long, device=device)
        self.position = torch.zeros(1, dtype=torch.long, device=device)
        dtype = scores_dtype(model.dtype, model.config.reorder_and_upcast_attn, device.type)  # what it is added to
        self.mask = torch.empty((B, 1, 1, L), dtype=dtype, device=device)  # (B, 1, 1, L), set by start()
        self.at_position = cache.at(self.position)  # the same buffers, written at self.position
        self.graph = self.logits = None
        self.busy = threading.Lock()
        if how == "compile":
            self.fn = _compiled(model, options or {})
            if device.type == "cuda":  # cudagraph trees re-use these buffers' addresses across calls
                for buffer in cache.keys + cache.values:
                    torch._dynamo.mark_static_address(buffer)

    @classmethod
    def for_run(cls, model, batch_size: int, capacity: int, device, how: str, options: dict | None,
                keep: bool) -> "FixedStep":
        """The model's kept step when it matches (batch size, capacity, dtype, device, parameter addresses) and is
        free, else a new one over a new cache (kept when ``keep``). Call ``start`` on it, ``release`` after the run."""
        key = (how, repr(options), batch_size, capacity, model.dtype, str(device),
               tuple(p.data_ptr() for p in model.parameters()))
        kept = _KEPT.setdefault(model, {}).get("step")
        if kept is not None and kept[0] == key and kept[1].busy.acquire(blocking=False):
            return kept[1]
        step = cls(model, KVCache.for_model(model, batch_size, capacity, device), how, options)
        step.busy.acquire()
        if keep and (kept is None or not kept[1].busy.locked()):
            _KEPT[model]["step"] = (key, step)  # replaces (frees) the one kept before
        return step

    def start(self, attention_mask, T: int) -> None:
        """A new run: the cache empty, the first ``T`` positions the prompt (``attention_mask`` (B, T) or None)."""
        self.cache.length = 0
        self.mask.fill_(mask_value(self.mask.dtype))
        if attention_mask is None:
            self.mask[:, :, :, :T] = 0.0
        else:
            self.mask[:, 0, 0, :T].masked_fill_(attention_mask.bool(), 0.0)

    def release(self) -> None:
        if self.busy.locked():
            self.busy.release()

    def _run(self) -> torch.Tensor:
        fn = self.fn if self.how == "compile" else decode_step
        return fn(self.model_ref(), self.ids, self.positions, self.mask, self.at_position)

    def __call__(self, ids: torch.Tensor, positions: torch.Tensor, n: int) -> torch.Tensor:
        self.position.fill_(n)
        self.mask.select(3, n).fill_(0.0)  # the new token sees itself, and every later token sees it
        if self.how == "fixed":  # nothing captured: the caller's ids and positions as they are, new logits, and
            # only the n + 1 positions written attended over (shapes may grow): the whole buffer is read every token
            # otherwise, up to max_length positions where the eager step reads n + 1
            return decode_step(self.model_ref(), ids, positions, self.mask[:, :, :, :n + 1], self.cache.at(n))
        self.ids.copy_(ids)
        self.positions.copy_(positions)
        if self.how == "compile":  # cudagraph trees (mode="reduce-overhead") re-use their output buffers
            return self._run().clone()
        if self.graph is None:
            self._capture()
        self.graph.replay()
        return self.logits.clone()

    def _capture(self) -> None:
        """torch's recipe: warm up on a side stream (cuBLAS / SDPA workspaces), then capture one step. The warm-up
        writes this step's own key/value, which the replay writes again: nothing else changes."""
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(2):
                self._run()
        torch.cuda.current_stream().wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.logits = self._run()


def _compiled(model, options: dict):
    """One torch.compile wrapper per model and options, so that later generate() calls reuse its compiled code."""
    store = _KEPT.setdefault(model, {}).setdefault("compiled", {})
    key = repr(sorted(options.items()))
    if key not in store:
        store[key] = torch.compile(decode_step, **options)
    return store[key]


# -- the stop check, read one step late on CUDA ----------------------------------------------------------------------
def use_late_check(device, streamer, record: bool, stop) -> bool:
    """Read the stop check one step late (``LateCheck``) on CUDA, where waiting for it every step would leave the GPU
    idle while the host prepares the next step. Not with a streamer or recorded outputs (they would see the extra
    step) nor with stop strings (their check reads the tokens on the host anyway)."""
    return device.type == "cuda" and streamer is None and not record and stop.stop_strings is None


class LateCheck:
    """Whether any row is still running, read one step late: step t's flag is copied to the host without waiting,
    and read at step t+1, after that step's work is queued. When it says every row had finished, generate() drops
    the one token computed since, so the output is what an immediate check gives (the only trace: sampling drew
    from the generator once more)."""

    def __init__(self, device) -> None:
        cuda = device.type == "cuda"
        self.flags = [torch.zeros((), dtype=torch.bool, pin_memory=cuda) for _ in range(2)]
        self.events = [torch.cuda.Event() for _ in range(2)] if cuda else None
        self.pending: tuple[int, int] | None = None  # (slot, length) of the flag in flight
        self.slot = 0

    def done(self) -> int | None:
        """The length at which every row had finished, by the flag queued last; None while some row runs."""
        if self.pending is None:
            return None
        slot, length = self.pending
        if self.events is not None:
            self.events[slot].synchronize()  # long done by now: the GPU is already on the next step
        return length if not bool(self.flags[slot]) else None

    def queue(self, any_running: torch.Tensor, cur: int) -> None:
        """Start copying this step's flag (the ids are ``cur`` long) to the host, without waiting for it."""
        slot = self.slot
        self.flags[slot].copy_(any_running, non_blocking=self.events is not None)
        if self.events is not None:
            self.events[slot].record()
        self.pending, self.slot = (slot, cur), 1 - slot
