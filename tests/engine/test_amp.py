"""Mixed precision (issue 5 part 4): bf16 and fp16 autocast train on CPU; the fp16 grad scaler's state is saved in
checkpoints and restored on resume."""

from __future__ import annotations

import pytest
import torch
from helpers import MINI_CONFIG, tiny_overrides

from scratchdet.config import load_config
from scratchdet.engine import trainer
from scratchdet.engine.checkpoint import latest_checkpoint, load_checkpoint
from scratchdet.engine.metrics import read_metrics


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_autocast_training_runs_and_logs_finite_losses(shapes_dir, tmp_path, amp):
    out = tmp_path / amp
    trainer.train(load_config(MINI_CONFIG, tiny_overrides(shapes_dir, out, **{"train.amp": amp,
                                                                              "train.max_iters": 2})))
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
    trainer.train(load_config(MINI_CONFIG, tiny_overrides(shapes_dir, out, resume="true", **overrides,
                                                          **{"train.max_iters": 2})))
    assert restored == saved
