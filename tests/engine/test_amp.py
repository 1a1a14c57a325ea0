"""Speed switches (train.amp, train.channels_last): bf16 and fp16 autocast train on CPU, the fp16 grad scaler's state
is saved in checkpoints and restored on resume, and channels_last lays out the convolution weights."""

from __future__ import annotations

import os

import pytest
import torch
from helpers import MINI_CONFIG, tiny_overrides

from scratchdet.config import load_config
from scratchdet.distributed import DistContext
from scratchdet.engine import trainer
from scratchdet.engine.checkpoint import latest_checkpoint, load_checkpoint
from scratchdet.engine.metrics import read_metrics
from scratchdet.modeling.detector import build_detector


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_autocast_training_runs_and_logs_finite_losses(shapes_dir, tmp_path, amp):
    out = tmp_path / amp
    trainer.train(load_config(MINI_CONFIG, tiny_overrides(shapes_dir, out, **{"train.amp": amp, "train.max_iters": 2})))
    records = read_metrics(out, "train")
    assert len(records) == 2 and all(torch.isfinite(torch.tensor(r["loss"])) for r in records)
    assert read_metrics(out, "start")[0]["amp"] == amp
    state = load_checkpoint(latest_checkpoint(out / "checkpoints"))
    assert ("scaler" in state) == (amp == "fp16")  # bf16 has float32's range: no loss scaling
    if amp == "fp16":
        assert records[-1]["loss_scale"] == state["scaler"]["scale"]


def test_fp16_resume_restores_the_grad_scaler(shapes_dir, tmp_path, monkeypatch):
    out = tmp_path / "run"
    overrides = {"train.amp": "fp16", "train.checkpoint_period": 1}
    trainer.train(load_config(MINI_CONFIG, tiny_overrides(shapes_dir, out, **overrides, **{"train.max_iters": 1})))
    saved = load_checkpoint(latest_checkpoint(out / "checkpoints"))["scaler"]

    restored = {}
    original = torch.amp.GradScaler.load_state_dict

    def spy(self, state):
        restored.update(state)
        return original(self, state)

    monkeypatch.setattr(torch.amp.GradScaler, "load_state_dict", spy)
    trainer.train(
        load_config(MINI_CONFIG, tiny_overrides(shapes_dir, out, resume="true", **overrides, **{"train.max_iters": 2}))
    )
    assert restored == saved


def test_channels_last_places_conv_weights_and_trains(shapes_dir, tmp_path):
    """train.channels_last: every 4-d weight in channels_last layout (trainer._place), and a run trains with it."""
    cfg = load_config(
        MINI_CONFIG,
        tiny_overrides(shapes_dir, tmp_path / "cl", **{"train.channels_last": "true", "train.max_iters": 2}),
    )
    model = build_detector(cfg, 5)
    trainer._place(model, cfg, DistContext(), torch.device("cpu"))
    weights = [p for p in model.parameters() if p.dim() == 4]
    assert weights and all(p.is_contiguous(memory_format=torch.channels_last) for p in weights)
    trainer.train(cfg)
    losses = [r["loss"] for r in read_metrics(cfg.output, "train")]
    assert len(losses) == 2 and all(torch.isfinite(torch.tensor(losses)))


def test_deterministic_kernels_are_scoped_to_the_run(shapes_dir, tmp_path, monkeypatch):
    """train.deterministic turns torch's deterministic mode on for the training loop only (a CPU run trains under
    it) and restores the caller's settings (the mode, and cuBLAS's workspace variable it sets); it may change on
    resume. Its point, equal CUDA runs, is tested on a GPU (tests/gpu/test_cuda.py)."""
    seen = []
    original = trainer.stop_if_not_finite

    def spy(*args, **kwargs):
        seen.append(torch.are_deterministic_algorithms_enabled())
        return original(*args, **kwargs)

    out = tmp_path / "run"
    overrides = tiny_overrides(shapes_dir, out, **{"train.deterministic": "true", "train.max_iters": 2})
    monkeypatch.setattr(trainer, "stop_if_not_finite", spy)
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    trainer.train(load_config(MINI_CONFIG, overrides))
    assert seen == [True, True] and not torch.are_deterministic_algorithms_enabled()
    assert "CUBLAS_WORKSPACE_CONFIG" not in os.environ  # set for the run only
    monkeypatch.undo()
    resumed = tiny_overrides(shapes_dir, out, resume="true", **{"train.max_iters": 3})
    trainer.train(load_config(MINI_CONFIG, resumed))  # the switch is off now: not a different run
    assert [r["iter"] for r in read_metrics(out, "train")] == [1, 2, 3]
