"""SIGTERM during training saves a checkpoint at the iteration boundary and exits; resume finishes the run."""

import os
import signal
import subprocess
import sys
import time

from helpers import MINI_CONFIG, ROOT, tiny_overrides

from scratchdet.config import load_config
from scratchdet.engine import trainer
from scratchdet.engine.checkpoint import latest_checkpoint, load_checkpoint
from scratchdet.engine.metrics import read_metrics


def test_sigterm_checkpoints_and_resume_finishes(shapes_dir, tmp_path):
    out = tmp_path / "run"
    overrides = tiny_overrides(shapes_dir, out, **{"train.max_iters": 200, "eval.period": 0})
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "scratchdet", "train", str(MINI_CONFIG), *overrides],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 120
    while len(read_metrics(out, "train")) < 2 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "rerun the same command with resume=true" in err

    (stop,) = read_metrics(out, "preempted")
    state = load_checkpoint(latest_checkpoint(out / "checkpoints"))
    assert state["iteration"] == stop["iter"] >= 2
    assert max(r["iter"] for r in read_metrics(out, "train")) == stop["iter"]  # nothing beyond the checkpoint

    finish = tiny_overrides(shapes_dir, out, resume="true", **{"train.max_iters": stop["iter"] + 2, "eval.period": 0})
    result = trainer.train(load_config(MINI_CONFIG, finish))
    assert result.iter == stop["iter"] + 2
