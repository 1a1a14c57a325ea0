import pytest
import torch
from helpers import MINI_CONFIG, tiny_overrides

from scratchdet.config import load_config
from scratchdet.engine import trainer
from scratchdet.engine.checkpoint import latest_checkpoint, load_checkpoint
from scratchdet.engine.metrics import read_metrics
from scratchdet.engine.schedule import build_schedule
from scratchdet.errors import CheckpointError
from scratchdet.study.fork import check_same_lr_until, fork_run

# A schedule unit of 4 iterations at batch 2 (reference batch 2, so no scaling): 1x = 4 iterations with drops at
# 2 and 3, 2x = 8 with drops at 6 and 7. Both run at the base LR (after a 1-iteration warm-up) before iteration 2.
SMALL_SCHEDULE = {
    "solver.reference_batch": 2,
    "schedule.unit_iters": 4,
    "schedule.drop_tails": "[2,1]",
    "solver.warmup_iters": 1,
    "eval.period": 0,
}


def cfg(shapes_dir, out, **extra):
    return load_config(MINI_CONFIG, tiny_overrides(shapes_dir, out, **SMALL_SCHEDULE, **extra))


def test_forked_schedule_equals_an_independent_run(shapes_dir, tmp_path):
    trainer.train(cfg(shapes_dir, tmp_path / "independent_1x", **{"schedule.multiplier": 1}))
    trunk = cfg(
        shapes_dir,
        tmp_path / "trunk",
        **{"schedule.multiplier": 2, "train.max_iters": 6, "train.extra_checkpoints": "[2]"},
    )
    trainer.train(trunk)
    fork = cfg(shapes_dir, tmp_path / "forked_1x", **{"schedule.multiplier": 1})
    fork_run(tmp_path / "trunk", 2, fork)
    trainer.train(cfg(shapes_dir, tmp_path / "forked_1x", **{"schedule.multiplier": 1, "resume": "true"}))

    a = load_checkpoint(latest_checkpoint(tmp_path / "independent_1x" / "checkpoints"))
    b = load_checkpoint(latest_checkpoint(tmp_path / "forked_1x" / "checkpoints"))
    assert a["iteration"] == b["iteration"] == 4 and a["seen"] == b["seen"]
    for key, value in a["model"].items():
        torch.testing.assert_close(value, b["model"][key], rtol=1e-5, atol=1e-6, msg=key)
    # The fork's log holds the trunk's first two iterations and its own tail: a complete learning curve.
    records = read_metrics(tmp_path / "forked_1x", "train")
    assert [r["iter"] for r in records] == [1, 2, 3, 4]
    lrs = [r["lr"] for r in records]
    independent = [r["lr"] for r in read_metrics(tmp_path / "independent_1x", "train")]
    assert lrs == pytest.approx(independent)
    assert read_metrics(tmp_path / "forked_1x", "eval")[-1]["iter"] == 4


def test_fork_refuses_other_differences_and_late_fork_points(shapes_dir, tmp_path):
    trainer.train(
        cfg(
            shapes_dir,
            tmp_path / "trunk",
            **{"schedule.multiplier": 2, "train.max_iters": 2, "train.extra_checkpoints": "[2]"},
        )
    )
    other_lr = cfg(shapes_dir, tmp_path / "x", **{"schedule.multiplier": 1, "solver.base_lr": 0.5})
    with pytest.raises(CheckpointError, match="solver.base_lr"):
        fork_run(tmp_path / "trunk", 2, other_lr)
    with pytest.raises(CheckpointError, match="no checkpoint at iteration 3"):
        fork_run(tmp_path / "trunk", 3, cfg(shapes_dir, tmp_path / "y", **{"schedule.multiplier": 1}))


def test_lr_agreement_check():
    one, two = build_schedule(1, 16), build_schedule(2, 16)
    check_same_lr_until(one, two, 30_000)  # 1x drops first at 30k
    with pytest.raises(CheckpointError, match="differ before"):
        check_same_lr_until(one, two, 30_001)
