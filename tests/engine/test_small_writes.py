"""A full disk on the small writes of a run (issue 24, kind 9): metrics.jsonl, TensorBoard and the whole-file records
end in an OutputError naming the file and the free space, never a raw `OSError: [Errno 28]` traceback, and the last
checkpoint stays; a torn last line of metrics.jsonl (kill -9 mid-write) never swallows the next record."""

from __future__ import annotations

import errno
import json
import pathlib

import pytest
from helpers import MINI_CONFIG, tiny_overrides

from scratchdet.config import load_config
from scratchdet.engine import trainer
from scratchdet.engine.checkpoint import latest_checkpoint, verify_checkpoint
from scratchdet.engine.metrics import MetricsWriter, read_metrics
from scratchdet.errors import OutputError, exit_status
from scratchdet.files import atomic_write_json
from scratchdet.run_folder import RunFolder


def _enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_a_torn_last_line_is_ended_before_the_next_record(tmp_path):
    path = RunFolder(tmp_path).metrics
    path.write_text(json.dumps({"type": "train", "iter": 1}) + "\n" + '{"type": "train", "it')  # killed mid-write
    writer = MetricsWriter(tmp_path, tensorboard=False)
    writer.write({"type": "start", "iter": 1})  # the resumed run's first record
    writer.write({"type": "train", "iter": 2})
    assert read_metrics(tmp_path) == [
        {"type": "train", "iter": 1},
        {"type": "start", "iter": 1},
        {"type": "train", "iter": 2},
    ]
    assert path.read_text().splitlines()[1] == '{"type": "train", "it'  # the fragment stays a line of its own
    MetricsWriter(tmp_path, tensorboard=False).write({"type": "end", "iter": 2})  # a clean end: nothing added
    assert len(path.read_text().splitlines()) == 5


def test_full_disk_on_metrics_jsonl_is_an_output_error_naming_file_and_free_space(tmp_path, monkeypatch):
    writer = MetricsWriter(tmp_path, tensorboard=False)
    writer.write({"type": "start", "iter": 0})
    real_open = pathlib.Path.open

    def full(self, mode="r", *args, **kwargs):
        if self == writer.path and "a" in mode:
            _enospc()
        return real_open(self, mode, *args, **kwargs)

    monkeypatch.setattr(pathlib.Path, "open", full)
    with pytest.raises(
        OutputError, match=r"cannot write .*metrics\.jsonl: No space left on device \([\d,]+ bytes free"
    ) as info:
        writer.write({"type": "train", "iter": 1})
    assert isinstance(info.value.__cause__, OSError) and info.value.__cause__.errno == errno.ENOSPC
    assert exit_status(writer.write, {"type": "train", "iter": 1}) == 2  # the CLI's one-line error, no traceback


def test_full_disk_on_tensorboard_is_an_output_error(tmp_path):
    writer = MetricsWriter(tmp_path, tensorboard=True)

    class FullDiskBoard:  # TensorBoard re-raises its writer thread's OSError at the next call
        add_scalar = flush = close = staticmethod(_enospc)

    writer._tb = FullDiskBoard()
    with pytest.raises(OutputError, match=r"cannot write .*tb: No space left on device"):
        writer.write({"type": "train", "iter": 1, "loss": 1.0})
    assert read_metrics(tmp_path) == [{"type": "train", "iter": 1, "loss": 1.0}]  # the line itself was written


def test_full_disk_on_a_whole_file_record_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "iter_0000002.json"
    atomic_write_json(path, {"status": "old"})
    monkeypatch.setattr("scratchdet.files.os.fsync", _enospc)
    with pytest.raises(OutputError, match=r"cannot write .*iter_0000002\.json: No space left on device"):
        atomic_write_json(path, {"status": "new"})
    assert json.loads(path.read_text()) == {"status": "old"}
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temp file left


@pytest.mark.e2e
def test_full_disk_at_the_final_evaluation_keeps_the_checkpoint(shapes_dir, tmp_path, monkeypatch):
    run = tmp_path / "run"
    cfg = load_config(MINI_CONFIG, tiny_overrides(shapes_dir, run, **{"train.max_iters": 2, "eval.max_images": 1}))
    real = trainer.atomic_write_json

    def full_for_eval_reports(path, obj):
        if "eval" in pathlib.Path(path).parts:
            from scratchdet.files import output_error

            raise output_error(path, OSError(errno.ENOSPC, "No space left on device"))
        real(path, obj)

    monkeypatch.setattr(trainer, "atomic_write_json", full_for_eval_reports)
    with pytest.raises(OutputError, match=r"iter_0000002\.json: No space left on device .* checkpoints included"):
        trainer.train(cfg)
    checkpoint = latest_checkpoint(RunFolder(run).checkpoints)
    assert checkpoint is not None and checkpoint.name == "model_0000002.pth"  # saved before the evaluation
    verify_checkpoint(checkpoint)
