"""Classification pre-training of any detector backbone (`scratchdet pretrain CONFIG key=value ...`).

    from scratchdet.pretrain import load_pretrain_config, pretrain
    result = pretrain(load_pretrain_config("configs/pretrain/mini_R18_GN_synth.yaml", ["output=runs/pre"]))

config.py holds the typed schema, classify.py the training loop.
"""

from scratchdet.pretrain.classify import pretrain
from scratchdet.pretrain.config import PretrainConfig, load_pretrain_config

__all__ = ["PretrainConfig", "load_pretrain_config", "pretrain"]
