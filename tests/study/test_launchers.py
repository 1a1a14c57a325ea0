"""A study through the local launcher and through a real SLURM cluster (scripts/local_slurm.sh; .ci/run starts it).

The tiny study: a scratch arm, schedules 1x and 2x sharing a trunk (jobs trunk@2 -> trunk@6, 1x tail 2..4, 2x
tail 6..8). At the same number of processes per job, every launcher must end with exactly the same parameters,
evaluations and image ids: where a job runs changes nothing it computes. Across process counts the image ids and
sample counts stay the same (the global batch is split over the ranks), but the RPN/RoI sampling draws come from
one RNG stream per rank, so the parameters differ (tests/distributed covers that split).
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import warnings
from pathlib import Path

import pytest
import torch
from helpers import need_slurm, tiny_study_overrides, wait_for_study, write_study_spec

from scratchdet.engine.checkpoint import latest_checkpoint, load_checkpoint
from scratchdet.engine.metrics import read_metrics
from scratchdet.errors import ScratchdetError
from scratchdet.study import runner
from scratchdet.study.graph import read_graph
from scratchdet.study.records import read_record
from scratchdet.study.status import exit_code, format_status, study_status

# Whole studies on the local launcher, torchrun and the real SLURM cluster: `make test-fast` leaves them out.
pytestmark = pytest.mark.e2e

RUNS = ("runs/scratch_all_1x", "runs/scratch_all_2x")


def write_spec(tmp_path: Path, shapes_dir: Path, study: str, schedules=(1, 2), **launcher) -> Path:
    overrides = tiny_study_overrides(
        shapes_dir,
        **{
            "train.num_threads": 1,  # one intra-op thread everywhere, so float reductions run in the same order
            "train.record_image_ids": "true",
        },
    )
    launcher = {"gpus_per_task": 0, "time_minutes": 10, "signal_delay_s": 30, **launcher}
    return write_study_spec(
        tmp_path / f"{study}.yaml", tmp_path / study, overrides, schedules=list(schedules), launcher=launcher
    )


def final_state(run_dir: Path) -> dict:
    return load_checkpoint(latest_checkpoint(run_dir / "checkpoints"))


def image_ids(run_dir: Path) -> list:
    return [(r["iter"], r["image_ids"]) for r in read_metrics(run_dir, "batch")]


def last_eval(run_dir: Path) -> dict:
    report = read_metrics(run_dir, "eval")[-1]
    return {k: v for k, v in report.items() if not k.endswith("_s")}  # everything but the timings


def assert_same_runs(a: Path, b: Path, *, exact: bool = True) -> None:
    for run in RUNS:
        sa, sb = final_state(a / run), final_state(b / run)
        assert sa["iteration"] == sb["iteration"] and sa["seen"] == sb["seen"], run
        assert image_ids(a / run) == image_ids(b / run), run
        if exact:
            assert last_eval(a / run) == last_eval(b / run), run
            for key, value in sa["model"].items():
                assert torch.equal(value, sb["model"][key]), f"{run}: {key}"


@pytest.fixture(scope="module")
def inprocess_study(shapes_dir, tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("inprocess")
    return runner.run_study(write_spec(tmp, shapes_dir, "tiny"), report=False)


@pytest.fixture(scope="module")
def local_two_task_study(shapes_dir, tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("local2")
    spec = write_spec(tmp, shapes_dir, "local2", name="local", tasks_per_node=2, max_parallel=2)
    try:
        study = runner.run_study(spec, report=False)
    except ScratchdetError as e:
        # Twice in CI a 2-process job exited with status 1 after its work was done, without recording an error:
        # its second process aborted at exit ("terminate called without an active exception", a gloo group still
        # alive at interpreter exit). study/jobs.py run_job now leaves the group first; not seen since. Should another
        # cause remain: the launcher printed the job's last log lines above, and rerunning the same command resumes,
        # as it would for a user, while the comparisons below still need every number to match.
        warnings.warn(f"local 2-process study failed once and was rerun: {e}", stacklevel=1)
        study = runner.run_study(spec, report=False)
    assert exit_code(study_status(study)) == 0, format_status(study_status(study))
    return study


def test_dry_run_prints_the_graph_and_device_hours(shapes_dir, tmp_path, capsys):
    from scratchdet.cli import main

    spec = write_spec(tmp_path, shapes_dir, "tiny", images_per_second_per_device=2.0)
    assert main(["study", str(spec), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "trunks/scratch_all@2 " in out and "after: trunks/scratch_all@2" in out
    assert "runs/scratch_all_2x" in out and "after: trunks/scratch_all@6" in out
    # 10 shared iterations x 2 images / 2 images/s = 10 s of device time; separately 12 iterations = 12 s.
    assert "estimated 0.00278 device-hours" in out and "separate runs would need 0.00333" in out
    assert not (tmp_path / "tiny").exists()  # a dry run writes nothing


def test_local_launcher_one_process_per_job_equals_inprocess_exactly(shapes_dir, tmp_path, inprocess_study, capsys):
    spec = write_spec(tmp_path, shapes_dir, "local1", name="local", max_parallel=2)
    study = runner.run_study(spec, report=False)
    assert_same_runs(study, inprocess_study)
    # The 1x tail and the trunk's second segment depend only on the first segment: they ran side by side.
    first = read_record(study, "trunks/scratch_all@2")
    tail, segment = read_record(study, "runs/scratch_all_1x"), read_record(study, "trunks/scratch_all@6")
    assert tail["started"] >= first["ended"] and segment["started"] >= first["ended"]
    assert tail["started"] < segment["ended"] and segment["started"] < tail["ended"]
    from scratchdet.cli import main

    capsys.readouterr()
    assert main(["study", "status", str(study)]) == 0
    table = capsys.readouterr().out
    assert table.startswith("4/4 jobs finished, 10/10 iterations") and "runs/scratch_all_2x" in table
    assert main(["study", "status", str(study), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["exit_code"] == 0 and {j["state"] for j in shown["jobs"]} == {"finished"}
    assert [j["iteration"] for j in shown["jobs"]] == [2, 6, 4, 8]


def test_local_launcher_two_processes_per_job_sees_the_inprocess_images(local_two_task_study, inprocess_study):
    start = read_metrics(local_two_task_study / "runs/scratch_all_2x", "start")[-1]
    assert start["world_size"] == 2  # every job really ran as 2 processes
    assert_same_runs(local_two_task_study, inprocess_study, exact=False)


def test_slurm_two_tasks_per_job_equals_local_exactly(shapes_dir, tmp_path, local_two_task_study):
    need_slurm()
    study = runner.run_study(write_spec(tmp_path, shapes_dir, "slurm2", name="slurm", tasks_per_node=2), report=False)
    statuses = wait_for_study(study)
    assert exit_code(statuses) == 0, format_status(statuses)
    assert_same_runs(study, local_two_task_study)
    for job in read_graph(study).jobs:
        record = read_record(study, job.id)
        assert record["state"] == "finished" and record["submissions"] == 1 and record["slurm_job_id"]


def _scontrol(*args: str) -> None:
    subprocess.run(["scontrol", *args], check=True, capture_output=True, text=True, timeout=30)


def test_slurm_failed_segment_cancels_its_dependents_and_resubmission_runs_only_those(shapes_dir, tmp_path):
    need_slurm()
    spec = write_spec(tmp_path, shapes_dir, "failing", name="slurm")
    study = runner.run_study(spec, report=False)
    segment = read_record(study, "trunks/scratch_all@6")["scheduler_id"]
    _scontrol("hold", segment)  # keeps the second trunk segment from starting until the trunk is broken
    submitted = {j.id: read_record(study, j.id)["scheduler_id"] for j in read_graph(study).jobs}

    runner.run_study(spec, report=False)  # submitting again while everything is queued submits nothing
    assert {j.id: read_record(study, j.id)["scheduler_id"] for j in read_graph(study).jobs} == submitted
    assert {read_record(study, j)["submissions"] for j in submitted} == {1}

    deadline = time.time() + 300
    while read_record(study, "trunks/scratch_all@2").get("state") != "finished" and time.time() < deadline:
        time.sleep(0.5)
    # Break only what the second segment needs: the trunk's checkpoint pointer (the 1x fork copies its checkpoint
    # by name and goes on).
    pointer = study / "trunks/scratch_all/checkpoints/last_checkpoint"
    saved = pointer.read_text()
    pointer.write_text("garbage")
    _scontrol("release", segment)
    statuses = {s.id: s for s in wait_for_study(study)}
    assert statuses["trunks/scratch_all@6"].state == "failed"
    assert "the run folder was altered" in statuses["trunks/scratch_all@6"].error
    assert statuses["runs/scratch_all_2x"].state == "cancelled"  # never started: no run folder
    assert not (study / "runs/scratch_all_2x").exists()
    assert statuses["trunks/scratch_all@2"].state == statuses["runs/scratch_all_1x"].state == "finished"

    pointer.write_text(saved)
    runner.run_study(spec, report=False)
    resubmitted = {j: read_record(study, j)["scheduler_id"] for j in submitted}
    changed = sorted(j for j in submitted if resubmitted[j] != submitted[j])
    assert changed == ["runs/scratch_all_2x", "trunks/scratch_all@6"]
    statuses = wait_for_study(study)
    assert exit_code(statuses) == 0, format_status(statuses)


def test_slurm_job_signalled_mid_run_requeues_and_resumes_exactly(shapes_dir, tmp_path):
    need_slurm()
    # One schedule (no trunk): one job of 24 iterations, long enough to be signalled in the middle.
    reference = runner.run_study(write_spec(tmp_path, shapes_dir, "long", schedules=[6]), report=False)
    spec = write_spec(tmp_path, shapes_dir, "preempted", schedules=[6], name="slurm")
    study = runner.run_study(spec, report=False)
    job = "runs/scratch_all_6x"
    slurm_id = read_record(study, job)["scheduler_id"]
    deadline = time.time() + 300
    while len(read_metrics(study / job, "train")) < 3 and time.time() < deadline:
        time.sleep(0.2)
    subprocess.run(["scancel", "--signal=TERM", slurm_id], check=True, timeout=30)
    statuses = {s.id: s for s in wait_for_study(study)}
    assert statuses[job].state == "finished" and statuses[job].requeues == 1
    assert "requeues" in format_status(list(statuses.values()))
    (stop,) = read_metrics(study / job, "preempted")
    assert 3 <= stop["iter"] < 24
    assert read_record(study, job)["slurm_restarts"] == 1  # the same SLURM job, started a second time
    a, b = final_state(reference / job), final_state(study / job)
    assert a["iteration"] == b["iteration"] == 24 and a["seen"] == b["seen"]
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    assert image_ids(reference / job) == image_ids(study / job)  # nothing skipped or repeated across the requeue
    json.dumps([s.__dict__ for s in statuses.values()])  # the status is JSON-serializable (`--json`)


def test_forked_job_writes_its_log_and_exit_status(tmp_path):
    """One-process local jobs fork from a server that imported torch once; they keep a subprocess's contract: output
    in the job's log and `scratchdet study job`'s exit status (the stop path: test_runner.py)."""
    from scratchdet.study.launchers import ForkedJob

    log_path = tmp_path / "job.log"
    job = ForkedJob(["study", "job", str(tmp_path / "no-study"), "runs/x"], log_path, dict(os.environ))
    deadline = time.monotonic() + 120
    while job.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert job.returncode == 2  # a ScratchdetError, as the CLI reports it
    text = log_path.read_text()
    assert "error:" in text and "no-study" in text
