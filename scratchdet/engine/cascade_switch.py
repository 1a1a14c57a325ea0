"""The paper's late switch to Cascade R-CNN heads, as the trainer applies it (docs/PAPER.md, "Cascade from scratch").

"Cascade from scratch": the model trains with plain heads and switches to cascade heads for the final
model.cascade_switch_iters iterations of the schedule (270k in the paper). At the top of iteration
max_iters - K the heads are converted (modeling/cascade.py: stage 1 = the trained plain head, stages 2-3 fresh),
the optimizer is rebuilt over the new parameter set, and the switch is recorded in metrics.jsonl
({"type": "switch", ...}) and in the run folder (cascade_switch.json).

Momentum: the new SGD keeps the momentum buffers of every parameter that survives the switch (trunk, FPN, RPN,
mask head, stage 1's box head and classifier); stage 1's new class-agnostic regressor and stages 2-3 start with
none, as a fresh SGD would. The LR is the schedule's, set by the trainer every iteration.

Resume: a checkpoint written after the switch holds cascade heads, and records it ("model_state"); the trainer and
every other loader rebuild the model it holds through engine/model_state.py. One written exactly at the switch
iteration still holds plain heads and the loop switches on its first iteration.
"""

from __future__ import annotations

import torch
from torch import nn

from scratchdet.config import Config
from scratchdet.engine.metrics import MetricsWriter
from scratchdet.engine.optim import build_optimizer
from scratchdet.files import atomic_write_json
from scratchdet.modeling.cascade import carry_momentum, switch_iteration, switch_to_cascade_
from scratchdet.run_folder import RunFolder


def cascade_switch_iter(cfg: Config, max_iters: int) -> int | None:
    """Iteration index at which this run switches to cascade heads, or None when it does not switch."""
    if not cfg.model.cascade:
        return None
    return switch_iteration(max_iters, cfg.model.cascade_switch_iters)


def convert_model(model: nn.Module, cfg: Config) -> None:
    switch_to_cascade_(model, cfg.model.cascade_fg_iou_threshs, cfg.model.cascade_bbox_reg_weights)


def switch_in_run(
    model: nn.Module, optimizer: torch.optim.Optimizer, cfg: Config, iteration: int, lr: float, metrics: MetricsWriter
) -> torch.optim.Optimizer:
    """Converts `model` to cascade heads at `iteration`, records it, returns the rebuilt optimizer."""
    convert_model(model, cfg)
    new_optimizer = build_optimizer(model, cfg.solver, lr)
    carried = carry_momentum(optimizer, new_optimizer)
    n_params = sum(len(g["params"]) for g in new_optimizer.param_groups)
    record = {
        "type": "switch",
        "iter": iteration,
        "to": "cascade",
        "stages": len(cfg.model.cascade_fg_iou_threshs),
        "fg_iou_threshs": list(cfg.model.cascade_fg_iou_threshs),
        "bbox_reg_weights": [list(w) for w in cfg.model.cascade_bbox_reg_weights],
        "stage1_from": "plain box head",
        "momentum_carried": carried,
        "momentum_fresh": n_params - carried,
    }
    metrics.write(record)
    atomic_write_json(RunFolder(cfg.output).cascade_switch, record)
    return new_optimizer
