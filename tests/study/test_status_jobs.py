"""`study status`, job records, the finished rule and the run-folder lock, on hand-made study folders (no training).

The study tests that train (test_runner.py, test_launchers.py) reach this code too, but only along the paths a
real launch takes; these pin each rule on its own, in milliseconds.
"""

import json
import os

import pytest

from scratchdet.errors import ScratchdetError
from scratchdet.run_folder import RunFolder, checkpoint_name
from scratchdet.study import jobs as jobs_module
from scratchdet.study.graph import Job, JobGraph
from scratchdet.study.jobs import run_folder_lock, run_job
from scratchdet.study.outcome import JobOutcome, JobState
from scratchdet.study.records import is_finished, read_record, update_record
from scratchdet.study.status import (
    exit_code,
    format_status,
    iteration_counts,
    progress_line,
    status_json,
    study_status,
)


def make_study(tmp_path, *jobs: Job) -> JobGraph:
    graph = JobGraph(str(tmp_path), str(tmp_path), list(jobs))
    graph.write()
    return graph


def segment(end: int, start: int = 0, deps=()) -> Job:
    return Job(f"trunks/t@{end}", "segment", "trunks/t", "unused.yaml", [], start, end, deps=list(deps))


def run(name: str, end: int, start: int = 0, deps=()) -> Job:
    return Job(f"runs/{name}", "run", f"runs/{name}", "unused.yaml", [], start, end, deps=list(deps))


def checkpoint(folder, iteration: int, evaluated: bool = True) -> None:
    """What the loop leaves after an iteration it checkpoints and evaluates: the checkpoint and the pointer naming it
    (only the pointer is read), then the evaluation report of that iteration (unless `evaluated` is false: a kill
    came between the two)."""
    f = RunFolder(folder)
    f.checkpoints.mkdir(parents=True, exist_ok=True)
    f.checkpoint(iteration).write_bytes(b"")
    f.pointer.write_text(checkpoint_name(iteration))
    if evaluated:
        f.eval_dir.mkdir(exist_ok=True)
        f.eval_report(iteration).write_text(json.dumps({"iter": iteration}))


