"""A study killed midway and rerun finishes without redoing finished work."""

import json

import pytest
from helpers import tiny_study_overrides, write_study_spec

from scratchdet.engine import trainer
from scratchdet.engine.metrics import read_metrics
from scratchdet.study import runner
from scratchdet.study.graph import read_graph


def launch_outcomes(study) -> dict[str, str]:
    """{job id: what the last launch did, in words} from status.json, which is what `study status --json` prints."""
    from scratchdet.study.outcome import JobOutcome
    from scratchdet.study.status import status_json, study_status

    text = (study / "status.json").read_text()
    assert text == status_json(study_status(study)) + "\n"
    return {job["id"]: str(JobOutcome.from_record(job["outcome"])) for job in json.loads(text)["jobs"]}


def write_spec(tmp_path, shapes_dir):
    return write_study_spec(tmp_path / "spec.yaml", tmp_path / "study", tiny_study_overrides(shapes_dir), name="tiny")


@pytest.mark.e2e  # whole studies
def test_killed_study_resumes_and_skips_finished_runs(shapes_dir, tmp_path, monkeypatch, capsys):
    spec = write_spec(tmp_path, shapes_dir)
    real_train, calls = trainer.train, []

    def dies_on_the_second_run(cfg):
        calls.append(cfg.output)
        if len(calls) == 4:  # trunk to 2, trunk to 6, 1x's tail, then the 2x tail is "killed" before it trains
            raise KeyboardInterrupt
        return real_train(cfg)

    monkeypatch.setattr(trainer, "train", dies_on_the_second_run)
    with pytest.raises(KeyboardInterrupt):
        runner.run_study(spec, report=False)
    monkeypatch.setattr(trainer, "train", real_train)
    first = capsys.readouterr().out
    trunk_done = "[study] trunks/scratch_all@2: trained\n[study] progress: 1/4 jobs finished, 2/10 iterations, about "
    assert trunk_done in first
    assert "min left at this pace" in first

    study = runner.run_study(spec, report=False)
    out = capsys.readouterr().out
    # The progress line counts the work done before; the time left is at the pace of this launch alone, so it is
    # not given until this launch has trained something.
    skipped = "[study] runs/scratch_all_1x: skipped (finished)\n[study] progress: 3/4 jobs finished, 8/10 iterations\n"
    assert skipped in out
    assert "[study] progress: 4/4 jobs finished, 10/10 iterations\n" in out
    assert "[study] trained 4 detection images in " in out  # the 2x tail's 2 iterations x batch 2, not the skipped
    status = launch_outcomes(study)
    assert status["trunks/scratch_all@2"] == status["trunks/scratch_all@6"] == "skipped (finished)"
    assert status["runs/scratch_all_1x"] == "skipped (finished)"
    # Killed after its fork was set up but before training: it resumes from the forked checkpoint.
    assert status["runs/scratch_all_2x"] == "resumed"
    # The trunk trained once, in two segments (to the 1x fork at 2, then to the 2x fork at 6): one "start" record
    # per segment, never a second one from a redo.
    assert [r["iter"] for r in read_metrics(study / "trunks/scratch_all", "start")] == [0, 2]
    assert [r["iter"] for r in read_metrics(study / "runs/scratch_all_2x", "train")] == list(range(1, 9))
    plan = json.loads((study / "plan.json").read_text())
    assert plan["iterations"] == {"separate": 12, "shared": 6 + 2 + 2, "fraction": pytest.approx(10 / 12, abs=1e-4)}

    again = runner.run_study(spec, report=False)
    assert set(launch_outcomes(again).values()) == {"skipped (finished)"}


@pytest.mark.parametrize("launcher", ["inprocess", pytest.param("local", marks=pytest.mark.e2e)])
def test_a_failed_job_leaves_its_dependents_unstarted_and_reported(tmp_path, launcher, capsys, monkeypatch):
    from scratchdet.errors import ScratchdetError
    from scratchdet.study import launchers
    from scratchdet.study.status import exit_code, study_status

    monkeypatch.setattr(launchers, "PROGRESS_PERIOD_S", 0.0)  # the local launcher's line while jobs run
    spec = write_spec(tmp_path, tmp_path / "no-such-data")
    with pytest.raises(ScratchdetError, match="4 of 4 study jobs failed or were not run"):
        runner.run_study(spec, [f"launcher.name={launcher}", "launcher.gpus_per_task=0"], report=False)
    out = capsys.readouterr().out
    assert "[study] progress: 0/4 jobs finished, 0/10 iterations, 1 failed" in out
    if launcher == "local":
        # The job's own output (its traceback) is shown, since a crash on another rank or in torchrun is only there.
        assert "trunks/scratch_all@2: last lines of" in out and "    error: annotation file not found" in out
    status = launch_outcomes(tmp_path / "study")
    assert status["trunks/scratch_all@2"].startswith("failed")
    assert status["runs/scratch_all_1x"] == status["trunks/scratch_all@6"] == "not run: trunks/scratch_all@2 failed"
    assert not (tmp_path / "study" / "runs").exists()
    statuses = study_status(tmp_path / "study")
    assert exit_code(statuses) == 1 and statuses[0].state == "failed" and "no-such-data" in statuses[0].error


