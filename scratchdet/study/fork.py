"""Forking a schedule's LR tail from a shared trunk.

Every Nx schedule keeps the base LR until 60k iterations (at batch 16) before its own end (docs/PAPER.md,
"Schedules"), so runs that differ only in N are the same computation up to their first LR drop. The study trains one
trunk at the base LR, checkpoints it at each schedule's first drop, and starts each schedule's tail from there. Because
data order and augmentation depend only on (seed, position) and the checkpoint holds every RNG state, a forked run
computes what an independent run would (tested).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from scratchdet.config import Config, config_to_dict, config_to_yaml, load_config
from scratchdet.engine.cascade_switch import cascade_switch_iter
from scratchdet.engine.metrics import read_metrics
from scratchdet.engine.run_dir import config_diff
from scratchdet.engine.schedule import Schedule, schedule_from_config
from scratchdet.errors import CheckpointError
from scratchdet.files import atomic_write_text
from scratchdet.modeling.detector import configured_input_convention
from scratchdet.run_folder import RunFolder
from scratchdet.weights.initialization import apply_input_convention

# Keys on which a fork may differ from its trunk, beyond those any resume may change (run_dir.RESUMABLE_KEYS).
FORKABLE_KEYS = ("schedule.multiplier",)


def first_drop(schedule: Schedule) -> int:
    """The first iteration whose LR differs from the base LR after warm-up: the end of the shareable part."""
    return schedule.milestones[0] if schedule.milestones else schedule.max_iters


def check_same_lr_until(a: Schedule, b: Schedule, iteration: int) -> None:
    """Raises CheckpointError unless schedules a and b give the same LR at every iteration before `iteration`."""
    same_shape = (a.base_lr, a.warmup_iters, a.warmup_factor, a.batch_size) == (
        b.base_lr,
        b.warmup_iters,
        b.warmup_factor,
        b.batch_size,
    )
    if not same_shape or first_drop(a) < iteration or first_drop(b) < iteration:
        raise CheckpointError(
            f"cannot fork at iteration {iteration}: the schedules differ before it "
            f"(trunk: {a.describe()}; fork: {b.describe()})"
        )


def check_same_heads_until(trunk_cfg: Config, a: Schedule, cfg: Config, b: Schedule, iteration: int) -> None:
    """Raises CheckpointError unless the trunk and the fork had the same box heads at every iteration before
    `iteration`: with the late cascade switch at max_iters - model.cascade_switch_iters, schedules of different
    lengths switch at different iterations, so they share the computation only up to the earlier switch (the
    checkpoint written at a switch iteration still holds plain heads).
    """
    sa, sb = cascade_switch_iter(trunk_cfg, a.max_iters), cascade_switch_iter(cfg, b.max_iters)
    switches = [s for s in (sa, sb) if s is not None]
    if sa != sb and switches and iteration > min(switches):
        raise CheckpointError(
            f"cannot fork at iteration {iteration}: the trunk switches to cascade heads at iteration {sa} and this "
            f"run at {sb}, so their models differ after iteration {min(switches)}; fork at or before it"
        )


def fork_run(trunk_dir: str | Path, iteration: int, cfg: Config) -> Path:
    """Creates the run folder `cfg.output` as the continuation of the trunk's checkpoint at `iteration`.

    The new folder gets cfg's config.yaml, the trunk checkpoint at `iteration` (as its latest checkpoint), the
    trunk's init/env/dataset records, and the trunk's metrics and evaluations up to `iteration`, so its learning
    curve is complete. Train it afterwards with `resume=true`.

    Raises:
        CheckpointError: the trunk lacks that checkpoint, its config differs in more than the schedule length, or
            the two schedules' LRs or box heads (late cascade switch) differ before `iteration`.
    """
    trunk_dir, out = Path(trunk_dir), Path(cfg.output)
    trunk, fork = RunFolder(trunk_dir), RunFolder(out)
    source = trunk.checkpoint(iteration)
    if not source.is_file():
        raise CheckpointError(f"trunk {trunk_dir} has no checkpoint at iteration {iteration} ({source.name})")
    trunk_cfg = load_config(trunk.config)
    # The fork continues the trunk's network: input-convention keys it leaves unset take the trunk's values
    # (explicit ones must agree, like every other key), so its config.yaml records what runs.
    apply_input_convention(cfg, configured_input_convention(trunk_cfg))
    diff = [d for d in config_diff(config_to_dict(trunk_cfg), config_to_dict(cfg)) if not d.startswith(FORKABLE_KEYS)]
    if diff:
        raise CheckpointError(f"{out} cannot fork from {trunk_dir}; configs differ in:\n  " + "\n  ".join(diff))
    trunk_schedule, schedule = schedule_from_config(trunk_cfg), schedule_from_config(cfg)
    check_same_lr_until(trunk_schedule, schedule, iteration)
    check_same_heads_until(trunk_cfg, trunk_schedule, cfg, schedule, iteration)

    fork.checkpoints.mkdir(parents=True, exist_ok=True)
    fork.eval_dir.mkdir(exist_ok=True)
    atomic_write_text(fork.config, config_to_yaml(cfg))
    for record in (trunk.init, trunk.env, trunk.dataset("train"), trunk.dataset("val")):
        if record.is_file():
            shutil.copy2(record, out / record.name)
    # A hard link costs no disk for what may be a large file; copy where links are not possible.
    target = fork.checkpoints / source.name
    target.unlink(missing_ok=True)
    try:
        target.hardlink_to(source)
    except OSError:
        shutil.copy2(source, target)
    copied = [
        json.dumps({**record, "forked_from": str(trunk_dir)}) + "\n"
        for record in read_metrics(trunk_dir)
        if record.get("iter", 0) <= iteration and record.get("type") in ("start", "train", "eval")
    ]
    atomic_write_text(fork.metrics, "".join(copied))
    for report in trunk.eval_reports():
        if int(report.stem.split("_")[1]) <= iteration:
            shutil.copy2(report, fork.eval_dir / report.name)
    # The pointer last: a fork counts as made once it has a checkpoint (study/jobs.py), so a kill before this line
    # leaves a folder the next attempt makes again, never a fork without the trunk's curve.
    atomic_write_text(fork.pointer, source.name)
    return out
