"""docs/RELIABILITY.md, promise 6: a non-finite loss stops training before the optimizer step.

(The message's iteration, loss values and image ids are tested in tests/engine/test_trainer.py.) Here: after the
error the parameters are bit for bit those of the previous step, so nothing NaN ever reaches the weights.
"""

from __future__ import annotations

import pytest
import torch

from scratchdet.engine import trainer
from scratchdet.errors import TrainingError


def test_parameters_after_a_nan_loss_are_those_of_the_previous_step(tiny_config, monkeypatch):
    real_build = trainer.build_detector
    seen: dict = {"states": []}  # model state at the start of each training forward

    def build_poisoned(cfg, num_classes, *args, **kwargs):
        model = real_build(cfg, num_classes, *args, **kwargs)
        forward = model.forward

        def poisoned(images, targets=None):
            if model.training:
                seen["states"].append({k: v.detach().clone() for k, v in model.state_dict().items()})
            losses = forward(images, targets)
            if model.training and len(seen["states"]) == 2:  # iteration 1
                losses["loss_box_reg"] = losses["loss_box_reg"] * float("inf")
            return losses

        model.forward = poisoned
        seen["model"] = model
        return model

    monkeypatch.setattr(trainer, "build_detector", build_poisoned)
    with pytest.raises(TrainingError, match=r"non-finite loss at iteration 1: .*loss_box_reg=inf"):
        trainer.train(tiny_config)

    first, before_poison = seen["states"]
    after = seen["model"].state_dict()
    assert any(not torch.equal(first[k], before_poison[k]) for k in first)  # iteration 0 did step
    for key, value in before_poison.items():
        assert torch.equal(after[key], value), f"{key} changed by the poisoned iteration"
        assert torch.isfinite(after[key]).all(), key
