"""The sequential study (spec `stopping.enabled`): after every run of a schedule is evaluated, the study stops when
the report's decision rule says its question is settled; a rerun with stopping off trains the rest from the shared
checkpoints and ends with the numbers of a study run without stopping."""

from __future__ import annotations

import pytest
from helpers import MINI_CONFIG, need_slurm, tiny_overrides, tiny_study_overrides, wait_for_study, write_study_spec

from scratchdet.config import load_config
from scratchdet.engine import trainer
from scratchdet.engine.metrics import read_metrics
from scratchdet.report.page import write_report
from scratchdet.report.results import load_study
from scratchdet.study import runner
from scratchdet.study.graph import read_graph
from scratchdet.study.records import read_record
from scratchdet.study.status import exit_code, format_status, study_status
from scratchdet.study.stopping import job_levels, plan_schedules, read_decision

pytestmark = pytest.mark.e2e  # whole studies


@pytest.fixture(scope="module")
def weights(shapes_dir, tmp_path_factory):
    """One weights file for every pre-trained arm of this module's studies."""
    out = tmp_path_factory.mktemp("weights") / "run"
    trainer.train(load_config(MINI_CONFIG, tiny_overrides(shapes_dir, out, **{"train.max_iters": 2})))
    return out


def spec_with_same_weights_twice(
    tmp_path, shapes_dir, weights, output, stopping: bool, margin=50.0, pretrained=("imagenet", "inhouse"), **launcher
):
    """Scratch and two pre-trained arms from one weights file, 1x and 2x, built to settle at 1x: the pre-trained arms
    are the same network, and the margin is 50 AP, so every interval's upper end (at most a few AP on these 2
    validation images; 3.57 measured) lies inside it whatever the float path. With the default 0.5 AP margin the
    same study does not settle on 2 images, which is the rule working (the decision's own tests cover that). One
    intra-op thread, so that every launcher runs the same float path and ends with the same numbers."""
    arms = [{"name": "scratch"}, *({"name": a, "init": "pretrained", "weights": str(weights)} for a in pretrained)]
    return write_study_spec(
        tmp_path / f"{output}.yaml",
        tmp_path / output,
        tiny_study_overrides(shapes_dir, **{"train.num_threads": 1}),
        arms=arms,
        schedules=[1, 2],
        stopping={"enabled": stopping},
        verdict={"margin": margin},
        launcher={"gpus_per_task": 0, "time_minutes": 10, "signal_delay_s": 30, **launcher},
    )


@pytest.fixture(scope="module")
def straight_finals(shapes_dir, weights, tmp_path_factory):
    """{run: final bbox AP} of the same study that never stopped: stopping on at the default 0.5 AP margin, which on 2
    validation images no interval is narrow enough to settle, so it trains the whole graph, as a study without
    stopping does (a job's numbers do not depend on the launch that ran it: test_launchers.py). One study serves
    as the reference and as the check that a study that does not settle runs everything."""
    tmp = tmp_path_factory.mktemp("straight")
    spec = spec_with_same_weights_twice(tmp, shapes_dir, weights, "straight", True, margin=0.5)
    study = runner.run_study(spec, report=False)
    assert read_decision(study) is None and not (study / "decision.json").exists()
    statuses = study_status(study)
    assert all(s.state == "finished" for s in statuses) and exit_code(statuses) == 0
    return finals(study)


def finals(study) -> dict:
    """{run: (planned iterations, iteration of its final evaluation, bbox and segm stats, last logged training loss)}:
    AP alone would compare None with None where a tiny run predicts nothing."""
    out = {}
    for r in load_study(study).runs:
        last = r.last_eval or {}
        losses = [m["loss"] for m in read_metrics(r.path, "train")]
        out[r.name] = (
            r.max_iters,
            last.get("iter"),
            last.get("bbox"),
            last.get("segm"),
            losses[-1] if losses else None,
        )
    return out


def check_settled_at_1x(study, statuses, arms=("scratch", "imagenet", "inhouse")) -> None:
    """Every 1x run finished; the 2x tails (and the trunk segments only they need) not needed, as decision.json
    lists them; the study counts as complete."""
    decision = read_decision(study)
    assert decision is not None and decision.schedule == 1.0
    states = {s.id: s.state for s in statuses}
    assert all(state == "finished" for job, state in states.items() if job.endswith("_1x")), states
    assert set(decision.not_run) == {job for job, state in states.items() if state == "not needed"}
    assert {j for j in decision.not_run if j.startswith("runs/")} == {f"runs/{a}_all_2x" for a in arms}
    assert decision.iterations_not_run > 0 and decision.device_hours_not_spent > 0
    assert exit_code(statuses) == 0, format_status(statuses)


