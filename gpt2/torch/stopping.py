"""When generate() stops: transformers' stopping criteria (max_length, eos, max_time, stop strings, the caller's
criteria) and, on CUDA, the one-step-late read of "is any row still running" that keeps the GPU busy.
"""

from __future__ import annotations

import time

import torch


class Stop:
    """transformers' stopping criteria: max_length, eos as the last token, max_time, stop strings (common/decoding.py
    StopStrings, on the host), then the caller's ``criteria``. Returns done rows (bool)."""

    def __init__(self, *, eos: list[int], max_length: int, max_time: float | None, device, stop_strings=None,
                 criteria=(), offset: int = 0) -> None:
        self.eos = torch.tensor(eos, dtype=torch.long, device=device) if eos else None
        self.max_length, self.max_time, self.start = max_length, max_time, time.time()
        self.stop_strings, self.criteria = stop_strings, list(criteria)
        self.offset = offset  # ids before it are no tokens (an inputs_embeds prompt): criteria never see them

    def __call__(self, ids: torch.Tensor, scores=None) -> torch.Tensor:
        """``scores``: what transformers hands its criteria -- the recorded scores (a tuple) or None."""
        B = ids.shape[0]
        if ids.shape[-1] >= self.max_length or (self.max_time is not None and time.time() - self.start > self.max_time):
            return torch.ones(B, dtype=torch.bool, device=ids.device)
        done = torch.zeros(B, dtype=torch.bool, device=ids.device)
        if self.eos is not None:
            done = torch.isin(ids[:, -1], self.eos)
        if self.stop_strings is not None:
            hits = self.stop_strings(ids[:, max(self.offset, ids.shape[-1] - self.stop_strings.window):].tolist())
            done = done | torch.tensor(hits, dtype=torch.bool, device=ids.device)
        for criterion in self.criteria:
            hit = torch.as_tensor(criterion(ids[:, self.offset:], scores), device=ids.device)
            if hit.dtype != torch.bool or hit.shape not in ((), (B,)):
                raise ValueError(f"stopping criterion {criterion!r} must return a bool tensor of shape ({B},), got "
                                 f"{hit.dtype} of shape {tuple(hit.shape)}")
            done = done | hit.expand(B)
        return done


def use_late_check(device, streamer, record: bool, stop: Stop) -> bool:
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
