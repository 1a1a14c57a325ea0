"""`scratchdet eval RUN_DIR`: evaluate a run's checkpoint with the run's own saved config."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from scratchdet.config import load_config
from scratchdet.data.build import build_val_dataset
from scratchdet.engine.checkpoint import latest_checkpoint, load_checkpoint
from scratchdet.engine.trainer import resolve_device
from scratchdet.errors import CheckpointError
from scratchdet.evaluation.coco import evaluate, format_report
from scratchdet.modeling.detector import build_detector


def evaluate_run(run_dir: str | Path, overrides: list[str] | None = None) -> dict:
    """Evaluates the latest checkpoint of `run_dir` (or `checkpoint=PATH` among the overrides) on its val split.

    Writes run_dir/eval/iter_XXXXXXX.json (the checkpoint's iteration), prints the metrics table and returns the
    report with its "path".
    """
    run_dir = Path(run_dir)
    saved = run_dir / "config.yaml"
    if not saved.is_file():
        raise CheckpointError(f"{run_dir} is not a run folder: it has no config.yaml")
    overrides = list(overrides or [])
    checkpoint = None
    for o in [o for o in overrides if o.startswith("checkpoint=")]:
        checkpoint = Path(o.split("=", 1)[1])
        overrides.remove(o)
    cfg = load_config(saved, overrides)
    checkpoint = checkpoint or latest_checkpoint(run_dir / "checkpoints")
    if checkpoint is None:
        raise CheckpointError(f"{run_dir}/checkpoints has no checkpoint to evaluate; train first")
    state = load_checkpoint(checkpoint)
    device = resolve_device(cfg.train.device)
    val_set = build_val_dataset(cfg)
    model = build_detector(cfg, val_set.num_classes)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as e:
        raise CheckpointError(f"{checkpoint} does not fit the model of {saved}: {str(e)[:500]}") from None
    model.to(device)
    if cfg.train.num_threads:
        torch.set_num_threads(cfg.train.num_threads)
    report = evaluate(model, val_set, device, max_images=cfg.eval.max_images)
    report["iter"] = state["iteration"]
    report["checkpoint"] = str(checkpoint)
    out = run_dir / "eval" / f"iter_{state['iteration']:07d}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(format_report(report))
    report["path"] = str(out)
    return report
