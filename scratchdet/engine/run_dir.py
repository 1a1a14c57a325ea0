"""The run folder: the rules that keep a run from silently starting over or changing config.

What the folder holds (config, env, metrics, checkpoints, eval reports, ...) is listed in scratchdet/run_folder.py.
"""

from __future__ import annotations

import itertools
import os
import platform
import subprocess
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from scratchdet.config import Config, config_to_dict, config_to_yaml
from scratchdet.engine.checkpoint import latest_checkpoint, verify_checkpoint
from scratchdet.errors import CheckpointError
from scratchdet.files import atomic_write_json, atomic_write_text
from scratchdet.run_folder import RUN_FILES, RunFolder

if TYPE_CHECKING:  # pretrain imports this module; the alias is for type checkers only
    from scratchdet.pretrain.config import PretrainConfig

    # Detection and pre-training runs share the folder rules: structured configs with `output`, `seed`, `resume`.
    RunConfig = Config | PretrainConfig

# Keys a resumed run may change: they affect how the run is watched or cut, not what it computes.
RESUMABLE_KEYS = {
    "resume",
    "output",
    "train.max_iters",
    "train.log_period",
    "train.checkpoint_period",
    "train.extra_checkpoints",
    "train.device",
    "train.num_threads",
    "train.deterministic",
    "data.num_workers",
    "data.check_files",
    "eval.period",
    "eval.max_images",
    "eval.batch_size",
    # Logging and start-up policy (docs/RELIABILITY.md, promises 4 and 8). Skipping bad images may be switched on
    # to get past an image that broke a run: images read before were all readable, so the iterations already done
    # are unchanged.
    "train.record_image_ids",
    "train.allow_fresh_start",
    "data.skip_bad_images",
    "data.max_skip_fraction",
}


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


# Keys added after run folders existed, with the value every run written before them used: a saved config.yaml
# without the key (or with null there, in either config) compares as that value (torchvision's input convention,
# the only one scratchdet had then, and what a model is built with when the keys are unset).
ADDED_KEYS = {
    "model.input_format": "RGB",
    "model.pixel_scale": 1.0,
    "model.pixel_mean": [0.485, 0.456, 0.406],
    "model.pixel_std": [0.229, 0.224, 0.225],
    "model.stride_in_1x1": False,
}


def config_diff(saved: dict, current: dict) -> list[str]:
    """Lines `key: saved -> current` for every differing key outside RESUMABLE_KEYS."""
    a, b = _flat(saved), _flat(current)
    for key, legacy in ADDED_KEYS.items():
        for flat in (a, b):
            if (key in a or key in b) and flat.get(key) is None:
                flat[key] = legacy  # unset means what the model is built with then (modeling/detector.py)
    return [
        f"{k}: {a.get(k)!r} -> {b.get(k)!r}"
        for k in sorted(set(a) | set(b))
        if k not in RESUMABLE_KEYS and a.get(k) != b.get(k)
    ]


def check_writable(folder: Path, what: str = "output folder") -> None:
    """Creates `folder` if needed and proves a file can be written in it.

    Raises:
        CheckpointError: naming `what`, the folder and the OS error, before any training time is spent.
    """
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".write_probe.", suffix=".tmp")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise CheckpointError(
            f"{what} {folder} is not writable ({type(e).__name__}: {e.strerror or e}); fix its permissions "
            "or free space, or choose another output="
        ) from None


def _resume_point(ckpt_dir: Path) -> tuple[Path | None, str | None]:
    """(latest checkpoint, None) when it is readable, (None, None) when there is none, (None, why) when unreadable."""
    try:
        last = latest_checkpoint(ckpt_dir) if ckpt_dir.is_dir() else None
        if last is not None:
            verify_checkpoint(last)
    except CheckpointError as e:
        return None, str(e)
    return last, None


def set_aside(out: Path) -> Path | None:
    """Moves the run files in `out` (RUN_FILES) into out/discarded_YYYYmmdd_HHMMSS/; returns it (None: nothing)."""
    found = sorted({p for pattern in RUN_FILES for p in out.glob(pattern)})
    if not found:
        return None
    stamp = f"discarded_{datetime.now():%Y%m%d_%H%M%S}"
    target = next(
        out / name
        for name in itertools.chain([stamp], (f"{stamp}_{i}" for i in itertools.count(2)))
        if not (out / name).exists()
    )
    target.mkdir()
    for p in found:
        p.rename(target / p.name)
    return target


def _set_aside_earlier_attempt(out: Path) -> None:
    """Before a fresh start: moves another attempt's records (an attempt that ended before its first checkpoint,
    e.g. a diverged loss, or one trained with other settings) into out/discarded_*/, saying so in one line. Its
    config.yaml, metrics.jsonl, eval/ and tb/ would otherwise sit beside the new attempt's and mix into its curves,
    its evaluations and its report (a fresh start appends to metrics.jsonl and overwrites only same-named files)."""
    found = sorted(p.name + ("/" if p.is_dir() else "") for pattern in RUN_FILES for p in out.glob(pattern))
    if not found:
        return
    moved = set_aside(out)
    print(
        f"warning: {out} holds another attempt's records ({', '.join(found)}) and no checkpoint; moved them to "
        f"{moved} and starting fresh",
        file=sys.stderr,
    )


