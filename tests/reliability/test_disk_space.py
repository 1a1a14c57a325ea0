"""docs/RELIABILITY.md, promise 9: a full disk or a read-only output folder is a clear error before training starts,
and a failed save mid-run keeps the previous checkpoint (save_checkpoint itself: test_atomic_checkpoint.py)."""

from __future__ import annotations

import errno
import os
from collections import namedtuple

import pytest
import torch
from helpers import MINI_CONFIG, tiny_overrides

from scratchdet.config import load_config
from scratchdet.engine import checkpoint as ckpt
from scratchdet.engine import run_dir, trainer
from scratchdet.engine.checkpoint import latest_checkpoint, load_checkpoint, planned_checkpoints
from scratchdet.errors import CheckpointError

Usage = namedtuple("Usage", "total used free")


def test_too_little_free_space_fails_before_training(tiny_config, monkeypatch):
    monkeypatch.setattr(ckpt.shutil, "disk_usage", lambda path: Usage(10**9, 10**9 - 1000, 1000))
    checkpoints = f"{tiny_config.output}/checkpoints"
    with pytest.raises(
        CheckpointError,
        match=rf"free disk space .* in {checkpoints}: 1,000 bytes free, about "
        r"[\d,]+ needed \(1 checkpoint",
    ):
        trainer.train(tiny_config)
    assert not os.path.exists(f"{tiny_config.output}/metrics.jsonl")  # not a single iteration ran
    assert latest_checkpoint(checkpoints) is None


def test_read_only_output_folder_fails_before_training(tiny_config, monkeypatch):
    def refuse(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(run_dir.tempfile, "mkstemp", refuse)
    with pytest.raises(CheckpointError, match=rf"output folder {tiny_config.output} is not writable .*Permission"):
        trainer.train(tiny_config)
    assert not os.path.exists(f"{tiny_config.output}/config.yaml")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_really_read_only_output_folder_fails_before_training(tiny_config, tmp_path):
    parent = tmp_path / "locked"
    parent.mkdir(mode=0o500)
    tiny_config.output = str(parent / "run")
    try:
        with pytest.raises(CheckpointError, match="is not writable"):
            trainer.train(tiny_config)
    finally:
        parent.chmod(0o700)


def test_planned_checkpoints_counts_periodic_extra_and_final():
    assert planned_checkpoints(0, 10, 4) == 3  # 4, 8, 10
    assert planned_checkpoints(4, 10, 4, [5, 8, 20]) == 3  # 5, 8, 10
    assert planned_checkpoints(10, 10, 4) == 0


def test_failed_save_mid_run_keeps_previous_checkpoint_and_resume_finishes(shapes_dir, tmp_path, monkeypatch):
    overrides = tiny_overrides(
        shapes_dir, tmp_path / "run", **{"train.max_iters": 2, "train.checkpoint_period": 1, "eval.max_images": 1}
    )
    real_save, calls = torch.save, []

    def disk_full_on_second_save(obj, f):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("PytorchStreamWriter failed writing file data/7: file write failed")
        real_save(obj, f)

    monkeypatch.setattr(ckpt.torch, "save", disk_full_on_second_save)
    with pytest.raises(CheckpointError, match=r"model_0000002\.pth failed .*model_0000001\.pth is intact"):
        trainer.train(load_config(MINI_CONFIG, overrides))
    monkeypatch.undo()

    folder = tmp_path / "run" / "checkpoints"
    path = latest_checkpoint(folder)
    state = load_checkpoint(path)
    assert state["iteration"] == 1 and sorted(p.name for p in folder.iterdir()) == ["last_checkpoint", path.name]
    # The size estimate behind the free-space check (3 x parameter bytes) covers a real checkpoint.
    model_bytes = sum(t.numel() * t.element_size() for t in state["model"].values())
    assert 1.5 * model_bytes < path.stat().st_size < 3 * model_bytes

    result = trainer.train(load_config(MINI_CONFIG, [*overrides, "resume=true"]))
    assert result.iter == 2


def test_disk_usage_is_measured_where_the_checkpoints_go(tmp_path, monkeypatch):
    asked = []
    monkeypatch.setattr(ckpt.shutil, "disk_usage", lambda path: asked.append(path) or Usage(1, 0, 1))
    ckpt.check_free_space(tmp_path / "run" / "checkpoints", checkpoint_bytes=1, count=1)  # folders not made yet
    assert asked == [tmp_path]
