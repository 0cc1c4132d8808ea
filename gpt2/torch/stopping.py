"""When generate() stops: transformers' stopping criteria (max_length, eos, max_time, stop strings, the caller's
criteria). On CUDA, generate() reads "is any row still running" one step late (compiled.py's LateCheck).
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