def metrics(folder, *records: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    with RunFolder(folder).metrics.open("a") as f:
        for record in records:
            f.write(json.dumps(record) + "\n")


def by_id(statuses):
    return {s.id: s for s in statuses}


# ------------------------------------------------------------------------------------------------ the finished rule


def test_a_run_is_finished_when_its_checkpoint_reaches_its_end_and_that_iteration_is_evaluated(tmp_path):
    job = run("a", 10)
    assert not is_finished(tmp_path, job)
    checkpoint(tmp_path / job.path, 8)
    assert not is_finished(tmp_path, job)
    checkpoint(tmp_path / job.path, 10, evaluated=False)  # killed between the final checkpoint and its evaluation
    assert not is_finished(tmp_path, job)
    (status,) = study_status(make_study(tmp_path, job).study_dir)
    assert status.state != "finished" and status.iteration == 10
    checkpoint(tmp_path / job.path, 10)
    assert is_finished(tmp_path, job)


def test_a_pretraining_is_finished_by_its_summary(tmp_path):
    job = Job("pretrain/p", "pretrain", "pretrain/p", "unused.yaml", [], 0, None, single_process=True)
    checkpoint(tmp_path / job.path, 600)  # a checkpoint is not the end of a pre-training: its summary is
    assert not is_finished(tmp_path, job)
    RunFolder(tmp_path / job.path).pretrain_summary.write_text("{}")
    assert is_finished(tmp_path, job)


# ------------------------------------------------------------------------------------------------ records


def test_update_record_merges_fields_and_leaves_no_temp_file(tmp_path):
    update_record(tmp_path, "runs/a", state="running", pid=1)
    record = update_record(tmp_path, "runs/a", state="finished", outcome=JobOutcome(JobState.TRAINED).to_record())
    assert record == {"state": "finished", "pid": 1, "outcome": {"state": "trained", "detail": ""}}
    assert read_record(tmp_path, "runs/a") == record
    assert [p.name for p in (tmp_path / "jobs" / "runs").iterdir()] == ["a.json"]


def test_an_unreadable_record_reads_as_none(tmp_path):
    (tmp_path / "jobs" / "runs").mkdir(parents=True)
    (tmp_path / "jobs" / "runs" / "a.json").write_text('{"state": "runn')  # torn by a crash of an old version
    assert read_record(tmp_path, "runs/a") == {}
    (tmp_path / "jobs" / "runs" / "a.json").write_text("[1, 2]")
    assert read_record(tmp_path, "runs/a") == {}


def test_outcomes_round_trip_through_records_and_read_as_words():
    failed = JobOutcome(JobState.FAILED, "DataError: no image")
    assert JobOutcome.from_record(failed.to_record()) == failed
    assert str(failed) == "failed: DataError: no image" and failed.failed and not failed.done
    assert str(JobOutcome(JobState.NOT_RUN, "trunks/t@2 failed")) == "not run: trunks/t@2 failed"
    assert str(JobOutcome(JobState.SKIPPED, "(finished)")) == "skipped (finished)"
    assert JobOutcome(JobState.CONTINUED, "the trunk from iteration 2").trained
    assert JobOutcome(JobState.SKIPPED).done and not JobOutcome(JobState.SKIPPED).trained
    assert not JobOutcome(JobState.STOPPED).done and not JobOutcome(JobState.STOPPED).failed
    # Strings (what older versions wrote) and unknown states are no outcome, never a guess.
    assert JobOutcome.from_record("trained") is None and JobOutcome.from_record({"state": "exploded"}) is None


# ------------------------------------------------------------------------------------------------ the lock


def test_a_second_writer_of_a_run_folder_is_refused_naming_the_holder(tmp_path):
    job = run("a", 10)
    held = rf"runs/a is being trained by pid {os.getpid()} .*job runs/a"
    # flock locks belong to the open file: a second open, even in this process, is a second writer.
    with run_folder_lock(tmp_path, job), pytest.raises(ScratchdetError, match=held), run_folder_lock(tmp_path, job):
        pass
    with run_folder_lock(tmp_path, job):  # released on exit
        pass


def test_the_lock_is_released_when_the_job_raises(tmp_path):
    job = run("a", 10)
    with pytest.raises(RuntimeError), run_folder_lock(tmp_path, job):
        raise RuntimeError("the job failed")
    with run_folder_lock(tmp_path, job):
        pass


# ------------------------------------------------------------------------------------------------ run_job


def test_run_job_of_a_finished_run_skips_it_and_records_the_outcome(tmp_path):
    job = run("a", 4)
    make_study(tmp_path, job)
    checkpoint(tmp_path / job.path, 4)
    outcome = run_job(tmp_path, job.id)
    assert outcome == JobOutcome(JobState.SKIPPED, "(finished)")
    record = read_record(tmp_path, job.id)
    assert record["state"] == "finished" and JobOutcome.from_record(record["outcome"]) == outcome


def test_run_job_records_a_failure_with_its_error_and_raises(tmp_path, monkeypatch):
    job = run("a", 4)
    make_study(tmp_path, job)

    def fails(graph, job):
        raise ScratchdetError("annotation file not found: x.json")

    monkeypatch.setattr(jobs_module, "execute", fails)
    with pytest.raises(ScratchdetError, match="annotation file not found"):
        run_job(tmp_path, job.id)
    record = read_record(tmp_path, job.id)
    assert record["state"] == "failed" and "annotation file not found" in record["error"]
    assert JobOutcome.from_record(record["outcome"]).state is JobState.FAILED
    with run_folder_lock(tmp_path, job):  # the failed job let go of its run folder
        pass


# ------------------------------------------------------------------------------------------------ study status


def test_status_reads_run_folders_first_then_records(tmp_path):
    trunk, tail, other = segment(2), run("a_1x", 4, start=2, deps=["trunks/t@2"]), run("b", 6)
    make_study(tmp_path, trunk, tail, other)
    checkpoint(tmp_path / trunk.path, 2)
    update_record(tmp_path, trunk.id, state="failed", error="stale record")  # the checkpoint outranks it
    update_record(tmp_path, tail.id, state="running", pid=os.getpid())  # alive: this process
    metrics(
        tmp_path / tail.path,
        {"type": "start", "iter": 2},
        {"type": "train", "iter": 3, "time_per_iter": 0.5},
        {"type": "eval", "iter": 3, "bbox": {"AP": 12.34}},
    )
    update_record(tmp_path, other.id, state="failed", error="TrainingError: loss is nan")
    statuses = by_id(study_status(tmp_path))
    assert statuses[trunk.id].state == "finished" and statuses[trunk.id].error is None
    running = statuses[tail.id]
    assert (running.state, running.iteration, running.time_per_iter, running.eta_s) == ("running", 3, 0.5, 0.5)
    assert (running.last_ap, running.last_ap_iter) == (12.34, 3)
    assert statuses[other.id].state == "failed" and statuses[other.id].error == "TrainingError: loss is nan"
    assert exit_code(list(statuses.values())) == 1
    assert iteration_counts(list(statuses.values())) == (2 + 1, 2 + 2 + 6)


def test_a_running_record_whose_process_is_gone_reads_stopped(tmp_path):
    job = run("a", 4)
    make_study(tmp_path, job)
    dead = os.fork()
    if dead == 0:
        os._exit(0)
    os.waitpid(dead, 0)
    update_record(tmp_path, job.id, state="running", pid=dead, host=os.uname().nodename, error="killed?")
    (status,) = study_status(tmp_path)
    assert status.state == "stopped" and exit_code([status]) == 3


def test_segments_of_one_trunk_show_their_own_iterations(tmp_path):
    first, second = segment(2), segment(6, start=2, deps=["trunks/t@2"])
    make_study(tmp_path, first, second)
    checkpoint(tmp_path / first.path, 2)  # the first segment's end, evaluated
    checkpoint(tmp_path / first.path, 4, evaluated=False)  # the second segment is under way in the shared folder
    metrics(tmp_path / first.path, *({"type": "train", "iter": i, "time_per_iter": 1.0} for i in range(1, 5)))
    statuses = by_id(study_status(tmp_path))
    assert statuses[first.id].state == "finished" and statuses[first.id].iteration == 2
    assert statuses[second.id].iteration == 4 and statuses[second.id].state == "not submitted"
    assert iteration_counts(list(statuses.values())) == (2 + 2, 6)
    assert progress_line(list(statuses.values())) == "1/2 jobs finished, 4/6 iterations"


def test_an_evaluation_without_predictions_is_shown_as_none_not_an_older_ap(tmp_path):
    job = run("a", 4)
    make_study(tmp_path, job)
    metrics(
        tmp_path / job.path,
        {"type": "eval", "iter": 2, "bbox": {"AP": 5.0}},
        {"type": "eval", "iter": 4, "status": "no predictions"},
    )
    (status,) = study_status(tmp_path)
    assert (status.last_ap, status.last_ap_iter) == (None, 4)
    assert "none @4" in format_status([status])


def test_status_json_is_what_study_status_prints_and_carries_the_last_outcome(tmp_path):
    job = run("a", 4)
    make_study(tmp_path, job)
    checkpoint(tmp_path / job.path, 4)
    update_record(tmp_path, job.id, outcome=JobOutcome(JobState.TRAINED).to_record())
    statuses = study_status(tmp_path)
    data = json.loads(status_json(statuses))
    assert data["exit_code"] == exit_code(statuses) == 0
    assert data["progress"] == progress_line(statuses) == "1/1 jobs finished, 4/4 iterations"
    assert data["jobs"][0]["outcome"] == {"state": "trained", "detail": ""}
    assert format_status(statuses).splitlines()[0] == data["progress"]


def test_status_of_a_folder_that_is_not_a_study_names_it(tmp_path):
    with pytest.raises(ScratchdetError, match=r"jobs.json cannot be read .*is .* a study folder"):
        study_status(tmp_path)
