"""Multi-process training on gloo (docs/RELIABILITY.md, promise 12): a 2-process torchrun run of the mini config
trains, evaluates and resumes, sees the single-process run's images, and every rank stops together on a NaN."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from dist_workers import nan_on_rank1_worker, run_in_processes
from helpers import MINI_CONFIG, ROOT, tiny_overrides

from scratchdet.config import load_config
from scratchdet.engine import trainer
from scratchdet.engine.checkpoint import latest_checkpoint, load_checkpoint
from scratchdet.engine.metrics import read_metrics
from scratchdet.engine.run_eval import evaluate_run

# Several processes (gloo, torchrun): `make test-fast` leaves them out.
pytestmark = pytest.mark.e2e


def _torchrun(overrides: list[str], nproc: int = 2) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        "-m",
        "scratchdet",
        "train",
        str(MINI_CONFIG),
        *overrides,
    ]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def _batches(run) -> dict[int, list[int]]:
    return {r["iter"]: r["image_ids"] for r in read_metrics(run, "batch")}


def test_two_process_run_trains_evaluates_and_resumes(shapes_dir, tmp_path):
    extra = {"train.batch_size": 4, "train.record_image_ids": "true", "eval.max_images": 5}
    run = tmp_path / "ddp"
    first = _torchrun(tiny_overrides(shapes_dir, run, **extra, **{"train.max_iters": 2}))
    assert first.returncode == 0, first.stderr[-3000:]
    assert "(2 processes)" in first.stdout
    (start,) = read_metrics(run, "start")
    assert start["world_size"] == 2
    (evaluation,) = read_metrics(run, "eval")  # evaluated once, sharded: 5 images over 2 ranks, each once
    assert (
        evaluation["images"] == 5
        and evaluation["eval_processes"] == 2
        and evaluation["status"] in ("ok", "no predictions")
    )
    state = load_checkpoint(latest_checkpoint(run / "checkpoints"))
    assert state["iteration"] == 2 and len(state["rng_per_rank"]) == 2 and state["world_size"] == 2

    resumed = _torchrun(tiny_overrides(shapes_dir, run, resume="true", **extra, **{"train.max_iters": 4}))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert load_checkpoint(latest_checkpoint(run / "checkpoints"))["iteration"] == 4
    assert len(read_metrics(run, "eval")) == 2

    # One process with the same global batch sees the same images in the same order, and counts the same samples.
    single = tmp_path / "single"
    result = trainer.train(
        load_config(MINI_CONFIG, tiny_overrides(shapes_dir, single, **extra, **{"train.max_iters": 4}))
    )
    assert _batches(run) == _batches(single)
    assert read_metrics(run, "end")[-1]["seen"] == result.seen

    # `scratchdet eval` under torchrun: sharded over 2 processes, the report of a single-process eval.
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    sharded = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=2",
            "-m",
            "scratchdet",
            "eval",
            str(run),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert sharded.returncode == 0, sharded.stderr[-3000:]
    assert sharded.stdout.count("wrote ") == 1  # rank 0 alone prints and writes
    sharded_report = json.loads((run / "eval" / "iter_0000004.json").read_text())
    assert sharded_report["eval_processes"] == 2
    single_report = evaluate_run(run)
    timing = ("inference_s", "eval_s", "eval_processes", "path")
    assert {k: v for k, v in sharded_report.items() if k not in timing} == {
        k: v for k, v in single_report.items() if k not in timing
    }


def test_a_nan_on_one_rank_stops_every_rank_before_the_step(shapes_dir, tmp_path):
    overrides = tiny_overrides(shapes_dir, tmp_path / "run", **{"train.max_iters": 4})
    run_in_processes(nan_on_rank1_worker, 2, str(tmp_path), overrides)
    rank0, rank1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2))
    assert rank1["message"].startswith("TrainingError: non-finite loss at iteration 1")
    assert rank0["message"].startswith("TrainingError: non-finite loss on rank(s) [1] at iteration 1")
    assert rank0["forward_calls"] == rank1["forward_calls"] == 2  # both stopped at the same iteration


def test_two_process_syncbn_run_trains(shapes_dir, tmp_path):
    """model.norm=SyncBN in backbone, FPN and heads, statistics exchanged over gloo (modeling/sync_bn.py)."""
    run = tmp_path / "syncbn"
    done = _torchrun(
        tiny_overrides(
            shapes_dir,
            run,
            **{"model.norm": "SyncBN", "train.batch_size": 2, "train.max_iters": 2, "eval.max_images": 3},
        )
    )
    assert done.returncode == 0, done.stderr[-3000:]
    losses = [r["loss"] for r in read_metrics(run, "train")]
    assert len(losses) == 2 and all(0 < v < 100 for v in losses)


def test_two_node_rendezvous_trains(shapes_dir, tmp_path):
    """Multi-node launch, unchanged: two torchrun agents ("nodes", one process each) meet at a c10d rendezvous."""
    from dist_workers import _free_port

    run = tmp_path / "nodes"
    overrides = tiny_overrides(shapes_dir, run, **{"train.max_iters": 1, "eval.max_images": 2})
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    port = _free_port()
    agents = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--nnodes=2",
                "--nproc_per_node=1",
                "--rdzv_backend=c10d",
                f"--rdzv_endpoint=127.0.0.1:{port}",
                "--rdzv_id=scratchdet-test",
                "-m",
                "scratchdet",
                "train",
                str(MINI_CONFIG),
                *overrides,
            ],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outputs = [a.communicate(timeout=600) for a in agents]
    for agent, (_, err) in zip(agents, outputs, strict=True):
        assert agent.returncode == 0, err[-3000:]
    assert read_metrics(run, "start")[0]["world_size"] == 2
    assert load_checkpoint(latest_checkpoint(run / "checkpoints"))["iteration"] == 1


def test_two_process_run_switches_to_cascade_heads_and_resumes(shapes_dir, tmp_path):
    """The late cascade switch under DDP: the model is re-wrapped around the new heads (mini schedule at batch 2 is
    1440 iterations; K = 1439 switches at iteration index 1), and a resume after the switch rebuilds them."""
    run = tmp_path / "cascade"
    extra = {"model.cascade": "true", "model.cascade_switch_iters": 1439, "eval.max_images": 2}
    first = _torchrun(tiny_overrides(shapes_dir, run, **extra, **{"train.max_iters": 3}))
    assert first.returncode == 0, first.stderr[-3000:]
    (switch,) = read_metrics(run, "switch")
    assert switch["iter"] == 1
    assert len(read_metrics(run, "train")) == 3
    resumed = _torchrun(tiny_overrides(shapes_dir, run, resume="true", **extra, **{"train.max_iters": 4}))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert len(read_metrics(run, "switch")) == 1 and len(read_metrics(run, "train")) == 4
