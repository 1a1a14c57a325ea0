"""The paper's schedule rule as code (docs/PAPER.md, "Schedules"; Sec. 4 of the paper).

1x = 90k iterations at batch 16 and Nx = N x 90k. Whatever N, the LR is divided by 10 at the last 60k and again at
the last 20k iterations, so every Nx schedule keeps the base LR until 60k iterations before its end (2x: 180k, drops
at 120k and 160k; 6x: 540k, drops at 480k and 520k). That fixed tail is what lets schedules share a trunk
(study/plan.py).

At another batch size B the linear scaling rule applies (Goyal et al.): LR x B/16, and every iteration count
(length, tails, warm-up) x 16/B, so the number of images seen at each LR stays the same.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from scratchdet.errors import ConfigError


def linear_warmup(iteration: int, warmup_iters: int, warmup_factor: float) -> float:
    """LR multiplier of Detectron's linear warm-up (Goyal et al.): warmup_factor at iteration 0, rising linearly to
    1 at `warmup_iters`, then 1 (SOLVER.WARM_UP_METHOD: linear)."""
    if iteration >= warmup_iters:
        return 1.0
    alpha = iteration / warmup_iters
    return warmup_factor * (1.0 - alpha) + alpha


@dataclass(frozen=True)
class Schedule:
    """A resolved schedule at a concrete batch size; all counts are iterations at that batch size."""

    batch_size: int
    base_lr: float
    max_iters: int
    milestones: tuple[int, ...]  # iterations at which the LR is multiplied by gamma, ascending
    gamma: float
    warmup_iters: int
    warmup_factor: float

    def lr_factor(self, iteration: int) -> float:
        """Multiplier of base_lr for the update made at `iteration` (0-based): warm-up x step decay."""
        decay = self.gamma ** sum(1 for m in self.milestones if iteration >= m)
        return decay * linear_warmup(iteration, self.warmup_iters, self.warmup_factor)

    def lr_at(self, iteration: int) -> float:
        return self.base_lr * self.lr_factor(iteration)

    def describe(self) -> str:
        return (
            f"{self.max_iters} iters at batch {self.batch_size}, LR {self.base_lr:g} "
            f"(x{self.gamma:g} at {', '.join(map(str, self.milestones))}), warm-up {self.warmup_iters} iters"
        )


def build_schedule(
    multiplier: float,
    batch_size: int,
    *,
    unit_iters: int = 90000,
    reference_batch: int = 16,
    base_lr: float = 0.02,
    drop_tails: Sequence[int] = (60000, 20000),
    gamma: float = 0.1,
    warmup_iters: int = 500,
    warmup_factor: float = 1.0 / 3.0,
) -> Schedule:
    """Resolves "Nx at batch B" into iteration counts and an LR.

    Args:
        multiplier: the N of Nx (may be fractional, e.g. 0.5 for short small-data runs if tails fit).
        batch_size: images per iteration over all devices.
        unit_iters: length of 1x at `reference_batch` (90k in the paper; CPU-sized configs use a smaller unit).
        reference_batch: the batch at which unit_iters, base_lr, drop_tails and warmup_iters are given.
        drop_tails: distances from the end, at reference_batch, where the LR is multiplied by gamma.
    """
    if batch_size <= 0 or reference_batch <= 0:
        raise ConfigError(f"batch size must be positive (train.batch_size={batch_size}, reference={reference_batch})")
    scale = reference_batch / batch_size  # iterations scale inversely with the batch, LR directly
    max_iters = round(multiplier * unit_iters * scale)
    tails = sorted((round(t * scale) for t in drop_tails), reverse=True)
    if tails and tails[0] >= max_iters:
        raise ConfigError(
            f"schedule.multiplier={multiplier:g} gives {max_iters} iterations, not longer than the LR tail of "
            f"{tails[0]} (schedule.drop_tails={list(drop_tails)}); use a larger multiplier or shorter tails"
        )
    return Schedule(
        batch_size=batch_size,
        base_lr=base_lr * batch_size / reference_batch,
        max_iters=max_iters,
        milestones=tuple(max_iters - t for t in tails),
        gamma=gamma,
        warmup_iters=round(warmup_iters * scale),
        warmup_factor=warmup_factor,
    )


def schedule_from_config(cfg) -> Schedule:
    """Builds the Schedule of a `scratchdet.config.Config`."""
    return build_schedule(
        cfg.schedule.multiplier,
        cfg.train.batch_size,
        unit_iters=cfg.schedule.unit_iters,
        reference_batch=cfg.solver.reference_batch,
        base_lr=cfg.solver.base_lr,
        drop_tails=cfg.schedule.drop_tails,
        gamma=cfg.schedule.gamma,
        warmup_iters=cfg.solver.warmup_iters,
        warmup_factor=cfg.solver.warmup_factor,
    )
