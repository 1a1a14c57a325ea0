"""Classification pre-training of any detector backbone (`scratchdet pretrain CONFIG key=value ...`).

    from scratchdet.pretrain.classify import pretrain
    from scratchdet.pretrain.config import load_pretrain_config
    result = pretrain(load_pretrain_config("configs/pretrain/mini_R18_GN_synth.yaml", ["output=runs/pre"]))

config.py holds the typed schema, classify.py the training loop. Like every package here, this __init__ imports
nothing: importing the config (as engine/run_dir.py does for its type) must not pull in the training loop.
"""
