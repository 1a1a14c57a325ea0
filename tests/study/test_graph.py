"""The study plan as a job graph (study/graph.py) and the SLURM task environment (distributed.py)."""

import json
from dataclasses import asdict
from pathlib import Path

import pytest
from helpers import ROOT

from scratchdet.distributed import _first_host, adopt_slurm_environment
from scratchdet.run_folder import RunFolder
from scratchdet.study.graph import JobGraph, compute_estimate
from scratchdet.study.jobs import run_job
from scratchdet.study.launchers import _executor
from scratchdet.study.outcome import JobState
from scratchdet.study.plan import plan_study
from scratchdet.study.records import is_finished, plan_digest
from scratchdet.study.runner import build_study_graph, set_aside_jobs
from scratchdet.study.spec import LauncherSpec, load_study_spec
from scratchdet.study.status import study_status
from scratchdet.study.stopping import (
    DECISION_FILE,
    Stopper,
    StudyDecision,
    job_levels,
    read_decision,
    without_decisions,
    write_decision,
)

# A mini study with numbers these tests can follow by hand (not the demo's sizing, which may change): scratch and
# pre-trained, 1x/2x/3x of 64 iterations at batch 2 (first LR drop 40 before the end), two data sizes.
GRAPH_SPEC = f"""
name: mini
base_config: {ROOT / "configs" / "mini" / "mask_rcnn_R18_FPN_GN_scratch.yaml"}
output: unused
data_root: data/shapes
overrides: [train.batch_size=2, schedule.unit_iters=8, "schedule.drop_tails=[5,2]"]
arms:
  - {{name: scratch, init: scratch}}
  - {{name: pretrained, init: pretrained, pretrain_config: {ROOT / "configs" / "pretrain" / "mini_R18_GN_synth.yaml"}}}
schedules: [1, 2, 3]
train_sizes: [null, 50]
"""


def mini_graph(tmp_path, *overrides):
    path = tmp_path / "graph_spec.yaml"
    path.write_text(GRAPH_SPEC)
    spec = load_study_spec(path, [f"output={tmp_path / 'study'}", *overrides])
    return build_study_graph(plan_study(spec, check_sources=False), spec), spec


def test_mini_study_graph_chains_trunk_segments_and_forks_tails(tmp_path):
    graph, _ = mini_graph(tmp_path)
    jobs = {j.id: j for j in graph.jobs}
    assert len(jobs) == 1 + 4 * 3 + 12  # pre-training, 4 trunks x 3 segments, 12 runs
    assert jobs["pretrain/pretrained"].single_process and jobs["pretrain/pretrained"].end_iter == 600
    # 1x/2x/3x at batch 2: first LR drops at 24, 88, 152 (64 x N - 40).
    assert [jobs[f"trunks/scratch_all@{i}"].deps for i in (24, 88, 152)] == [
        [],
        ["trunks/scratch_all@24"],
        ["trunks/scratch_all@88"],
    ]
    assert jobs["trunks/pretrained_50@24"].deps == ["pretrain/pretrained"]
    tail = jobs["runs/pretrained_50_2x"]
    assert tail.deps == ["trunks/pretrained_50@88"] and (tail.start_iter, tail.end_iter) == (88, 128)
    assert tail.fork == {"trunk": "trunks/pretrained_50", "iter": 88}
    # Every segment resumes the one trunk folder with the same checkpoints (fork points) and its own cut.
    segment = jobs["trunks/scratch_all@88"]
    assert segment.path == "trunks/scratch_all" and segment.extra == [
        "train.max_iters=88",
        "train.extra_checkpoints=[24,88,152]",
    ]
    order = [j.id for j in graph.jobs]
    assert all(order.index(d) < order.index(j.id) for j in graph.jobs for d in j.deps)
    assert set(graph.dependents("trunks/scratch_all@88")) == {
        "trunks/scratch_all@152",
        "runs/scratch_all_2x",
        "runs/scratch_all_3x",
    }