def prepare_run_dir(cfg: RunConfig) -> Path | None:
    """Creates the run folder and returns the checkpoint to resume from (None for a fresh run).

    With resume=true and train.allow_fresh_start=true, a folder without a checkpoint, or whose latest checkpoint
    is unreadable, starts fresh instead of failing. A fresh start never inherits records: another attempt's files
    (config, metrics, evaluations, TensorBoard, init and dataset records) are first moved into out/discarded_*/, so
    the two attempts never mix.

    Raises:
        CheckpointError: resume=true without a readable checkpoint (unless train.allow_fresh_start), resume with a
            changed config, a fresh start into a folder that already has checkpoints (which would silently mix
            two runs), or an output folder that is not writable.
    """
    out = Path(cfg.output)
    folder = RunFolder(out)
    ckpt_dir = folder.checkpoints
    if cfg.resume:
        last, unreadable = _resume_point(ckpt_dir)
        if last is not None:
            saved_path = folder.config
            if saved_path.is_file():
                diff = config_diff(yaml.safe_load(saved_path.read_text()), config_to_dict(cfg))
                if diff:
                    raise CheckpointError(
                        f"resuming {out} with a config that differs from its saved config.yaml:\n  "
                        + "\n  ".join(diff)
                        + "\nresume with the same settings, or start a new run in another output folder"
                    )
            check_writable(out)
            check_writable(ckpt_dir)
            return last
        # The pre-training config (scratchdet/pretrain/config.py) shares this function but not the opt-in key.
        has_opt_in = hasattr(cfg.train, "allow_fresh_start")
        if not (has_opt_in and cfg.train.allow_fresh_start):
            if unreadable is not None:
                how = ", or pass train.allow_fresh_start=true to set this run's files aside and start over"
                raise CheckpointError(
                    f"resume=true but the latest checkpoint cannot be used: {unreadable}. Restore "
                    f"the file{how if has_opt_in else ''}"
                )
            raise CheckpointError(
                f"resume=true but {ckpt_dir} holds no checkpoint; drop resume=true to start this run fresh"
                + (" (or pass train.allow_fresh_start=true)" if has_opt_in else "")
            )
        moved = set_aside(out) if unreadable is not None else None
        if moved is not None:
            print(
                f"warning: {unreadable}; moved the run's files to {moved} and starting fresh "
                "(train.allow_fresh_start=true)",
                file=sys.stderr,
            )
    else:
        last = latest_checkpoint(ckpt_dir) if ckpt_dir.is_dir() else None
        if last is not None:
            raise CheckpointError(
                f"{out} already holds checkpoints ({last.name}); pass resume=true to continue it, or choose a new "
                "output"
            )
    _set_aside_earlier_attempt(out)
    check_writable(out)
    if ckpt_dir.is_dir():
        check_writable(ckpt_dir)
    atomic_write_text(folder.config, config_to_yaml(cfg))
    return None


def write_env(out: Path, cfg: RunConfig, device: str) -> None:
    """Records what produced the run: seed, library versions, git commit, command line, device."""
    import numpy
    import pycocotools
    import torch
    import torchvision

    import scratchdet

    try:
        source = Path(scratchdet.__file__).parent
        git = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, cwd=source)
        commit = git.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    env = {
        "seed": cfg.seed,
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "argv": sys.argv,
        "device": device,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": {
            "scratchdet": scratchdet.__version__,
            "torch": torch.__version__,
            "torchvision": torchvision.__version__,
            "numpy": numpy.__version__,
            "pycocotools": getattr(pycocotools, "__version__", "unknown"),
        },
        "git_commit": commit,
    }
    path = RunFolder(out).env
    if path.exists():
        path = out / f"env_resume_{datetime.now():%Y%m%d_%H%M%S}.json"
    atomic_write_json(path, env)


def check_run_categories(run_dir: Path, dataset) -> None:
    """Refuses data whose categories differ from those the run trained on (its dataset_train.json): the model's
    label k is the training file's k-th category, written into results with that category's id, and a keypoint
    model's output j is the training file's j-th keypoint. `scratchdet eval` checks its evaluation data and resume
    its training data with it: a re-export that renumbered the categories (Label Studio, CVAT and Darwin reassign
    ids) would otherwise be scored, or trained on, as if label 1 still meant the same class.

    Runs written before the training categories (or keypoint names) were recorded are not checked for them.

    Raises:
        DataError: listing the differences, naming the run's record and the data file.
    """
    import json

    from scratchdet.data.build import category_map
    from scratchdet.data.validate import check_same_categories
    from scratchdet.errors import DataError

    record = RunFolder(run_dir).dataset("train")
    saved = json.loads(record.read_text()) if record.is_file() else {}
    trained, given = saved.get("categories"), category_map(dataset)
    if trained and given is not None:
        check_same_categories(
            {int(cat_id): name for cat_id, name in trained},
            f"the training data of {run_dir} ({record.name})",
            given,
            str(dataset.json_path),
        )
    names, given_names = saved.get("keypoint_names"), getattr(dataset, "keypoint_names", None)
    if names and given_names is not None and list(names) != list(given_names):
        raise DataError(
            f"the keypoints of the training data of {run_dir} ({record.name}: {list(names)}) and of "
            f"{dataset.json_path} ({list(given_names)}) differ: a keypoint model's output j is the training file's "
            "j-th keypoint. Use the data the run trained on, or train a new run on this data",
            path=str(dataset.json_path),
            field="categories[].keypoints",
        )
