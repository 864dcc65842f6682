"""The cosine learning-rate schedule of ``lr_schedule="cosine"``, sized in steps or in time.

``cosine_lr`` is the curve; :class:`CosineSchedule` says where a run is on it. Progress is
the fraction of ``max_epochs``' steps done or, with a time budget, the fraction of the
budget spent since the first step (data loading excluded), whichever is further along
(budgeted training: the LR reaches 0 when the budget ends). Progress is saved in
``last.pt`` and a resumed run continues from it: the time it has left is spread over what
remains of the curve, so the LR never jumps back up.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable


def cosine_lr(base_lr: float, progress: float, warmup_fraction: float) -> float:
    """Learning rate at ``progress`` in [0, 1] of a run: linear warm-up from 0 over the first
    ``warmup_fraction`` (in [0, 1)), then cosine decay to 0 at ``progress`` 1 (clamped)."""
    if not 0.0 <= warmup_fraction < 1.0:
        raise ValueError(f"warmup_fraction must be in [0, 1), got {warmup_fraction}")
    progress = min(max(progress, 0.0), 1.0)
    if progress < warmup_fraction:
        return base_lr * progress / warmup_fraction
    decay = (progress - warmup_fraction) / (1.0 - warmup_fraction)
    return base_lr * 0.5 * (1.0 + math.cos(math.pi * decay))


class CosineSchedule:
    """Where a run is on the cosine curve.

    ``total_steps``: ``max_epochs * steps_per_epoch``. ``time_budget_s``: the run's budget
    (None: steps only), counted from ``started`` (the run's start, so data loading spends
    budget but not schedule). ``resumed_progress``: the progress saved by an interrupted
    run. ``clock``: ``time.monotonic`` (a parameter for tests).
    """

    def __init__(
        self,
        base_lr: float,
        warmup_fraction: float,
        total_steps: int,
        time_budget_s: float | None,
        started: float,
        resumed_progress: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.base_lr = base_lr
        self.warmup_fraction = warmup_fraction
        self.total_steps = max(1, total_steps)
        self.time_budget_s = time_budget_s
        self.started = started
        self.resumed_progress = min(max(resumed_progress, 0.0), 1.0)
        self.clock = clock
        self.first_step_at: float | None = None
        self.progress = self.resumed_progress

    def lr(self, global_step: int) -> float:
        """The learning rate of ``global_step`` (counted from the first epoch of the run,
        resumed epochs included); records the progress for :meth:`state`."""
        progress = max(self.resumed_progress, global_step / self.total_steps)
        if self.time_budget_s is not None:
            now = self.clock()
            if self.first_step_at is None:
                self.first_step_at = now
            span = max(1e-9, self.time_budget_s - (self.first_step_at - self.started))
            spent = min(1.0, (now - self.first_step_at) / span)
            progress = max(progress, self.resumed_progress + (1.0 - self.resumed_progress) * spent)
        self.progress = progress
        return cosine_lr(self.base_lr, progress, self.warmup_fraction)

    def state(self) -> dict[str, float]:
        """What ``last.pt`` keeps: ``{"progress": ...}``."""
        return {"progress": self.progress}
