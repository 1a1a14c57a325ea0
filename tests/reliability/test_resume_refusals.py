"""resume=true never silently starts fresh, also when the latest checkpoint is unreadable (docs/RELIABILITY.md,
promise 4).

(resume without any checkpoint and resume with a changed config are tested in tests/engine/test_trainer.py.)
An unreadable checkpoint is an error naming the file; `train.allow_fresh_start=true` is the explicit way to start
over, and it moves the broken run's files aside instead of mixing two runs in one folder.
"""

from __future__ import annotations

import pytest
import torch
from helpers import MINI_CONFIG, tiny_overrides

from scratchdet.config import load_config
from scratchdet.engine import trainer
from scratchdet.engine.checkpoint import POINTER, latest_checkpoint, load_checkpoint, save_checkpoint
from scratchdet.engine.metrics import read_metrics
from scratchdet.engine.run_dir import prepare_run_dir
from scratchdet.errors import CheckpointError


def _cfg(shapes_dir, out, **extra):
    return load_config(MINI_CONFIG, tiny_overrides(shapes_dir, out, **{"train.max_iters": 1, **extra}))


def _truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _flip_a_byte(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # inside the tensor data: torch.load alone would not notice
    path.write_bytes(bytes(data))


def _delete(path):
    path.unlink()


@pytest.fixture
def broken_run(shapes_dir, tmp_path):
    """A run folder (config.yaml, metrics.jsonl, one checkpoint) whose latest checkpoint is then damaged."""
    out = tmp_path / "run"
    prepare_run_dir(_cfg(shapes_dir, out))
    (out / "metrics.jsonl").write_text('{"type": "train", "iter": 1}\n')
    path = save_checkpoint(out / "checkpoints", 1, {"w": torch.zeros(100_000)})
    return out, path


@pytest.mark.parametrize("damage", [_truncate, _flip_a_byte, _delete], ids=["truncated", "bit_flip", "missing"])
def test_unreadable_checkpoint_is_an_error_naming_it(shapes_dir, broken_run, damage):
    out, path = broken_run
    damage(path)
    with pytest.raises(CheckpointError, match=r"model_0000001\.pth.*train\.allow_fresh_start=true"):
        trainer.train(_cfg(shapes_dir, out, resume="true"))  # fails in prepare_run_dir, before any work
    assert (out / "checkpoints" / POINTER).is_file() and (out / "metrics.jsonl").is_file()  # nothing touched


def test_allow_fresh_start_sets_the_broken_run_aside_and_trains_from_zero(shapes_dir, broken_run):
    out, path = broken_run
    _truncate(path)
    result = trainer.train(_cfg(shapes_dir, out, resume="true", **{"train.allow_fresh_start": "true"}))

    assert result.iter == 1
    (discarded,) = out.glob("discarded_*")
    assert (discarded / "checkpoints" / path.name).is_file() and (discarded / "metrics.jsonl").is_file()
    assert [r["iter"] for r in read_metrics(out, "start")] == [0]  # the new run's log only, from iteration 0
    assert load_checkpoint(latest_checkpoint(out / "checkpoints"))["iteration"] == 1


def test_allow_fresh_start_without_checkpoint_starts_fresh(shapes_dir, tmp_path):
    out = tmp_path / "new"
    assert prepare_run_dir(_cfg(shapes_dir, out, resume="true", **{"train.allow_fresh_start": "true"})) is None
    assert (out / "config.yaml").is_file() and not list(out.glob("discarded_*"))


def test_allow_fresh_start_does_not_let_a_fresh_run_overwrite_checkpoints(shapes_dir, broken_run):
    out, path = broken_run
    _truncate(path)
    with pytest.raises(CheckpointError, match="already holds checkpoints"):
        prepare_run_dir(_cfg(shapes_dir, out, **{"train.allow_fresh_start": "true"}))  # resume=false


def test_readable_checkpoint_still_resumes_with_allow_fresh_start(shapes_dir, broken_run):
    out, path = broken_run
    cfg = _cfg(shapes_dir, out, resume="true", **{"train.allow_fresh_start": "true"})
    assert prepare_run_dir(cfg) == path and not list(out.glob("discarded_*"))


@pytest.mark.parametrize("second", [{}, {"resume": "true", "train.allow_fresh_start": "true"}])
def test_a_fresh_attempt_sets_aside_an_earlier_attempts_records(shapes_dir, tmp_path, capsys, second):
    """An attempt that diverged before its first checkpoint (LR 1e4, evaluated every iteration), then a second one
    into the same folder at a sane LR: the folder holds the second attempt's records only."""
    from scratchdet.errors import TrainingError

    out = tmp_path / "run"
    diverging = {"solver.base_lr": 1e4, "eval.period": 1, "train.checkpoint_period": 100, "train.max_iters": 6}
    with pytest.raises(TrainingError):
        trainer.train(_cfg(shapes_dir, out, **diverging))
    first_evals = sorted(p.name for p in (out / "eval").glob("iter_*.json"))
    assert first_evals and latest_checkpoint(out / "checkpoints") is None  # evaluated, never checkpointed

    trainer.train(_cfg(shapes_dir, out, **{"train.max_iters": 2, **second}))
    assert "holds another attempt's records (" in capsys.readouterr().err
    assert sorted(p.name for p in (out / "eval").glob("iter_*.json")) == ["iter_0000002.json"]
    assert [r["iter"] for r in read_metrics(out, "start")] == [0]  # one attempt's log
    assert [r["lr"] for r in read_metrics(out, "train")][-1] < 1.0
    (discarded,) = out.glob("discarded_*")
    assert sorted(p.name for p in (discarded / "eval").glob("iter_*.json")) == first_evals
    assert (discarded / "metrics.jsonl").is_file() and (discarded / "config.yaml").is_file()
