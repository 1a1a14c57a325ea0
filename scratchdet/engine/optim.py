"""SGD with the paper's solver settings (docs/PAPER.md, "Solver").

Momentum 0.9 and weight decay 1e-4, except on normalization scales and shifts, which get
solver.weight_decay_norm (0, Detectron's WEIGHT_DECAY_GN): decaying GN/BN gammas toward zero fights the very
normalization that makes training from scratch work.
"""

from __future__ import annotations

import torch
from torch import nn

from scratchdet.config import SolverConfig
from scratchdet.modeling.norm import is_norm


def param_groups(model: nn.Module, weight_decay: float, weight_decay_norm: float) -> list[dict]:
    """Splits trainable parameters into [normal, norm] groups with their weight decays; frozen ones are left out."""
    norm_params, other_params, seen = [], [], set()
    for module in model.modules():
        for p in module.parameters(recurse=False):
            if not p.requires_grad or id(p) in seen:
                continue
            seen.add(id(p))
            (norm_params if is_norm(module) else other_params).append(p)
    groups = [{"params": other_params, "weight_decay": weight_decay, "name": "default"}]
    if norm_params:
        groups.append({"params": norm_params, "weight_decay": weight_decay_norm, "name": "norm"})
    return groups


def build_optimizer(model: nn.Module, solver: SolverConfig, lr: float) -> torch.optim.SGD:
    """SGD over `model`'s trainable parameters; the trainer sets each group's LR every iteration from the schedule."""
    groups = param_groups(model, solver.weight_decay, solver.weight_decay_norm)
    return torch.optim.SGD(groups, lr=lr, momentum=solver.momentum)