def test_a_sequential_study_under_slurm_waits_for_a_decision_job_after_each_schedule_but_the_last(tmp_path):
    graph, _ = mini_graph(tmp_path, "stopping.enabled=true", "launcher.name=slurm")
    jobs = {j.id: j for j in graph.jobs}
    assert [j for j in jobs if j.startswith("decide/")] == ["decide/1x", "decide/2x"]  # nothing after 3x to skip
    runs_at = {n: {f"runs/{a}_{s}_{n}x" for a in ("scratch", "pretrained") for s in ("all", "50")} for n in (1, 2, 3)}
    assert set(jobs["decide/1x"].deps) == runs_at[1]
    assert set(jobs["decide/2x"].deps) == runs_at[2] | {"decide/1x"}
    assert jobs["decide/1x"].single_process and jobs["decide/1x"].iters == 0 and jobs["decide/1x"].decides == 1.0
    # Everything that serves 2x (the trunk segments to the 2x fork point, the 2x tails) waits for the 1x decision,
    # everything that serves 3x for the 2x one; the pre-training and the 1x work wait for no decision.
    levels = job_levels(graph.jobs, {r: float(r.rsplit("_", 1)[1][:-1]) for r in set().union(*runs_at.values())})
    for job in graph.jobs:
        waits = {d for d in job.deps if d.startswith("decide/")}
        expected = {f"decide/{levels[job.id] - 1:g}x"} if job.kind != "decide" and levels[job.id] > 1 else set()
        if job.kind == "decide" and job.decides == 2.0:
            expected = {"decide/1x"}
        assert waits == expected, (job.id, waits)
    assert levels["trunks/scratch_all@88"] == 2.0 and levels["trunks/scratch_all@24"] == 1.0
    order = [j.id for j in graph.jobs]
    assert all(order.index(d) < order.index(j.id) for j in graph.jobs for d in j.deps)
    # The same spec on one machine decides in the launcher: no decision jobs; without stopping, none either.
    for overrides in (("stopping.enabled=true",), ("launcher.name=slurm",)):
        assert not [j for j in mini_graph(tmp_path, *overrides)[0].jobs if j.kind == "decide"]


def test_a_job_a_recorded_decision_left_out_trains_nothing_if_it_starts_anyway(tmp_path):
    """scancel can fail or come late: the job reads decision.json and exits as not needed, creating nothing."""
    graph, _ = mini_graph(tmp_path, "stopping.enabled=true", "launcher.name=slurm")
    Path(graph.study_dir).mkdir(parents=True)
    graph.write()
    decision = StudyDecision(1.0, "caught_up", "scratch within the margin", not_run=["runs/scratch_all_2x"])
    (Path(graph.study_dir) / DECISION_FILE).write_text(json.dumps(asdict(decision)))
    outcome = run_job(graph.study_dir, "runs/scratch_all_2x")
    assert outcome.state is JobState.NOT_NEEDED and "settled at 1x" in outcome.detail
    assert not (Path(graph.study_dir) / "runs").exists()


def sequential_slurm_study(tmp_path, launcher="slurm"):
    """The mini graph's study folder as `scratchdet study` writes it under SLURM (or `launcher`) with stopping on
    (jobs.json and plan.json, nothing trained)."""
    path = tmp_path / "graph_spec.yaml"
    path.write_text(GRAPH_SPEC)
    spec = load_study_spec(path, [f"output={tmp_path / 'study'}", "stopping.enabled=true", f"launcher.name={launcher}"])
    plan = plan_study(spec, check_sources=False)
    graph = build_study_graph(plan, spec)
    Path(graph.study_dir).mkdir(parents=True)
    graph.write()
    (Path(graph.study_dir) / "plan.json").write_text(json.dumps(plan.to_dict()))
    return graph, plan


def test_a_decision_holds_for_the_plan_it_was_made_for_and_a_schedule_with_a_failed_run_is_not_settled(tmp_path):
    graph, plan = sequential_slurm_study(tmp_path)
    study = Path(graph.study_dir)
    decision = write_decision(graph, StudyDecision(1.0, "caught_up", "within the margin"), ["runs/scratch_all_2x"])
    assert decision.plan == plan_digest(study) and read_decision(study) == decision
    assert run_job(study, "runs/scratch_all_2x").state is JobState.NOT_NEEDED
    # The decision job of 1x with its runs not finished (a run failed: it waits with afterany) decides "not settled",
    # removes the earlier decision, and records the plan it looked at: done for this plan, not for another.
    outcome = run_job(study, "decide/1x")
    assert outcome.state is JobState.CHECKED and outcome.detail.startswith("not settled at 1x: not finished: runs/")
    assert read_decision(study) is None and not (study / DECISION_FILE).exists()
    assert is_finished(study, graph.job("decide/1x"))
    decision = write_decision(graph, StudyDecision(1.0, "caught_up", "within the margin"), ["runs/scratch_all_2x"])
    changed = plan.to_dict() | {"seeds": [0, 1]}  # e.g. seeds added: another study, whose decisions are not made
    (study / "plan.json").write_text(json.dumps(changed))
    assert read_decision(study) is None and not is_finished(study, graph.job("decide/1x"))
    assert study_status(study)[-1].state != "not needed"