def test_a_study_folder_that_cannot_be_written_is_refused_naming_it(shapes_dir, tmp_path):
    from scratchdet.errors import CheckpointError

    (tmp_path / "a-file").write_text("")
    spec = write_spec(tmp_path, shapes_dir)
    with pytest.raises(CheckpointError, match=r"the study folder .*every job's node can write\) .*a-file/study"):
        runner.run_study(spec, [f"output={tmp_path / 'a-file' / 'study'}"], report=False)


@pytest.mark.e2e
def test_local_launcher_stop_reaches_the_job_and_a_rerun_resumes(shapes_dir, tmp_path):
    """SIGTERM to the local launcher while a job trains: the job (its own process group) gets it, checkpoints at
    its iteration boundary and exits; the launcher raises Preempted; the same command then resumes the job where
    it stopped and finishes the study."""
    import os
    import signal
    import threading
    import time

    from scratchdet.errors import Preempted

    longer = {"schedule.unit_iters=": "100", "train.log_period=": "1"}  # time to stop it mid-run
    overrides = [o for o in tiny_study_overrides(shapes_dir) if not o.startswith(tuple(longer))]
    overrides += [k + v for k, v in longer.items()]
    spec = write_study_spec(tmp_path / "spec.yaml", tmp_path / "study", overrides, name="stop", schedules=[1])
    launcher = ["launcher.name=local", "launcher.gpus_per_task=0"]
    run = tmp_path / "study" / "runs" / "scratch_all_1x"  # one schedule: no shared trunk, one job
    launched = threading.Event()

    def training() -> bool:
        metrics = run / "metrics.jsonl"
        return metrics.exists() and '"type": "train"' in metrics.read_text()

    def stop_once_training():
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and not training() and launched.is_set():
            time.sleep(0.1)
        if launched.is_set():  # never signal this test process once the launcher's handler is gone
            os.kill(os.getpid(), signal.SIGTERM)

    launched.set()
    threading.Thread(target=stop_once_training, daemon=True).start()
    try:
        with pytest.raises(Preempted):
            runner.run_study(spec, launcher, report=False)
    finally:
        launched.clear()
    (stopped,) = read_metrics(run, "preempted")
    assert 1 <= stopped["iter"] < 100
    study = runner.run_study(spec, launcher, report=False)
    assert launch_outcomes(study)["runs/scratch_all_1x"] == "resumed"
    assert [r["iter"] for r in read_metrics(run, "train")] == list(range(1, 101))


@pytest.mark.e2e  # whole studies
def test_a_rerun_with_a_changed_spec_is_refused_before_anything_is_written_and_replan_sets_runs_aside(
    shapes_dir, tmp_path
):
    """Finish a study at one LR, change the LR, rerun into the same folder: the finished run was trained otherwise,
    so the study refuses with the diff (spec.yaml, plan.json and jobs.json unchanged); --replan moves it aside and
    trains it again, so the folder again describes one study."""
    from scratchdet.errors import ConfigError

    overrides = tiny_study_overrides(shapes_dir)
    spec = write_study_spec(tmp_path / "spec.yaml", tmp_path / "study", [*overrides, "solver.base_lr=0.02"])
    study = runner.run_study(spec, report=False)
    records = {name: (study / name).read_bytes() for name in ("spec.yaml", "plan.json", "jobs.json")}

    changed = write_study_spec(tmp_path / "changed.yaml", tmp_path / "study", [*overrides, "solver.base_lr=0.002"])
    with pytest.raises(ConfigError) as refused:
        runner.run_study(changed, report=False)
    message = str(refused.value)
    assert "holds 3 run(s) trained with other settings" in message  # the trunk and the 1x and 2x runs
    assert "runs/scratch_all_1x (runs/scratch_all_1x):\n    solver.base_lr: 0.02 -> 0.002" in message
    assert "output=DIR" in message and "--replan" in message
    assert {name: (study / name).read_bytes() for name in records} == records

    runner.run_study(changed, report=False, replan=True)
    (discarded,) = study.glob("discarded_*")
    assert (discarded / "runs" / "scratch_all_1x" / "config.yaml").is_file()
    assert (discarded / "trunks" / "scratch_all" / "config.yaml").is_file()
    assert (discarded / "jobs" / "runs" / "scratch_all_1x.json").is_file()
    assert "base_lr: 0.002" in (study / "runs" / "scratch_all_1x" / "config.yaml").read_text()
    assert set(launch_outcomes(study).values()) <= {"trained", "continued the trunk from iteration 2"} | {
        "trained from the trunk's iteration 2",
        "trained from the trunk's iteration 6",
    }
    assert runner.folder_differences(read_graph(study)) == {}


def test_duplicate_train_sizes_are_refused(shapes_dir, tmp_path):
    from scratchdet.errors import ConfigError

    spec = write_study_spec(
        tmp_path / "spec.yaml", tmp_path / "study", tiny_study_overrides(shapes_dir), train_sizes=[2, 2]
    )
    with pytest.raises(ConfigError, match=r"train_sizes has duplicates: \[2, 2\]"):
        runner.run_study(spec, report=False)
    assert not (tmp_path / "study").exists()
