"""The run folder: what it holds, and the rules that keep a run from silently starting over or changing config.

    output/config.yaml      the resolved config (every default filled in)
    output/env.json         seed, versions, git commit, command line, device
    output/metrics.jsonl    training and evaluation records (engine/metrics.py)
    output/checkpoints/     model_XXXXXXX.pth + last_checkpoint (engine/checkpoint.py)
    output/eval/            iter_XXXXXXX.json, one COCO report per evaluation
    output/dataset_*.json   what dataset cleaning dropped or clipped, per split
"""

from __future__ import annotations

import json
import platform
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import yaml

from scratchdet.config import Config, config_to_dict, config_to_yaml
from scratchdet.engine.checkpoint import latest_checkpoint
from scratchdet.errors import CheckpointError

# Keys a resumed run may change: they affect how the run is watched or cut, not what it computes.
RESUMABLE_KEYS = {
    "resume", "output", "train.max_iters", "train.log_period", "train.checkpoint_period", "train.extra_checkpoints",
    "train.device",
    "train.num_threads", "data.num_workers", "data.check_files", "eval.period", "eval.max_images", "eval.batch_size",
}


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def config_diff(saved: dict, current: dict) -> list[str]:
    """Lines `key: saved -> current` for every differing key outside RESUMABLE_KEYS."""
    a, b = _flat(saved), _flat(current)
    return [
        f"{k}: {a.get(k)!r} -> {b.get(k)!r}"
        for k in sorted(set(a) | set(b))
        if k not in RESUMABLE_KEYS and a.get(k) != b.get(k)
    ]


def prepare_run_dir(cfg: Config) -> Path | None:
    """Creates the run folder and returns the checkpoint to resume from (None for a fresh run).

    Raises:
        CheckpointError: resume=true without a checkpoint, resume with a changed config, or a fresh start into a
            folder that already has checkpoints (which would silently mix two runs).
    """
    out = Path(cfg.output)
    ckpt_dir = out / "checkpoints"
    last = latest_checkpoint(ckpt_dir) if ckpt_dir.is_dir() else None
    if cfg.resume:
        if last is None:
            raise CheckpointError(
                f"resume=true but {ckpt_dir} holds no checkpoint; drop resume=true to start this run fresh"
            )
        saved_path = out / "config.yaml"
        if saved_path.is_file():
            diff = config_diff(yaml.safe_load(saved_path.read_text()), config_to_dict(cfg))
            if diff:
                raise CheckpointError(
                    f"resuming {out} with a config that differs from its saved config.yaml:\n  "
                    + "\n  ".join(diff)
                    + "\nresume with the same settings, or start a new run in another output folder"
                )
        return last
    if last is not None:
        raise CheckpointError(
            f"{out} already holds checkpoints ({last.name}); pass resume=true to continue it, or choose a new output"
        )
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(config_to_yaml(cfg))
    return None


def write_env(out: Path, cfg: Config, device: str) -> None:
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
    name = "env.json" if not (out / "env.json").exists() else f"env_resume_{datetime.now():%Y%m%d_%H%M%S}.json"
    (out / name).write_text(json.dumps(env, indent=2) + "\n")