def test_local_jobs_of_a_longer_schedule_wait_for_the_shorter_ones_decision(tmp_path):
    """As the SLURM graph's decision jobs make them: nothing serving 2x starts before 1x is decided; a schedule with a
    failed (or not run) run can never be complete and is passed over, so the longer ones train on."""
    graph, _ = sequential_slurm_study(tmp_path, launcher="local")
    assert not [j for j in graph.jobs if j.kind == "decide"]
    stopper = Stopper(graph, enabled=True)
    runs = {n: [j.id for j in graph.jobs if j.kind == "run" and stopper.level(j) == n] for n in (1.0, 2.0, 3.0)}
    assert stopper.waits_for(()) == 1.0 and len(runs[1.0]) == 4
    assert stopper.waits_for(runs[1.0][:3]) == 1.0  # one 1x run still going
    assert stopper.waits_for(runs[1.0]) == 2.0  # every 1x run ended, none finished: 1x cannot be decided
    assert stopper.check(runs[1.0]) is None  # and 2x is not complete
    assert stopper.waits_for(runs[1.0] + runs[2.0]) is None  # only the longest schedule is left: nothing to wait for
    assert Stopper(graph, enabled=False).waits_for(()) is None


def test_a_decision_counts_only_the_iterations_its_skipped_jobs_have_not_trained(tmp_path):
    """A job the decision stopped part-way already spent what it trained: the saving is the rest of its range, at the
    pace the study's training records measured (time_per_iter x processes)."""
    graph, _ = sequential_slurm_study(tmp_path)
    study = Path(graph.study_dir)
    tail, untouched = graph.job("runs/scratch_all_2x"), graph.job("runs/pretrained_all_2x")
    folder = RunFolder(study / tail.path)
    folder.root.mkdir(parents=True)
    records = [
        {"type": "start", "iter": tail.start_iter, "world_size": 2},
        *({"type": "train", "iter": tail.start_iter + i, "time_per_iter": 0.5} for i in (2, 4)),
    ]
    folder.metrics.write_text("".join(json.dumps(r) + "\n" for r in records))
    decision = write_decision(graph, StudyDecision(1.0, "caught_up", "within the margin"), [tail.id, untouched.id])
    assert decision.iterations_not_run == (tail.iters - 4) + untouched.iters
    assert decision.device_hours_not_spent == pytest.approx(decision.iterations_not_run * 0.5 * 2 / 3600)
    # Trunk segments share a folder: records past a segment's end are the next segment's, and a segment whose end
    # the folder has passed has nothing left.
    first, second = graph.job("trunks/scratch_all@88"), graph.job("trunks/scratch_all@152")
    assert second.start_iter == first.end_iter == 88
    trunk = RunFolder(study / first.path)
    trunk.root.mkdir(parents=True)
    trunk.metrics.write_text(json.dumps({"type": "train", "iter": 91, "time_per_iter": 0.5}) + "\n")
    decision = write_decision(graph, StudyDecision(1.0, "caught_up", "within the margin"), [first.id, second.id])
    assert decision.iterations_not_run == 0 + (second.end_iter - 91)


