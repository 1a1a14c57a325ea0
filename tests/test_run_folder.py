"""The run folder's layout (scratchdet/run_folder.py): names, the pointer read, the order of evaluation reports."""

from __future__ import annotations

from pathlib import Path

import pytest

from scratchdet import run_folder
from scratchdet.engine import checkpoint, run_dir
from scratchdet.run_folder import RunFolder, checkpoint_name, checkpoint_name_iteration


def test_names(tmp_path: Path):
    folder = RunFolder(tmp_path)
    assert folder.root == tmp_path
    assert RunFolder(str(tmp_path)).root == tmp_path
    assert folder.config == tmp_path / "config.yaml"
    assert folder.env == tmp_path / "env.json"
    assert folder.metrics == tmp_path / "metrics.jsonl"
    assert folder.tensorboard == tmp_path / "tb"
    assert folder.checkpoints == tmp_path / "checkpoints"
    assert folder.pointer == tmp_path / "checkpoints" / "last_checkpoint"
    assert folder.eval_dir == tmp_path / "eval"
    assert folder.init == tmp_path / "init.json"
    assert folder.cascade_switch == tmp_path / "cascade_switch.json"
    assert folder.pretrain_summary == tmp_path / "pretrain_summary.json"
    assert folder.pretrain_weights == tmp_path / "classifier_final.pth"
    assert folder.dataset("train") == tmp_path / "dataset_train.json"
    assert folder.dataset("val") == tmp_path / "dataset_val.json"
    assert folder.checkpoint(1234) == tmp_path / "checkpoints" / "model_0001234.pth"
    assert folder.eval_report(7) == tmp_path / "eval" / "iter_0000007.json"
    assert repr(folder) == f"RunFolder({str(tmp_path)!r})"


def test_checkpoint_name_round_trip():
    assert checkpoint_name(0) == "model_0000000.pth"
    assert checkpoint_name(90000) == "model_0090000.pth"
    for iteration in (0, 1, 1234, 9_999_999, 12_345_678):
        assert checkpoint_name_iteration(checkpoint_name(iteration)) == iteration
    with pytest.raises(ValueError):
        checkpoint_name_iteration("model_final.pth")


def test_shared_constants():
    # The engine's names are run_folder's, not copies that could drift.
    assert checkpoint.POINTER is run_folder.POINTER == "last_checkpoint"
    assert run_dir.RUN_FILES is run_folder.RUN_FILES
    for name in (run_folder.CONFIG, run_folder.METRICS, run_folder.CHECKPOINTS, run_folder.EVAL, run_folder.INIT):
        assert name in run_folder.RUN_FILES


def test_checkpoint_iteration_missing(tmp_path: Path):
    assert RunFolder(tmp_path / "nowhere").checkpoint_iteration() is None
    assert RunFolder(tmp_path).checkpoint_iteration() is None  # folder exists, no checkpoints/
    (tmp_path / "checkpoints").mkdir()
    assert RunFolder(tmp_path).checkpoint_iteration() is None  # checkpoints/ without a pointer


@pytest.mark.parametrize("text", ["", "garbage", "model_.pth", "model_12ab.pth", "\x00\x01"])
def test_checkpoint_iteration_garbled(tmp_path: Path, text: str):
    folder = RunFolder(tmp_path)
    folder.checkpoints.mkdir()
    folder.pointer.write_text(text)
    assert folder.checkpoint_iteration() is None


def test_checkpoint_iteration_pointer_is_a_folder(tmp_path: Path):
    folder = RunFolder(tmp_path)
    folder.pointer.mkdir(parents=True)  # unreadable as text: OSError, not a crash
    assert folder.checkpoint_iteration() is None


def test_checkpoint_iteration_valid(tmp_path: Path):
    folder = RunFolder(tmp_path)
    folder.checkpoints.mkdir()
    folder.pointer.write_text(checkpoint_name(2500) + "\n")  # surrounding whitespace is tolerated
    assert folder.checkpoint_iteration() == 2500
    # Read off the pointer alone: the checkpoint file itself need not be there.
    assert not folder.checkpoint(2500).exists()


def test_checkpoint_iteration_matches_save_checkpoint(tmp_path: Path):
    folder = RunFolder(tmp_path)
    path = checkpoint.save_checkpoint(folder.checkpoints, 42, {"iteration": 42})
    assert path == folder.checkpoint(42)
    assert folder.checkpoint_iteration() == 42
    assert checkpoint.latest_checkpoint(folder.checkpoints) == folder.checkpoint(42)


def test_eval_reports_in_iteration_order(tmp_path: Path):
    folder = RunFolder(tmp_path)
    assert folder.eval_reports() == []  # no eval/ folder yet
    folder.eval_dir.mkdir()
    assert folder.eval_reports() == []
    for iteration in (1000, 20, 300, 5):
        folder.eval_report(iteration).write_text("{}")
    (folder.eval_dir / "notes.txt").write_text("not a report")
    (folder.eval_dir / "summary.json").write_text("{}")
    reports = folder.eval_reports()
    assert [p.name for p in reports] == [
        "iter_0000005.json",
        "iter_0000020.json",
        "iter_0000300.json",
        "iter_0001000.json",
    ]
    assert reports == [folder.eval_report(i) for i in (5, 20, 300, 1000)]
