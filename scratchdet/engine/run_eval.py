"""`scratchdet eval RUN_DIR`: evaluate a run's checkpoint with the run's own saved config."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from scratchdet.config import Config, config_to_dict, load_config
from scratchdet.data.build import build_val_dataset
from scratchdet.distributed import DistContext, init_distributed
from scratchdet.engine.checkpoint import latest_checkpoint, load_checkpoint
from scratchdet.engine.loop import intra_op_threads
from scratchdet.engine.model_state import build_model_for_checkpoint
from scratchdet.engine.run_dir import check_run_categories
from scratchdet.errors import CheckpointError, ConfigError
from scratchdet.evaluation.split import evaluate_split
from scratchdet.evaluation.tta import build_tta_predictor
from scratchdet.files import atomic_write_json
from scratchdet.run_folder import RunFolder
from scratchdet.weights.convention import CONVENTION_KEYS, InputConvention


@dataclass
class LoadedRun:
    """A run's checkpoint loaded into its model, with the run's config and validation set."""

    cfg: Config
    model: torch.nn.Module
    val_set: object
    device: torch.device
    checkpoint: Path
    iteration: int
    ctx: DistContext  # this process's place under torchrun (evaluation is then sharded over the processes)


def load_run(run_dir: str | Path, overrides: list[str] | None = None) -> LoadedRun:
    """Builds the model of `run_dir` from its saved config (+ `overrides`) and loads its latest checkpoint, or
    the one named by a `checkpoint=PATH` override; `tta=...` is short for `eval.tta=...`.

    The model is the one the run had when it wrote that checkpoint (engine/model_state.py): cascade heads after the
    late switch, the training set's class count.

    Raises:
        CheckpointError: not a run folder, no checkpoint, or a checkpoint that does not fit the config's model
            (including one recorded with another input convention).
        ConfigError: overrides of the input convention keys that would turn the weights into another network.
    """
    run_dir = Path(run_dir)
    saved = RunFolder(run_dir).config
    if not saved.is_file():
        raise CheckpointError(f"{run_dir} is not a run folder: it has no config.yaml")
    overrides = list(overrides or [])
    checkpoint = None
    for o in [o for o in overrides if o.startswith("checkpoint=")]:
        checkpoint = Path(o.split("=", 1)[1])
        overrides.remove(o)
    # `tta=true` is the short form of eval.tta=true, so `scratchdet eval RUN tta=true` works (README.md).
    overrides = [f"eval.{o}" if o.startswith("tta=") else o for o in overrides]
    cfg = load_config(saved, overrides)
    trained, asked = (
        InputConvention.from_values({k: getattr(c.model, k) for k in CONVENTION_KEYS})
        for c in (load_config(saved), cfg)
    )
    if not asked.same_network(trained):
        # These keys change the network's function without changing a tensor shape: the weights would load and
        # compute something else.
        raise ConfigError(
            f"the run trained with {trained.describe()} (its config.yaml); the overrides ask for "
            f"{asked.describe()}, another network for the same weights: drop the model.* input "
            "convention overrides"
        )
    checkpoint = checkpoint or latest_checkpoint(RunFolder(run_dir).checkpoints)
    if checkpoint is None:
        raise CheckpointError(f"{run_dir}/checkpoints has no checkpoint to evaluate; train first")
    state = load_checkpoint(checkpoint)
    recorded = state.get("input_convention")
    if recorded is not None and not asked.same_network(InputConvention.from_values(recorded)):
        raise CheckpointError(
            f"{checkpoint} was trained with {InputConvention.from_values(recorded).describe()}, "
            f"but {saved} feeds {asked.describe()}: it is another run's checkpoint; evaluate it "
            "from its own run folder"
        )
    ctx, device = init_distributed(cfg.train.device)
    val_set = build_val_dataset(cfg)
    check_run_categories(run_dir, val_set)
    model = build_model_for_checkpoint(cfg, state, checkpoint, saved)
    model.to(device)
    return LoadedRun(cfg, model, val_set, device, checkpoint, int(state["iteration"]), ctx)


# Keys that change how an evaluation runs, not its numbers: an evaluation that differs only in these is the training
# run's own, and keeps its name.
NUMBER_NEUTRAL_KEYS = ("data.num_workers", "train.num_threads", "data.check_files", "train.record_image_ids")


def differing_settings(trained: Config, asked: Config) -> list[str]:
    """`key=value` for every setting of `asked` that differs from the run's own config (`trained`), outside
    NUMBER_NEUTRAL_KEYS and the keys a resumed run may change without changing what it trains."""
    a, b = (_flat_config(c) for c in (trained, asked))
    return [
        f"{k}={b.get(k)}"
        for k in sorted(a.keys() | b.keys())
        if a.get(k) != b.get(k) and k not in NUMBER_NEUTRAL_KEYS and k not in ("resume", "output")
    ]


def eval_report_path(run_dir: Path, iteration: int, trained: Config, asked: Config) -> Path:
    """Where `scratchdet eval` writes its report: eval/iter_XXXXXXX.json when it evaluates as training did (the
    same file the training loop writes, with the same numbers), else a name beside it that says how it differs,
    e.g. iter_0000004_tta.json or iter_0000004_coco_backend-faster_coco_eval_max_images-2.json. The training-time
    record of an iteration is never replaced by an evaluation with other settings: the learning curves the report
    draws read those files, and must keep meaning what training measured."""
    plain = RunFolder(run_dir).eval_report(iteration)
    differ = [d for d in differing_settings(trained, asked) if not d.startswith("eval.tta")]
    parts = ["tta"] if asked.eval.tta else []
    for setting in differ:
        key, _, value = setting.partition("=")
        parts.append(re.sub(r"[^A-Za-z0-9._+-]+", "", f"{key.rsplit('.', 1)[-1]}-{value}"))
    if not parts:
        return plain
    tag = "_".join(parts)
    if len(tag) > 80:  # many keys: a short name, and the report's "overrides" and "settings_differ" say which
        tag = f"{tag[:60]}_{hashlib.sha1('_'.join(differ).encode()).hexdigest()[:8]}"
    return plain.with_name(f"{plain.stem}_{tag}{plain.suffix}")


def _flat_config(cfg: Config) -> dict:
    def flat(d: dict, prefix: str = "") -> dict:
        out = {}
        for k, v in d.items():
            out.update(flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
        return out

    return flat(config_to_dict(cfg))


def evaluate_run(run_dir: str | Path, overrides: list[str] | None = None) -> dict:
    """Evaluates the latest checkpoint of `run_dir` (or `checkpoint=PATH` among the overrides) on its val split.

    Writes run_dir/eval/iter_XXXXXXX.json (the checkpoint's iteration) when it evaluates with the run's own settings,
    else a report beside it whose name says how it differs (eval_report_path), prints the metrics table and returns
    the report with its "path". Under torchrun (`torchrun --nproc_per_node=N -m scratchdet eval RUN`) every process
    evaluates its shard of the images and rank 0 scores, prints and writes.
    """
    run_dir = Path(run_dir)
    loaded = load_run(run_dir, overrides)
    cfg, model, val_set, device, checkpoint = loaded.cfg, loaded.model, loaded.val_set, loaded.device, loaded.checkpoint
    ctx = loaded.ctx
    predict = None
    if cfg.eval.tta:
        predict = build_tta_predictor(model, cfg.eval.tta_sizes, cfg.eval.tta_max_size, cfg.eval.tta_flip)
    with intra_op_threads(cfg.train.num_threads):
        report, text = evaluate_split(model, val_set, cfg, device, predict=predict, ctx=ctx)
    report["iter"] = loaded.iteration
    report["checkpoint"] = str(checkpoint)
    report["overrides"] = list(overrides or [])  # what this evaluation changed from the run's own config
    report["tta"] = cfg.eval.tta
    if cfg.eval.tta:
        ev = cfg.eval
        report.update(tta_sizes=list(ev.tta_sizes), tta_max_size=ev.tta_max_size, tta_flip=ev.tta_flip)
    out = eval_report_path(run_dir, loaded.iteration, load_config(RunFolder(run_dir).config), cfg)
    report["settings_differ"] = differing_settings(load_config(RunFolder(run_dir).config), cfg)
    if ctx.is_main:
        out.parent.mkdir(exist_ok=True)
        atomic_write_json(out, report)
        print(text)
    report["path"] = str(out)
    return report