def test_a_settled_study_stops_after_its_first_schedule_and_a_rerun_without_stopping_finishes_it(
    shapes_dir, weights, straight_finals, tmp_path, capsys
):
    stopped = runner.run_study(spec_with_same_weights_twice(tmp_path, shapes_dir, weights, "seq", True), report=True)
    out = capsys.readouterr().out
    assert "[study] stopping: the study's question is settled at 1x" in out
    check_settled_at_1x(stopped, study_status(stopped))
    # Nothing of 2x was started: the launcher runs shorter schedules first.
    assert not (stopped / "runs/scratch_all_2x").exists()
    report = (stopped / "report" / "report.html").read_text()
    assert "settled at 1x" in report and "runs/scratch_all_2x" in report
    # Launched again with stopping on, it decides again at once, from the finished runs, and lists the same jobs:
    # none of the finished ones.
    first = read_decision(stopped)
    runner.run_study(spec_with_same_weights_twice(tmp_path, shapes_dir, weights, "seq", True), report=False)
    assert read_decision(stopped).not_run == first.not_run
    assert read_decision(stopped).iterations_not_run == first.iterations_not_run
    check_settled_at_1x(stopped, study_status(stopped))

    # stopping off: the rest trains from the shared checkpoints, and every number equals a study without stopping.
    finished = runner.run_study(spec_with_same_weights_twice(tmp_path, shapes_dir, weights, "seq", False), report=False)
    assert read_decision(finished) is None and exit_code(study_status(finished)) == 0
    assert finals(finished) == straight_finals and len(straight_finals) == 6


def test_a_study_that_does_not_settle_runs_everything(straight_finals):
    """The reference study (`straight_finals`) is this case: stopping on, never settled, every run trained to its
    end and evaluated there."""
    assert sorted(straight_finals) == sorted(
        f"{a}_all_{n}x" for a in ("scratch", "imagenet", "inhouse") for n in (1, 2)
    )
    assert all(f[0] and f[1] == f[0] and f[4] is not None for f in straight_finals.values()), straight_finals


def test_a_settled_study_stops_on_the_local_launcher(shapes_dir, weights, tmp_path, capsys):
    spec = spec_with_same_weights_twice(
        tmp_path, shapes_dir, weights, "local", True, pretrained=("imagenet",), name="local", max_parallel=2
    )
    study = runner.run_study(spec, report=False)
    assert "[study] stopping: the study's question is settled at 1x" in capsys.readouterr().out
    check_settled_at_1x(study, study_status(study), arms=("scratch", "imagenet"))
    # Two slots, and still nothing of 2x started beside the 1x tails: it waited for the decision, so every job that
    # serves 2x first is left, and saved whole.
    decision, graph = read_decision(study), read_graph(study)
    levels = job_levels(graph.jobs, plan_schedules(study))
    assert set(decision.not_run) == {j.id for j in graph.jobs if levels[j.id] > 1.0}
    assert not any(read_record(study, j).get("submitted") for j in decision.not_run)
    assert decision.iterations_not_run == sum(graph.job(j).iters for j in decision.not_run)


def test_a_settled_study_stops_under_slurm_and_resubmitted_without_stopping_finishes_it(
    shapes_dir, weights, straight_finals, tmp_path
):
    need_slurm()
    # Scratch and one pre-trained arm: the SLURM round trips, not the number of arms, are what this test is about.
    one = {"pretrained": ("imagenet",), "name": "slurm"}
    spec = spec_with_same_weights_twice(tmp_path, shapes_dir, weights, "slurm", True, **one)
    study = runner.run_study(spec, report=False)
    graph = read_graph(study)
    decide = graph.job("decide/1x")
    assert set(decide.deps) == {f"runs/{a}_all_1x" for a in ("scratch", "imagenet")}
    statuses = wait_for_study(study)
    check_settled_at_1x(study, statuses, arms=("scratch", "imagenet"))
    # The decision ran as a job of the graph, recorded like every job, and its cancelled jobs never started.
    record = read_record(study, "decide/1x")
    assert record["state"] == "finished" and record["outcome"]["state"] == "checked", record
    assert "settled at 1x" in record["outcome"]["detail"]
    assert not (study / "runs/scratch_all_2x").exists()
    assert all(read_record(study, j)["outcome"]["state"] == "not needed" for j in read_decision(study).not_run)
    report = (write_report(study)).read_text()
    assert "settled at 1x" in report and "runs/scratch_all_2x" in report

    # Submitting again with stopping on submits nothing that the decision left out.
    runner.run_study(spec, report=False)
    assert not (study / "runs/scratch_all_2x").exists()
    assert all(read_record(study, j).get("submissions", 1) == 1 for j in read_decision(study).not_run)

    # stopping off: the rest is submitted, trains from the shared checkpoints and ends with the numbers of a study
    # run without stopping (on another launcher).
    spec = spec_with_same_weights_twice(tmp_path, shapes_dir, weights, "slurm", False, **one)
    runner.run_study(spec, report=False)
    statuses = wait_for_study(study)
    assert read_decision(study) is None and exit_code(statuses) == 0, format_status(statuses)
    # Each run's numbers depend on its own arm only: the two arms' runs equal those of the three-arm study.
    assert finals(study) == {name: f for name, f in straight_finals.items() if not name.startswith("inhouse")}
