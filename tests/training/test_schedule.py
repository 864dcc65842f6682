"""The cosine schedule: its curve, step and time progress, and resuming without a jump."""

from __future__ import annotations

import pytest

from training.schedule import CosineSchedule, cosine_lr


class FakeClock:
    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_cosine_lr_rejects_a_warmup_of_the_whole_run() -> None:
    with pytest.raises(ValueError, match="warmup_fraction"):
        cosine_lr(1e-3, 0.5, 1.0)


def test_steps_only_progress() -> None:
    schedule = CosineSchedule(1.0, 0.0, total_steps=100, time_budget_s=None, started=0.0)
    assert schedule.lr(0) == pytest.approx(1.0)
    assert schedule.lr(50) == pytest.approx(0.5)
    assert schedule.state() == {"progress": 0.5}
    assert schedule.lr(100) == pytest.approx(0.0, abs=1e-12)


def test_time_budget_counts_from_the_first_step() -> None:
    clock = FakeClock(10.0)  # 10 s of data loading before the first step
    schedule = CosineSchedule(1.0, 0.0, total_steps=10_000, time_budget_s=110.0,
                              started=0.0, clock=clock)  # fmt: skip
    assert schedule.lr(0) == pytest.approx(1.0)  # first step: progress 0
    clock.now = 60.0  # half of the 100 s left at the first step
    assert schedule.lr(1) == pytest.approx(0.5)
    assert schedule.state()["progress"] == pytest.approx(0.5)
    clock.now = 200.0  # past the budget: clamped at the end of the curve
    assert schedule.lr(2) == pytest.approx(0.0, abs=1e-12)
    # Steps further along than time win.
    clock.now = 11.0
    late = CosineSchedule(1.0, 0.0, total_steps=4, time_budget_s=1e6, started=0.0, clock=clock)
    assert late.lr(2) == pytest.approx(0.5)


def test_resume_continues_from_the_saved_progress() -> None:
    clock = FakeClock(0.0)
    schedule = CosineSchedule(1.0, 0.05, total_steps=1000, time_budget_s=100.0, started=0.0,
                              resumed_progress=0.8, clock=clock)  # fmt: skip
    # The first step after resuming: where the interrupted run stopped, no jump back up.
    assert schedule.lr(0) == pytest.approx(cosine_lr(1.0, 0.8, 0.05))
    clock.now = 50.0  # half of the new budget: half of the remaining curve
    assert schedule.state()["progress"] == pytest.approx(0.8)
    assert schedule.lr(1) == pytest.approx(cosine_lr(1.0, 0.9, 0.05))
