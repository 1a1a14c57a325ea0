"""Finished means evaluated: a run killed (kill -9) between its final checkpoint and its final evaluation is not
finished; rerunning the same study command evaluates it, trains nothing, and the number equals an uninterrupted
run's (docs/RELIABILITY.md)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
from helpers import ROOT, tiny_study_overrides, write_study_spec

from scratchdet.engine.metrics import read_metrics
from scratchdet.report.results import load_study
from scratchdet.run_folder import RunFolder
from scratchdet.study import runner
from scratchdet.study.status import study_status

# The study command, with a hook that SIGKILLs the process when the trainer is about to evaluate iteration
# KILL_AT: after the checkpoint of that iteration is on disk (the loop saves, then evaluates).
KILLED_STUDY = textwrap.dedent(
    """
    import os, signal, sys
    from scratchdet.engine import trainer
    from scratchdet.study.runner import run_study

    real = trainer.run_evaluation

    def kill_before_evaluating(model, val_set, cfg, device, iteration, *args, **kwargs):
        if iteration == int(sys.argv[2]):
            os.kill(os.getpid(), signal.SIGKILL)
        return real(model, val_set, cfg, device, iteration, *args, **kwargs)

    trainer.run_evaluation = kill_before_evaluating
    if __name__ == "__main__":
        run_study(sys.argv[1], report=False)
    """
)


@pytest.mark.e2e
def test_kill_between_final_checkpoint_and_final_evaluation_then_rerun_evaluates_it(shapes_dir, tmp_path):
    overrides = tiny_study_overrides(shapes_dir)
    killed = write_study_spec(tmp_path / "killed.yaml", tmp_path / "killed", overrides, schedules=[1])
    straight = write_study_spec(tmp_path / "straight.yaml", tmp_path / "straight", overrides, schedules=[1])
    run = "runs/scratch_all_1x"  # one schedule: one job, 4 iterations
    script = tmp_path / "killed_study.py"
    script.write_text(KILLED_STUDY)
    result = subprocess.run(
        [sys.executable, str(script), str(killed), "4"], cwd=ROOT, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == -9, result.stderr[-2000:]
    folder = RunFolder(tmp_path / "killed" / run)
    assert folder.checkpoint_iteration() == 4 and not folder.eval_report(4).exists()
    (status,) = study_status(tmp_path / "killed")
    assert status.state != "finished"  # the checkpoint alone does not make it finished

    runner.run_study(killed, report=False)
    runner.run_study(straight, report=False)
    outcome = json.loads((tmp_path / "killed" / "status.json").read_text())["jobs"][0]["outcome"]
    assert outcome == {"state": "resumed", "detail": "to evaluate iteration 4, which an interruption left unevaluated"}
    # Nothing was trained again: the train records are the first attempt's, one per iteration.
    assert [r["iter"] for r in read_metrics(folder.root, "train")] == [1, 2, 3, 4]
    evaluated = json.loads(folder.eval_report(4).read_text())
    expected = json.loads(RunFolder(tmp_path / "straight" / run).eval_report(4).read_text())
    assert evaluated["bbox"] == expected["bbox"] and evaluated["segm"] == expected["segm"]
    assert folder.detections(4).is_file()  # the final evaluation keeps its detections, as the uninterrupted one
    (status,) = study_status(tmp_path / "killed")
    assert status.state == "finished"
    (data,) = load_study(tmp_path / "killed").runs
    assert data.finished and data.final() == expected["bbox"]["AP"]
