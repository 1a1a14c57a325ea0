"""The model a run's checkpoint holds, rebuilt by everything that loads one (docs/RELIABILITY.md, promise 13).

A run's model can change shape while it trains: the paper's late cascade switch ("cascade from scratch",
engine/cascade_switch.py) replaces the plain box head by three cascade stages at iteration max_iters - K. A
checkpoint written after that holds cascade heads and loads into nothing else. So the trainer records in every
checkpoint what the model was when it wrote it, under "model_state":

    {"cascade": bool, "num_classes": K + 1 (background included), "num_keypoints": int | None}

and every loader builds its model here, from that record: the trainer's resume (and so a study fork's first
resume), `scratchdet eval RUN` plain and with TTA (engine/run_eval.py `load_run`), and scripts/tta_noise.py through
`load_run`. The record, not the run's config, decides: the config says when a switch is due, the checkpoint says
what happened. The class count is the training set's, which is what the heads were built with, whatever the
validation set lists.

Checkpoints written before the record existed describe themselves through their weights: cascade heads are named
`roi_heads.stages.*`, the class count is the row count of the (first) class-score layer, the keypoint count the
output channels of the keypoint predictor.

Changes of the model that keep every parameter and buffer name and shape are not recorded, since any model built
here loads them: on CUDA under torchrun the trainer swaps SyncBatchNorm2d for torch's nn.SyncBatchNorm (same state
dict, tested), and train.channels_last changes the memory layout only. Importing a detection run as pre-trained
weights (`init=pretrained weights=RUN`) reads the backbone body only (weights/audit.py), which no switch changes.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from torch import nn

from scratchdet.config import Config
from scratchdet.engine.cascade_switch import convert_model
from scratchdet.engine.checkpoint import load_checkpoint
from scratchdet.errors import CheckpointError
from scratchdet.modeling.cascade import CascadeRoIHeads
from scratchdet.modeling.detector import build_detector

MODEL_STATE_KEY = "model_state"  # the checkpoint entry written by the trainer

_PLAIN_CLASSES = "roi_heads.box_predictor.cls_score.weight"  # [num_classes, C]
_CASCADE_CLASSES = "roi_heads.stages.0.box_predictor.cls_score.weight"
_KEYPOINTS = "roi_heads.keypoint_predictor.kps_score_lowres.weight"  # ConvTranspose2d: [C, num_keypoints, 4, 4]


def is_cascade(model: nn.Module) -> bool:
    """True when `model` has cascade box heads (modeling/cascade.py)."""
    return isinstance(getattr(model, "roi_heads", None), CascadeRoIHeads)


def record_model_state(model: nn.Module, num_classes: int, num_keypoints: int | None) -> dict:
    """The "model_state" entry of a checkpoint of `model`, built with `num_classes` (K + 1) and `num_keypoints`."""
    return {
        "cascade": is_cascade(model),
        "num_classes": int(num_classes),
        "num_keypoints": None if num_keypoints is None else int(num_keypoints),
    }


def checkpoint_model_state(state: Mapping, checkpoint: str | Path) -> dict:
    """What the model of a loaded checkpoint `state` was: its recorded "model_state", else read off its weights.

    Raises:
        CheckpointError: the checkpoint holds no detector, or its record is malformed; naming the file.
    """
    recorded = state.get(MODEL_STATE_KEY)
    if recorded is not None:
        ok = (
            isinstance(recorded, Mapping)
            and isinstance(recorded.get("cascade"), bool)
            and isinstance(recorded.get("num_classes"), int)
            and (recorded.get("num_keypoints") is None or isinstance(recorded.get("num_keypoints"), int))
        )
        if not ok:
            raise CheckpointError(
                f"{checkpoint}: its {MODEL_STATE_KEY!r} entry {recorded!r} is malformed (expected "
                "{'cascade': bool, 'num_classes': int, 'num_keypoints': int or None}); the file "
                "was altered, use another checkpoint of the run"
            )
        return dict(recorded)
    weights = state.get("model")
    if not isinstance(weights, Mapping):
        raise CheckpointError(f"{checkpoint} has no 'model' entry: it is not a checkpoint of a scratchdet run")
    # Written before the record existed: the weights say which heads the model had.
    cascade = any(str(k).startswith("roi_heads.stages.") for k in weights)
    classes = weights.get(_CASCADE_CLASSES if cascade else _PLAIN_CLASSES)
    if classes is None:
        raise CheckpointError(
            f"{checkpoint} holds no box classifier ({_PLAIN_CLASSES} or {_CASCADE_CLASSES}): it "
            "is not a detection run's checkpoint (a pre-training run? load it with "
            "init=pretrained weights=...)"
        )
    keypoints = weights.get(_KEYPOINTS)
    return {
        "cascade": cascade,
        "num_classes": int(classes.shape[0]),
        "num_keypoints": None if keypoints is None else int(keypoints.shape[1]),
    }


def match_checkpoint_(model: nn.Module, cfg: Config, state: Mapping, checkpoint: str | Path) -> bool:
    """Brings a freshly built `model` (build_detector(cfg, ...)) to the state the checkpoint was written in, in place:
    converts it to cascade heads when the checkpoint holds them. Loads no weights; returns whether `model` changed
    (new modules, which still have to be moved to the device).

    Raises:
        CheckpointError: the checkpoint holds plain heads but cfg builds cascade heads from the start.
    """
    record = checkpoint_model_state(state, checkpoint)
    if is_cascade(model) and not record["cascade"]:
        raise CheckpointError(
            f"{checkpoint} holds plain box heads, but the config builds cascade heads from the start "
            "(model.cascade=true without model.cascade_switch_iters); load it with the config its "
            "run was trained with"
        )
    if record["cascade"] and not is_cascade(model):
        convert_model(model, cfg)  # as the trainer's switch did: stage 1 from the plain head, then its weights load
        return True
    return False


def load_model_weights(model: nn.Module, state: Mapping, checkpoint: str | Path, config: str | Path) -> None:
    """`model.load_state_dict(state["model"])`, strict; a mismatch is a CheckpointError naming both files."""
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as e:
        detail = " ".join(str(e).split())  # torch's list of keys, on one line (the CLI prints errors as one line)
        detail = detail if len(detail) <= 500 else detail[:500] + " ..."
        raise CheckpointError(
            f"{checkpoint} does not fit the model of {config}: {detail}; load it with the config its run was trained "
            "with (overrides of model.* keys change the model)"
        ) from None


def build_model_for_checkpoint(cfg: Config, state: Mapping, checkpoint: str | Path, config: str | Path) -> nn.Module:
    """The model of `cfg` as it was when `checkpoint` (loaded as `state`) was written, with its weights loaded.

    Built on the CPU with the checkpoint's class and keypoint counts; `config` names cfg's file in errors.

    Raises:
        CheckpointError: the checkpoint does not fit cfg's model (see `match_checkpoint_`, `load_model_weights`).
    """
    record = checkpoint_model_state(state, checkpoint)
    try:
        model = build_detector(cfg, record["num_classes"], record["num_keypoints"])
    except ValueError as e:  # e.g. a keypoint config for a checkpoint without a keypoint head
        raise CheckpointError(f"{checkpoint} ({record}) does not fit the model of {config}: {e}") from None
    match_checkpoint_(model, cfg, state, checkpoint)
    load_model_weights(model, state, checkpoint, config)
    return model


def cascade_due(cfg: Config, switch_iter: int | None, iteration: int) -> bool:
    """Whether a run of `cfg` has cascade heads after `iteration` finished iterations (its checkpoint's heads).

    The switch happens at the top of iteration `switch_iter` (engine/cascade_switch.py), so the checkpoint written
    at switch_iter still holds plain heads. cascade=true without a switch means cascade heads from the start.
    """
    return bool(cfg.model.cascade) and (switch_iter is None or iteration > switch_iter)


def check_resume_heads(
    record: dict, cfg: Config, switch_iter: int | None, iteration: int, checkpoint: str | Path
) -> None:
    """Refuses to resume from a checkpoint whose heads are not those the config's schedule gives at `iteration`:
    with plain heads past the switch the loop would never switch; with cascade heads before it, it would switch
    twice. A run's own checkpoints always agree; a fork from a trunk that switched elsewhere does not.

    Raises:
        CheckpointError: naming the checkpoint, both head kinds and the switch iteration.
    """
    due = cascade_due(cfg, switch_iter, iteration)
    if record["cascade"] == due:
        return
    kind = {True: "cascade", False: "plain"}
    where = (
        f"switches to cascade heads at iteration {switch_iter} (schedule length - model.cascade_switch_iters)"
        if switch_iter is not None
        else f"has model.cascade={cfg.model.cascade} without a switch"
    )
    raise CheckpointError(
        f"cannot resume from {checkpoint}: after iteration {iteration} it holds {kind[record['cascade']]} box heads, "
        f"but this run's config {where}, so it would hold {kind[due]} heads there. Resume with the config the "
        "checkpoint was written with, or start a new run"
    )


def resume_model_(model: nn.Module, cfg: Config, checkpoint: str | Path, switch_iter: int | None) -> bool:
    """The trainer's resume: converts the freshly built `model` to the checkpoint's heads (in place) after checking
    they are those of cfg's schedule at the checkpoint's iteration; returns whether `model` changed. The weights
    load afterwards with the optimizer (engine/checkpoint.py `restore_training_state`).

    Raises:
        CheckpointError: see `check_resume_heads`, `match_checkpoint_`.
    """
    state = load_checkpoint(checkpoint)
    check_resume_heads(checkpoint_model_state(state, checkpoint), cfg, switch_iter, int(state["iteration"]), checkpoint)
    return match_checkpoint_(model, cfg, state, checkpoint)
