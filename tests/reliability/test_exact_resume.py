"""N straight iterations == N/2 + kill -9 + resume + N/2, bitwise, with the same image ids (docs/RELIABILITY.md,
promise 2: exact resume).

Every run is its own process with one thread (the same arithmetic in each); the interrupted one is SIGKILLed right
after its iteration-N/2 checkpoint is saved: no cleanup, no atexit, exactly what a crash or an OOM killer does.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest
import torch
from helpers import MINI_CONFIG, ROOT, tiny_overrides

from scratchdet.engine.checkpoint import latest_checkpoint, load_checkpoint
from scratchdet.engine.metrics import read_metrics

N = 4

# `scratchdet train` in a child process; with KILL_AT > 0 it SIGKILLs itself right after saving that checkpoint.
TRAIN_SCRIPT = """
import os, signal, sys
from scratchdet.cli import main
from scratchdet.engine import checkpoint

kill_at = int(os.environ["KILL_AT"])
real_save = checkpoint.save_checkpoint

def save_then_die(folder, iteration, state):
    path = real_save(folder, iteration, state)
    if iteration == kill_at:
        os.kill(os.getpid(), signal.SIGKILL)
    return path

checkpoint.save_checkpoint = save_then_die
sys.exit(main(["train", *sys.argv[1:]]))
"""


def _train(shapes_dir, out, kill_at: int = 0, **extra) -> subprocess.CompletedProcess:
    overrides = tiny_overrides(
        shapes_dir,
        out,
        **{
            "train.max_iters": N,
            "train.checkpoint_period": N // 2,
            "train.record_image_ids": "true",
            "train.num_threads": 1,
            "eval.period": 0,
            "eval.max_images": 1,
            **extra,
        },
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1", "KILL_AT": str(kill_at)}
    return subprocess.run(
        [sys.executable, "-c", TRAIN_SCRIPT, str(MINI_CONFIG), *overrides],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _final(out) -> dict:
    return load_checkpoint(latest_checkpoint(out / "checkpoints"))


@pytest.mark.e2e
def test_kill_9_after_half_then_resume_is_bitwise_identical_with_same_image_ids(shapes_dir, tmp_path):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    done = _train(shapes_dir, straight)
    assert done.returncode == 0, done.stderr

    killed = _train(shapes_dir, resumed, kill_at=N // 2)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert _final(resumed)["iteration"] == N // 2
    finished = _train(shapes_dir, resumed, resume="true")
    assert finished.returncode == 0, finished.stderr
    assert f"(iteration {N // 2})" in finished.stdout  # it resumed, it did not start over

    a, b = _final(straight), _final(resumed)
    assert a["iteration"] == b["iteration"] == N and a["seen"] == b["seen"]
    assert a["model"].keys() == b["model"].keys()
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), f"parameter {key} differs after kill -9 + resume"
    for slot, state in a["optimizer"]["state"].items():
        assert torch.equal(state["momentum_buffer"], b["optimizer"]["state"][slot]["momentum_buffer"]), slot

    def batches(out):
        return [(r["iter"], r["image_ids"]) for r in read_metrics(out, "batch")]

    assert [i for i, _ in batches(straight)] == list(range(N))
    assert batches(resumed) == batches(straight)  # same images in the same order, none repeated or lost
    losses = {r["iter"]: r["loss"] for r in read_metrics(straight, "train")}
    assert {r["iter"]: r["loss"] for r in read_metrics(resumed, "train")} == losses
