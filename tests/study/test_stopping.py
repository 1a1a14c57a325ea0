"""The sequential study (spec `stopping.enabled`): after every run of a schedule is evaluated, the study stops when
the report's decision rule says its question is settled; a rerun with stopping off trains the rest from the shared
checkpoints and ends with the numbers of a study run without stopping."""

from __future__ import annotations

import json

import pytest
from helpers import MINI_CONFIG, tiny_overrides, tiny_study_overrides, write_study_spec

from scratchdet.config import load_config
from scratchdet.engine import trainer
from scratchdet.errors import ConfigError
from scratchdet.report.results import load_study
from scratchdet.study import runner
from scratchdet.study.spec import load_study_spec
from scratchdet.study.status import exit_code, study_status
from scratchdet.study.stopping import read_decision

pytestmark = pytest.mark.e2e  # whole studies


def spec_with_same_weights_twice(tmp_path, shapes_dir, output, stopping: bool):
    """Scratch and two pre-trained arms from one weights file, 1x and 2x, built to settle at 1x: the pre-trained arms
    are the same network, and the margin is 50 AP, so every interval's upper end (at most a few AP on these 2
    validation images; 3.57 measured) lies inside it whatever the float path. With the default 0.5 AP margin the
    same study does not settle on 2 images, which is the rule working (the decision's own tests cover that)."""
    weights = tmp_path / "weights"
    if not weights.exists():
        trainer.train(load_config(MINI_CONFIG, tiny_overrides(shapes_dir, weights, **{"train.max_iters": 2})))
    arms = [
        {"name": "scratch"},
        {"name": "imagenet", "init": "pretrained", "weights": str(weights)},
        {"name": "inhouse", "init": "pretrained", "weights": str(weights)},
    ]
    return write_study_spec(
        tmp_path / f"{output}.yaml",
        tmp_path / output,
        tiny_study_overrides(shapes_dir),
        arms=arms,
        schedules=[1, 2],
        stopping={"enabled": stopping},
        verdict={"margin": 50.0},
    )


def test_a_settled_study_stops_after_its_first_schedule_and_a_rerun_without_stopping_finishes_it(
    shapes_dir, tmp_path, capsys
):
    stopped = runner.run_study(spec_with_same_weights_twice(tmp_path, shapes_dir, "seq", True), report=True)
    out = capsys.readouterr().out
    decision = read_decision(stopped)
    assert decision is not None and decision.schedule == 1.0, out
    assert "[study] stopping: the study's question is settled at 1x" in out
    # Every 1x run finished; the 2x tails (and the trunk segments only they need) were not run.
    statuses = {s.id: s.state for s in study_status(stopped)}
    assert all(state == "finished" for job, state in statuses.items() if job.endswith("_1x"))
    assert set(decision.not_run) == {job for job, state in statuses.items() if state == "not needed"}
    assert {j for j in decision.not_run if j.startswith("runs/")} == {
        f"runs/{a}_all_2x" for a in ("scratch", "imagenet", "inhouse")
    }
    assert decision.iterations_not_run > 0 and decision.device_hours_not_spent > 0
    assert exit_code(study_status(stopped)) == 0
    report = (stopped / "report" / "report.html").read_text()
    assert "settled at 1x" in report and "runs/scratch_all_2x" in report

    # stopping off: the rest trains from the shared checkpoints, and every number equals a study without stopping.
    finished = runner.run_study(spec_with_same_weights_twice(tmp_path, shapes_dir, "seq", False), report=False)
    assert read_decision(finished) is None and exit_code(study_status(finished)) == 0
    straight = runner.run_study(spec_with_same_weights_twice(tmp_path, shapes_dir, "straight", False), report=False)
    finals = {
        study: {r.name: (r.last_eval or {}).get("bbox") for r in load_study(study).runs}
        for study in (finished, straight)
    }
    assert finals[finished] == finals[straight] and len(finals[finished]) == 6


def test_stopping_with_the_slurm_launcher_is_refused(tmp_path):
    path = tmp_path / "spec.yaml"
    path.write_text(
        json.dumps(
            {
                "name": "s",
                "base_config": str(MINI_CONFIG),
                "output": str(tmp_path / "out"),
                "stopping": {"enabled": True},
                "launcher": {"name": "slurm"},
            }
        )
    )
    with pytest.raises(ConfigError, match="stopping.enabled=true runs with launcher.name=inprocess or local"):
        load_study_spec(path)