def test_a_schedule_that_can_never_be_complete_is_passed_over_and_a_later_one_decides(tmp_path, monkeypatch):
    """A failed 1x run: 1x decides nothing, and once 2x is complete and settled the study stops there (the inprocess
    and local launchers; under SLURM the decide/1x job says "not settled" and decide/2x decides)."""
    import scratchdet.report.decision as decision_module
    import scratchdet.report.results as results_module
    from scratchdet.report.decision import Decision

    graph, _ = sequential_slurm_study(tmp_path, launcher="local")
    stopper = Stopper(graph, enabled=True)
    runs = {n: [j.id for j in graph.jobs if j.kind == "run" and stopper.level(j) == n] for n in (1.0, 2.0)}
    monkeypatch.setattr(Stopper, "_complete", lambda self, schedule: schedule == 2.0)  # 1x: one run failed
    monkeypatch.setattr(results_module, "load_study", lambda study_dir: None)
    asked = []

    def settled(study, schedule):
        asked.append(schedule)
        return Decision(True, "scratch within the margin", "caught_up")

    monkeypatch.setattr(decision_module, "settled", settled)
    assert stopper.check(runs[1.0][:3]) is None and asked == []  # a 1x run still going: nothing to decide yet
    decided = stopper.check(runs[1.0] + runs[2.0])
    assert asked == [2.0] and decided.schedule == 2.0 and stopper.waits_for(()) is None


def test_a_decision_job_needs_no_gpu_and_waits_for_its_runs_to_end(tmp_path):
    graph, _ = sequential_slurm_study(tmp_path)
    launcher = LauncherSpec(name="slurm", gpus_per_task=1, tasks_per_node=8, sbatch_extra={"gres": "gpu:8", "x": "y"})
    decide = _executor(Path(graph.study_dir), launcher, graph.job("decide/1x"), ["11", "12"]).parameters
    assert "gpus_per_node" not in decide and "gres" not in decide["additional_parameters"]
    assert decide["additional_parameters"]["dependency"] == "afterany:11:12" and decide["ntasks_per_node"] == 1
    segment = _executor(Path(graph.study_dir), launcher, graph.job("trunks/scratch_all@88"), ["13"]).parameters
    assert segment["gpus_per_node"] == 8 and segment["additional_parameters"]["gres"] == "gpu:8"
    assert segment["additional_parameters"]["dependency"] == "afterok:13"
    # A GPU-only partition may refuse a job without a GPU: decisions may go to another one.
    assert "partition" not in decide and segment.get("partition") is None
    # There, the training jobs' node features and QOS (GPU ones) are not asked for.
    launcher.partition, launcher.decide_partition = "gpu", "cpu"
    launcher.constraint, launcher.qos = "a100", "gpu-high"
    decide = _executor(Path(graph.study_dir), launcher, graph.job("decide/1x"), ["11"]).parameters
    run = _executor(Path(graph.study_dir), launcher, graph.job("runs/scratch_all_1x"), []).parameters
    assert decide["partition"] == "cpu" and "constraint" not in decide and "qos" not in decide
    assert (run["partition"], run["constraint"], run["qos"]) == ("gpu", "a100", "gpu-high")
    # A decision job queued by a sequential submission that was resubmitted with stopping off has nothing to decide.
    without = JobGraph(graph.study_dir, graph.cwd, [j for j in graph.jobs if j.kind != "decide"])
    without.write()
    assert run_job(graph.study_dir, "decide/1x").state is JobState.CHECKED


def test_replanning_one_run_of_a_sequential_study_sets_aside_only_what_was_trained_from_it(tmp_path):
    graph, _ = sequential_slurm_study(tmp_path)
    study = Path(graph.study_dir)
    for job in graph.jobs:
        if job.kind != "decide":
            (study / job.path).mkdir(parents=True, exist_ok=True)
    stamp = set_aside_jobs(without_decisions(graph), ["runs/scratch_all_2x"], log=lambda line: None)
    assert sorted(p.relative_to(stamp).as_posix() for p in stamp.glob("*/*")) == ["runs/scratch_all_2x"]
    assert (study / "trunks/scratch_all").exists() and (study / "runs/pretrained_all_3x").exists()


def test_without_a_shared_trunk_every_run_is_one_job(tmp_path):
    graph, _ = mini_graph(tmp_path, "share_trunk=false")
    runs = [j for j in graph.jobs if j.kind == "run"]
    assert len(runs) == 12 and all(j.start_iter == 0 and j.fork is None for j in runs)
    assert not [j for j in graph.jobs if j.kind == "segment"]


def test_compute_estimate_and_critical_path(tmp_path):
    graph, spec = mini_graph(tmp_path, "launcher.images_per_second_per_device=4", "launcher.tasks_per_node=2")
    estimate = compute_estimate(graph, spec.launcher)
    batch = 2
    shared_iters = sum(j.iters for j in graph.jobs if j.kind != "pretrain")
    pretrain = graph.job("pretrain/pretrained")
    expected = (shared_iters * batch + pretrain.iters * pretrain.batch_size) / 4 / 3600
    assert abs(estimate["shared"] - expected) < 1e-9
    # The longest chain: pre-training (1 process) -> 3 segments of a pre-trained trunk -> the 3x tail (2 processes).
    chain = pretrain.iters * pretrain.batch_size / 4 / 3600 + (152 + 40) * batch / 4 / 3600 / 2
    assert abs(estimate["wall_hours"] - chain) < 1e-9
    assert estimate["separate"] > estimate["shared"]


def test_first_host_of_a_slurm_node_list():
    assert _first_host("gpu[07-09,12],cpu3") == "gpu07"
    assert _first_host("vm") == "vm"
    assert _first_host("a,b") == "a"


def test_slurm_step_tasks_become_ranks(monkeypatch):
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        # setenv first: monkeypatch then restores the variable's absence after the test, so what
        # adopt_slurm_environment writes cannot leak into later tests (they would wait for a second rank).
        monkeypatch.setenv(key, "unset")
        monkeypatch.delenv(key)
    # A process started directly by a batch script of a 2-task job: one process, not a rank of two.
    monkeypatch.setenv("SLURM_PROCID", "0")
    monkeypatch.setenv("SLURM_NTASKS", "2")
    monkeypatch.setenv("SLURM_JOB_ID", "4321")
    monkeypatch.setenv("SLURM_JOB_NODELIST", "node[3-4]")
    assert not adopt_slurm_environment()
    # A task of a 2-task srun step.
    monkeypatch.setenv("SLURM_PROCID", "1")
    monkeypatch.setenv("SLURM_LOCALID", "1")
    monkeypatch.setenv("SLURM_STEP_NUM_TASKS", "2")
    monkeypatch.setenv("SLURM_STEP_NODELIST", "node[3-4]")
    assert adopt_slurm_environment()
    import os

    got = {k: os.environ[k] for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    assert got == {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "MASTER_ADDR": "node3", "MASTER_PORT": "24321"}
    assert not adopt_slurm_environment()  # torchrun's (or earlier) variables are never overwritten


def test_study_throughput_counts_detection_images_apart_from_pretraining(tmp_path):
    from scratchdet.study.outcome import JobOutcome, JobState
    from scratchdet.study.status import StudyThroughput

    graph, _ = mini_graph(tmp_path)
    throughput = StudyThroughput()
    throughput.count(graph.job("trunks/scratch_all@24"), JobOutcome(JobState.TRAINED))
    # Trained nothing in this launch:
    throughput.count(graph.job("trunks/scratch_all@88"), JobOutcome(JobState.SKIPPED, "(finished)"))
    throughput.count(graph.job("runs/scratch_all_1x"), JobOutcome(JobState.FAILED, "DataError: ..."))
    assert throughput.summary().startswith(f"[study] trained {24 * 2} detection images in ")  # the segment's 24 x 2
    throughput.count(graph.job("pretrain/pretrained"), JobOutcome(JobState.TRAINED))
    assert throughput.summary().startswith(f"[study] trained 48 detection images (and {600 * 32} pre-training images)")


def test_remaining_chain_puts_the_pretrained_trunk_first(tmp_path):
    graph, _ = mini_graph(tmp_path)
    chain = graph.remaining_chain()
    # Pre-training (600) -> trunk segments to 24, 88, 152 -> the 3x tail (152..192).
    assert chain["pretrain/pretrained"] == 600 + 24 + 64 + 64 + 40
    assert chain["trunks/scratch_all@24"] == chain["trunks/pretrained_50@24"] == 192
    assert chain["trunks/scratch_all@152"] == 64 + 40 and chain["runs/scratch_all_3x"] == 40
    assert chain["runs/scratch_all_1x"] == chain["runs/scratch_all_2x"] == 40  # every tail is the last 40
    first = sorted(graph.jobs, key=lambda j: -chain[j.id])[0]
    assert first.id == "pretrain/pretrained"
