"""A study folder read back: every planned run with its records, curves and sample counts (`load_study`).

What `scratchdet report` (report.py), the findings (findings.py) and the figures (figures.py) are computed from;
kept apart from them so that they all depend on this module and on nothing of each other's but what they call.
Reads plan.json, runs/*/metrics.jsonl (a forked run's trunk records included), init.json and eval/*.json.

The compared axis is the arms (spec `arms:`, plan.json's run entries `arm`/`init`): one scratch arm, the reference,
and any number of pre-trained arms, each with its name (docs/PAPER.md, "The claim": only the initialization differs
between the compared runs). `study_arms` lists them; `check_arms` refuses a run whose init.json says it was
initialized otherwise than its arm.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from scratchdet.engine.metrics import read_metrics
from scratchdet.errors import ScratchdetError
from scratchdet.run_folder import RunFolder

# Arms are named by their spec names in sentences, tables and figures; an arm named "pretrained" reads "pre-trained".
ARM_LABELS = {"pretrained": "pre-trained"}
SEEN_KEYS = ("images", "instances", "pixels")


# The verdict's equivalence margin when plan.json has none (study/spec.py VerdictSpec: the paper calls 41.3 vs 41.1
# comparable and reads gaps of about 0.5 AP as the ones that decide).
DEFAULT_MARGIN = 0.5

# A drop of at least this factor between two logged LRs is an LR step (warm-up only ever raises the LR).
LR_DROP_FACTOR = 0.5


def arm_label(name: str) -> str:
    """How sentences, tables and figures name an arm: its spec name ("pre-trained" for an arm named "pretrained")."""
    return ARM_LABELS.get(name, name)


@dataclass(frozen=True)
class Arm:
    """One arm of the study: its spec name and its initialization ("scratch" or "pretrained")."""

    name: str
    init: str

    @property
    def label(self) -> str:
        return arm_label(self.name)

    @property
    def pretrained(self) -> bool:
        return self.init != "scratch"


def study_arms(runs: Iterable) -> list[Arm]:
    """The arms of `runs` (objects with .arm and .init): the scratch arm(s) first, then the pre-trained arms in
    plan order (the spec's `arms:` order, since the plan expands arms first)."""
    found = {}
    for run in runs:
        found.setdefault(run.arm, Arm(run.arm, run.init))
    return sorted(found.values(), key=lambda a: a.pretrained)  # stable: plan order within each kind


def reference_arm(arms: list[Arm]) -> Arm | None:
    """The scratch arm every pre-trained arm is compared with (the first, `check_arms` refuses a second), or None."""
    return next((a for a in arms if not a.pretrained), None)


def pretrained_arms(arms: list[Arm]) -> list[Arm]:
    return [a for a in arms if a.pretrained]


def metric_value(value) -> float | None:
    """A metric as float, or None when absent or not finite (COCOeval's 'cannot compute')."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def schedule_label(schedule: float | None) -> str:
    """2.0 -> "2x", 0.5 -> "0.5x"."""
    return "?x" if schedule is None else f"{schedule:g}x"


def device_seconds(records: list[dict], after: int = 0) -> float | None:
    """Device time of the training windows that end after iteration `after`: the sum over "train" records of
    time_per_iter x the window's iterations x the processes that trained it (the "start" record's world_size).

    time_per_iter is wall time per iteration including what ran between iterations (checkpoints, evaluation), so
    this is what the run held its devices for. None when no record has a time.
    """
    total, previous, world, found = 0.0, None, 1, False
    # At one iteration a "train" record closes the window before a "start" record (a resume there) opens one.
    for record in sorted(records, key=lambda r: (r["iter"], r.get("type") == "start")):
        if record.get("type") == "start":
            previous, world = record["iter"], int(record.get("world_size") or 1)
        elif record.get("type") == "train" and previous is not None:
            per_iter = metric_value(record.get("time_per_iter"))
            if per_iter is not None and record["iter"] > after:
                total += (record["iter"] - max(previous, after)) * per_iter * world
                found = True
            previous = record["iter"]
    return total if found else None


@dataclass
class RunData:
    """One planned run with its de-duplicated records (trunk records before the fork included)."""

    name: str
    arm: str
    init: str
    schedule: float | None
    size_label: str
    train_size: int | None
    hparams: str
    overrides: list | dict
    path: Path
    max_iters: int | None = None
    plan_train_images: int | None = None
    records: list[dict] = field(default_factory=list)
    init_record: dict | None = None
    fork_iter: int | None = None  # where the run forked from its trunk (None: trained alone)
    init_path: Path | None = None  # the init.json init_record was read from (the trunk's for a fork without one)
    planned_weights: str | None = None  # the weights the plan gives the run's arm (None: scratch, or not known)
    seed: int | None = None  # the replicate's seed (plan.json `seed`; None: the study has no seed axis)

    @property
    def device_hours(self) -> float | None:
        """Device-hours of this run as if trained alone: its trunk's windows before the fork included."""
        seconds = device_seconds(self.records)
        return None if seconds is None else seconds / 3600

    @property
    def own_device_hours(self) -> float | None:
        """Device-hours this run spent itself: after its fork point (the whole run when it has no trunk)."""
        seconds = device_seconds(self.records, after=self.fork_iter or 0)
        return None if seconds is None else seconds / 3600

    def of_type(self, record_type: str) -> list[dict]:
        """Records of one type ("start", "train", "eval", "end"), by iteration."""
        return [r for r in self.records if r.get("type") == record_type]

    @property
    def label(self) -> str:
        return schedule_label(self.schedule)

    @property
    def evals(self) -> list[dict]:
        return self.of_type("eval")

    @property
    def trains(self) -> list[dict]:
        return self.of_type("train")

    @property
    def end(self) -> dict | None:
        ends = self.of_type("end")
        return ends[-1] if ends else None

    @property
    def finished(self) -> bool:
        """True when the run wrote its "end" record (the trainer writes it after its last iteration) at or past the
        plan's max_iters (an "end" below it comes from a run capped by train.max_iters)."""
        end = self.end
        return end is not None and (self.max_iters is None or end["iter"] >= self.max_iters)

    @property
    def started(self) -> bool:
        return bool(self.records)

    @property
    def last_iter(self) -> int | None:
        return self.records[-1]["iter"] if self.records else None

    @property
    def last_eval(self) -> dict | None:
        evals = self.evals
        return evals[-1] if evals else None

    @property
    def status(self) -> str:
        if not self.started:
            return "missing"
        return "finished" if self.finished else "unfinished"

    @property
    def train_images(self) -> int | None:
        """Training-set size in images: the plan's, else what the trainer logged at start, else the requested size."""
        if self.plan_train_images:
            return self.plan_train_images
        for record in self.of_type("start"):
            if isinstance(record.get("train_images"), int):
                return record["train_images"]
        return self.train_size

    def final(self, iou_type: str = "bbox", key: str = "AP") -> float | None:
        """The metric of the LAST evaluation, or None if it had no predictions or COCOeval could not compute it."""
        last = self.last_eval
        if last is None or last.get("status", "ok") != "ok":
            return None
        return metric_value((last.get(iou_type) or {}).get(key))

    def curve(self, iou_type: str = "bbox", key: str = "AP") -> list[tuple[int, float]]:
        """(iteration, value) of every evaluation that has the metric; 'no predictions' leaves a gap, not a 0."""
        points = []
        for record in self.evals:
            value = metric_value((record.get(iou_type) or {}).get(key)) if record.get("status", "ok") == "ok" else None
            if value is not None:
                points.append((record["iter"], value))
        return points

    def loss_curve(self, key: str = "loss") -> list[tuple[int, float]]:
        return [(r["iter"], v) for r in self.trains if (v := metric_value(r.get(key))) is not None]

    @property
    def lr_drops(self) -> list[int]:
        """Iterations of LR steps, inferred from the logged LR (the drop lies after the returned logged iteration)."""
        drops, previous = [], None
        for record in self.trains:
            lr = metric_value(record.get("lr"))
            if lr is not None and previous is not None and lr < previous[1] * LR_DROP_FACTOR:
                drops.append(previous[0])
            if lr is not None:
                previous = (record["iter"], lr)
        return drops

    @property
    def seen(self) -> dict | None:
        """Samples seen by this run's own training (fine-tuning for a pre-trained run), cumulative over resumes."""
        end = self.end
        if end and isinstance(end.get("seen"), dict):
            return end["seen"]
        trains = [r for r in self.trains if isinstance(r.get("seen"), dict)]
        return trains[-1]["seen"] if trains else None

    @property
    def pretrain_seen(self) -> dict | None:
        """Samples seen by the pre-training behind this run's weights (zeros for scratch); may carry "estimate"."""
        candidates = [self.init_record or {}, *self.of_type("start"), self.end or {}]
        for record in candidates:
            if isinstance(record.get("pretrain_seen"), dict):
                return record["pretrain_seen"]
        return None


@dataclass
class Study:
    """A study folder: its plan and the data of every planned run."""

    root: Path
    name: str
    created: str | None
    runs: list[RunData]
    iterations: dict
    pretrain: dict[str, dict]  # arm name -> summary of the pre-training run the study performed for it
    trunk_hours: dict[str, float | None] = field(default_factory=dict)  # trunk path -> its device-hours
    margin: float = DEFAULT_MARGIN  # plan.json verdict.margin: AP points within which scratch is "no worse"
    seeds: list[int] | None = None  # plan.json `seeds` (None: no seed axis)
    stopping: dict = field(default_factory=dict)  # plan.json `stopping`


def _dedup(records: list) -> list[dict]:
    """Keeps the LAST record per (type, iter), sorted by iter: a resumed run re-logs the iterations after its
    checkpoint. Records without an integer iter cannot be placed on a curve and are dropped."""
    latest: dict[tuple, dict] = {}
    for record in records:
        if isinstance(record, dict) and isinstance(record.get("iter"), int):
            key = (record.get("type"), record["iter"])
            latest.pop(key, None)  # re-insert so that, within one iter, order follows the last write
            latest[key] = record
    return sorted(latest.values(), key=lambda r: r["iter"])


def _read_json(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def _run_records(run_dir: Path) -> list[dict]:
    """eval/iter_*.json first (written before its metrics record, so a kill can leave only the file), then metrics."""
    records = []
    for path in RunFolder(run_dir).eval_reports():
        report = _read_json(path)
        if report is not None and isinstance(report.get("iter"), int):
            records.append({"type": "eval", **report})
    return records + read_metrics(run_dir)


def _override_value(overrides: list, key: str) -> str | None:
    """The value the last `key=value` of an override list sets, or None."""
    values = [o.split("=", 1)[1] for o in overrides if isinstance(o, str) and o.split("=", 1)[0].strip() == key]
    return values[-1].strip() if values else None


def planned_weights(entry: dict, root: Path, pretrain: dict) -> str | None:
    """The weights the plan gives a run's arm: the `weights=` override its arm adds (study/plan.py `arm_overrides`:
    the arm's init/weights come right before the hparams entry's overrides, so those are left out here: an hparams
    entry that sets weights does not change what the arm is), else the study's own pre-training of the arm
    (plan.json `pretrain`). None for a scratch arm, or when the plan entry does not say."""
    if entry.get("init") == "scratch":
        return None
    if isinstance(entry.get("weights"), str):
        return entry["weights"]
    overrides = [o for o in entry.get("overrides") or [] if isinstance(o, str)]
    hp = [o for o in entry.get("hparams_overrides") or [] if isinstance(o, str)]
    if hp:
        starts = [i for i in range(len(overrides) - len(hp) + 1) if overrides[i : i + len(hp)] == hp]
        if starts:  # the last occurrence: the same override among the global ones stays
            overrides = overrides[: starts[-1]] + overrides[starts[-1] + len(hp) :]
    weights = _override_value(overrides, "weights")
    if weights:
        return weights
    arm_pretrain = pretrain.get(str(entry.get("arm")))
    return str(root / arm_pretrain) if isinstance(arm_pretrain, str) else None


def load_run(root: Path, entry: dict, trunks: dict[str, Path], pretrain: dict | None = None) -> RunData:
    """Reads one plan entry's run folder; prepends its trunk's records up to the fork if the run lacks them.

    Args:
        pretrain: plan.json's `pretrain` (arm name -> the study's pre-training folder, relative to root).
    """
    name = str(entry.get("name", "?"))
    run_dir = root / entry.get("path", f"runs/{name}")
    records = _run_records(run_dir)
    fork_iter = entry.get("fork_iter")
    trunk = entry.get("trunk")
    trunk_dir = (trunks.get(trunk) or root / trunk) if trunk else None  # a trunk's name or its path
    init_path = RunFolder(run_dir).init
    init_record = _read_json(init_path)
    if trunk_dir is not None and isinstance(fork_iter, int) and fork_iter > 0:
        has_early = any(r.get("type") in ("train", "eval") and r["iter"] <= fork_iter for r in _dedup(records))
        if not has_early:
            # The runner may start a fork from the trunk's checkpoint with a fresh log: the curve's head is there.
            head = [r for r in _dedup(_run_records(trunk_dir)) if r["iter"] <= fork_iter and r.get("type") != "end"]
            records = head + records
        if init_record is None:
            init_path = RunFolder(trunk_dir).init
            init_record = _read_json(init_path)
    size = entry.get("train_size")
    init = str(entry.get("init", (init_record or {}).get("init", "?")))
    return RunData(
        name=name,
        arm=str(entry.get("arm", init)),
        init=init,
        schedule=metric_value(entry.get("schedule")),
        size_label=str(entry.get("train_size_label") or ("all" if size is None else size)),
        train_size=size if isinstance(size, int) else None,
        hparams=str(entry.get("hparams") or "default"),
        overrides=entry.get("hparams_overrides") or [],
        path=run_dir,
        max_iters=entry.get("max_iters") if isinstance(entry.get("max_iters"), int) else None,
        plan_train_images=entry.get("train_images") if isinstance(entry.get("train_images"), int) else None,
        records=_dedup(records),
        init_record=init_record,
        fork_iter=fork_iter if trunk_dir is not None and isinstance(fork_iter, int) else None,
        init_path=init_path if init_record is not None else None,
        planned_weights=planned_weights(entry, root, pretrain or {}),
        seed=entry.get("seed") if isinstance(entry.get("seed"), int) else None,
    )


def _pretrain_summaries(root: Path, plan: dict) -> dict[str, dict]:
    """{arm name: last iteration, samples seen, finished} of the pre-training runs the study performed itself."""
    paths = dict(plan.get("pretrain") or {})  # arm name -> folder, relative to the study
    if not paths and RunFolder(root / "pretrain").metrics.is_file():
        paths = {"pretrain": "pretrain"}
    elif not paths and (root / "pretrain").is_dir():
        paths = {d.name: f"pretrain/{d.name}" for d in sorted((root / "pretrain").iterdir()) if d.is_dir()}
    summaries = {}
    for arm, rel in paths.items():
        records = _dedup(read_metrics(root / rel))
        with_seen = [r for r in records if isinstance(r.get("seen"), dict)]
        if with_seen:
            summaries[arm] = {
                "path": rel,
                "iter": with_seen[-1].get("iter"),
                "seen": with_seen[-1]["seen"],
                "finished": any(r.get("type") == "end" for r in records),
                "device_hours": None if (sec := device_seconds(records)) is None else sec / 3600,
            }
    return summaries


def load_study(study_dir: str | Path) -> Study:
    """Reads plan.json and every planned run; raises ScratchdetError when there is no readable plan."""
    root = Path(study_dir)
    plan_path = root / "plan.json"
    if not plan_path.is_file():
        raise ScratchdetError(f"{plan_path} not found: '{root}' is not a study folder (run `scratchdet study` first)")
    plan = _read_json(plan_path)
    if plan is None or not isinstance(plan.get("runs", []), list):
        raise ScratchdetError(
            f"{plan_path} is not a JSON object with a 'runs' list; re-create it with `scratchdet study`"
        )
    trunks = {t["name"]: root / t["path"] for t in plan.get("trunks", []) if "name" in t and "path" in t}
    plan_pretrain = plan.get("pretrain") if isinstance(plan.get("pretrain"), dict) else {}
    runs = [load_run(root, entry, trunks, plan_pretrain) for entry in plan.get("runs", [])]
    pretrain = _pretrain_summaries(root, plan)
    for run in runs:  # the study's own pre-training is the fallback count for runs that recorded none
        summary = pretrain.get(run.arm) or (next(iter(pretrain.values())) if len(pretrain) == 1 else None)
        if run.init == "pretrained" and run.pretrain_seen is None and summary is not None:
            run.init_record = {**(run.init_record or {}), "pretrain_seen": dict(summary["seen"])}
    trunk_hours = {}
    for path in trunks.values():
        seconds = device_seconds(_dedup(read_metrics(path)))
        trunk_hours[str(path.relative_to(root))] = None if seconds is None else seconds / 3600
    verdict_settings = plan.get("verdict") if isinstance(plan.get("verdict"), dict) else {}
    margin = metric_value(verdict_settings.get("margin"))
    seeds = plan.get("seeds") if isinstance(plan.get("seeds"), list) else None
    return Study(
        root,
        str(plan.get("name", root.name)),
        plan.get("created"),
        runs,
        plan.get("iterations") or {},
        pretrain,
        trunk_hours,
        margin=margin if margin is not None and margin > 0 else DEFAULT_MARGIN,
        seeds=seeds,
        stopping=plan.get("stopping") if isinstance(plan.get("stopping"), dict) else {},
    )


# ---------------------------------------------------------------------------------------------------- arm check


def _same_weights(loaded: str, planned: str) -> bool:
    """Whether the weight file a run loaded is what its arm plans: the planned file itself, or a checkpoint inside
    the planned run folder (weights=RUN means the run's latest checkpoint, weights/initialization.py
    `resolve_weights`, so init.json records the file). Compared as written (absolute, normalized) and with links
    resolved, since the plan and the record may spell one file differently."""
    spellings = (os.path.abspath, os.path.realpath)
    for a, b in ((spell(loaded), spell(planned)) for spell in spellings):
        if a == b or a.startswith(b.rstrip(os.sep) + os.sep):
            return True
    return False


def init_mismatch(run: RunData) -> str | None:
    """Why `run`'s init.json contradicts its planned arm, or None when it agrees or there is nothing to check.

    The rule (docs/PAPER.md, "The claim": the compared arms differ in their initialization only, so each run must be
    initialized as its arm): init.json's `init` equals the plan entry's; a scratch arm's run loaded no weights; a
    pre-trained arm's run loaded the weights the plan gives that arm (`planned_weights`), when the plan says which.
    """
    record = run.init_record
    if record is None or run.init_path is None:  # no init.json read (load_study may add pre-training counts alone)
        return None
    loaded_init, loaded = record.get("init"), record.get("weights")
    planned = "none" if run.init == "scratch" else (run.planned_weights or "as the plan does not say")
    where = (
        f"run {run.name}: {run.init_path} says init={loaded_init}, weights={loaded or 'none'}, but the run is in "
        f"arm {run.arm!r} (init={run.init}, weights={planned})"
    )
    if loaded_init != run.init:
        return where
    if run.init == "scratch" and loaded:
        return where
    planned_file = run.planned_weights
    if run.init != "scratch" and planned_file and (not loaded or not _same_weights(str(loaded), planned_file)):
        return where
    return None


def check_arms(study: Study) -> None:
    """Refuses a study whose runs are not what their arms say, before any of its numbers is reported.

    Checks every run's init.json (its own, or its trunk's for a fork that has none) against its planned arm
    (`init_mismatch`), and that the plan has at most one scratch arm (the reference of every comparison).

    Raises:
        ScratchdetError: naming each run, its init.json and its arm; or the scratch arms.
    """
    scratch = [a.name for a in study_arms(study.runs) if not a.pretrained]
    if len(scratch) > 1:
        raise ScratchdetError(
            f"{study.root / 'plan.json'} has {len(scratch)} scratch arms ({', '.join(scratch)}): a study compares its "
            "pre-trained arms with one scratch arm, the reference; report them as separate studies"
        )
    found = [reason for run in study.runs if (reason := init_mismatch(run)) is not None]
    if found:
        raise ScratchdetError(
            f"{len(found)} run(s) of {study.root} were not initialized as their arm, so the report would compare "
            "something else than it says; train them again as their arm (no override or hparams entry may set init "
            "or weights):\n  " + "\n  ".join(found)
        )


# ---------------------------------------------------------------------------------------------------- run queries


def unusable_reason(run: RunData | MeanRun | None) -> str | None:
    """Why a run (or a seed mean: each replicate's reason) cannot enter a comparison, or None when it can."""
    if run is None:
        return "no such run in the plan"
    if isinstance(run, MeanRun):
        return "; ".join(reason for r in run.members if (reason := unusable_reason(r)) is not None) or None
    if not run.started:
        return f"{run.name} has no records"
    if not run.finished:
        return f"{run.name} did not finish (last record at iter {run.last_iter})"
    last = run.last_eval
    if last is None:
        return f"{run.name} was never evaluated"
    if last.get("status", "ok") != "ok":
        return f"{run.name}'s last evaluation (iter {last.get('iter')}) had {last.get('status')}"
    if run.final() is None:
        return f"{run.name}'s last evaluation has no bbox AP"
    return None


def best_run(runs: Iterable[RunData], iou_type: str = "bbox") -> RunData | None:
    """The usable run with the highest final AP (ties: the shorter schedule), or None."""
    usable = [r for r in runs if unusable_reason(r) is None and r.final(iou_type) is not None]
    return max(usable, key=lambda r: (r.final(iou_type), -(r.schedule or 0.0)), default=None)


def samples_of(run: RunData) -> tuple[dict, dict]:
    """(own training, pre-training) images/instances/pixels; None where unknown, pre-training 0 for scratch."""
    seen, pre = run.seen or {}, run.pretrain_seen or {}
    own = {k: seen.get(k) if isinstance(seen.get(k), int) else None for k in SEEN_KEYS}
    if run.init == "scratch":
        return own, dict.fromkeys(SEEN_KEYS, 0)
    return own, {k: pre.get(k) if isinstance(pre.get(k), int) else None for k in SEEN_KEYS}


def size_images(runs: list[RunData], size_label: str) -> int | None:
    """Number of training images behind a size label (the plan's, else what a run logged), if any run knows it."""
    return next((r.train_images for r in runs if r.size_label == size_label and r.train_images), None)


def sizes(runs: list[RunData]) -> list[str]:
    """Size labels, smallest first; a label of unknown size (usually "all") goes last."""
    labels = {r.size_label for r in runs}
    return sorted(labels, key=lambda s: (size_images(runs, s) is None, size_images(runs, s) or 0, s))


def sort_runs(runs: list[RunData]) -> list[RunData]:
    """Table order: size (smallest first), hparams, arm (scratch first, then the pre-trained arms in plan order),
    schedule."""
    order = sizes(runs)
    arms = [a.name for a in study_arms(runs)]
    return sorted(
        runs,
        key=lambda r: (order.index(r.size_label), r.hparams, arms.index(r.arm), r.schedule or 0.0, r.name),
    )


def groups(runs: list[RunData]) -> dict[tuple[str, str], list[RunData]]:
    """Runs per (size label, hparams), in size order: one learning-curve figure each."""
    out: dict[tuple[str, str], list[RunData]] = {}
    for run in sort_runs(runs):
        out.setdefault((run.size_label, run.hparams), []).append(run)
    return out


def main_size(runs: list[RunData]) -> str:
    """The largest training set: where the schedule and sample comparisons of the paper are made."""
    return sizes(runs)[-1]


def smallest_sizes(runs: list[RunData]) -> list[str]:
    """The size(s) shown with training loss next to AP (Fig. 8): the smallest, or the two smallest of 4+ sizes."""
    ordered = sizes(runs)
    return ordered[:2] if len(ordered) > 3 else ordered[:1]


# ---------------------------------------------------------------------------------------------------- seeds


def cell_key(run) -> tuple:
    """What seed replicates share: (arm, size label, hparams, schedule)."""
    return (run.arm, run.size_label, run.hparams, run.schedule)


def cell_name(run: RunData) -> str:
    """A run's name without its seed: plan names replicates <arm>_<size>[_<hp>]_s<seed>_<N>x (study/plan.py), their
    mean reads <arm>_<size>[_<hp>]_<N>x, the name the run would have without a seed axis."""
    if run.seed is None:
        return run.name
    suffix = f"_s{run.seed}_"
    at = run.name.rfind(suffix)
    return run.name if at < 0 else run.name[:at] + "_" + run.name[at + len(suffix) :]


def _mean(values: list[float | None]) -> float | None:
    return None if not values or any(v is None for v in values) else sum(values) / len(values)


def _mean_curve(curves: list[list[tuple[int, float]]]) -> list[tuple[int, float]]:
    """The mean of several curves at the iterations all of them have."""
    if not curves:
        return []
    common = set.intersection(*({i for i, _ in curve} for curve in curves))
    values = [dict(curve) for curve in curves]
    return [(i, sum(v[i] for v in values) / len(values)) for i in sorted(common)]


@dataclass
class MeanRun:
    """The mean over the seed replicates of one (arm, size, hparams, schedule): what the findings, the verdict and
    Fig. 1's thick line compare (seeds are independent replicates: a mean per arm, never pairs of seeds across arms).

    Reads like a `RunData` for the queries the findings and figures make: `final` is the mean of the replicates'
    final metrics (None when any replicate has none), `curve` the mean at the iterations every replicate evaluated,
    `finished` needs every replicate finished; counts (samples seen, schedule, LR drops) are the first replicate's,
    the same for every seed of a cell. `members` are the replicates, by seed.
    """

    members: list[RunData]

    def __post_init__(self) -> None:
        self.members = sorted(self.members, key=lambda r: (r.seed is None, r.seed or 0))
        first = self.members[0]
        self.name, self.arm, self.init, self.schedule = cell_name(first), first.arm, first.init, first.schedule
        self.size_label, self.train_size, self.hparams = first.size_label, first.train_size, first.hparams
        self.overrides, self.path, self.max_iters = first.overrides, first.path, first.max_iters
        self.plan_train_images, self.seed = first.plan_train_images, None

    @property
    def seeds(self) -> list[int | None]:
        return [r.seed for r in self.members]

    @property
    def label(self) -> str:
        return schedule_label(self.schedule)

    @property
    def train_images(self) -> int | None:
        return self.members[0].train_images

    @property
    def finished(self) -> bool:
        return all(r.finished for r in self.members)

    @property
    def started(self) -> bool:
        return any(r.started for r in self.members)

    @property
    def status(self) -> str:
        states = {r.status for r in self.members}
        return states.pop() if len(states) == 1 else "unfinished"

    @property
    def last_iter(self) -> int | None:
        iters = [r.last_iter for r in self.members]
        return None if any(i is None for i in iters) else min(iters)

    @property
    def last_eval(self) -> dict | None:
        evals = [r.last_eval for r in self.members]
        if any(e is None for e in evals):
            return None
        bad = next((e for e in evals if e.get("status", "ok") != "ok"), None)
        if bad is not None:
            return bad
        return {"iter": min(e["iter"] for e in evals), "status": "ok", "images": evals[0].get("images")}

    @property
    def end(self) -> dict | None:
        return self.members[0].end

    def final(self, iou_type: str = "bbox", key: str = "AP") -> float | None:
        return _mean([r.final(iou_type, key) for r in self.members])

    def curve(self, iou_type: str = "bbox", key: str = "AP") -> list[tuple[int, float]]:
        return _mean_curve([r.curve(iou_type, key) for r in self.members])

    def loss_curve(self, key: str = "loss") -> list[tuple[int, float]]:
        return _mean_curve([r.loss_curve(key) for r in self.members])

    @property
    def lr_drops(self) -> list[int]:
        return self.members[0].lr_drops

    @property
    def seen(self) -> dict | None:
        return self.members[0].seen

    @property
    def pretrain_seen(self) -> dict | None:
        return self.members[0].pretrain_seen

    @property
    def init_record(self) -> dict | None:
        return self.members[0].init_record

    @property
    def init_path(self) -> Path | None:
        return self.members[0].init_path

    @property
    def device_hours(self) -> float | None:
        """The replicates' device-hours together (each as if trained alone)."""
        hours = [r.device_hours for r in self.members]
        return None if any(h is None for h in hours) else sum(hours)


def replicates(run) -> list[RunData]:
    """The runs behind a run or a seed mean."""
    return list(getattr(run, "members", [run]))


def seed_means(runs: list) -> list:
    """`runs` with the replicates of each (arm, size, hparams, schedule) replaced by their `MeanRun`, in the order
    of each cell's first replicate; runs without a seed (no seed axis) are returned as they are, so a study without
    seeds reads exactly as before."""
    cells: dict[tuple, list[RunData]] = {}
    out: list = []
    for run in runs:
        if getattr(run, "seed", None) is None:
            out.append(run)
            continue
        key = cell_key(run)
        if key not in cells:
            cells[key] = []
            out.append(key)
        cells[key].append(run)
    return [MeanRun(cells[item]) if isinstance(item, tuple) else item for item in out]


def has_seeds(runs: list) -> bool:
    return any(getattr(r, "seed", None) is not None for r in runs)


# A seed spread measured elsewhere (e.g. the demo study run with 3 seeds, docs/RESULTS.md), for a study of one seed:
# {"sd": AP points, "source": "where it was measured"} in the study folder.
SEED_SPREAD_FILE = "seed_spread.json"


@dataclass(frozen=True)
class SeedSpread:
    """A measured seed-to-seed spread: the SD of one run's final bbox AP over seeds (AP points), and where."""

    sd: float
    source: str


def pooled_seed_sd(runs: list) -> tuple[float, int] | None:
    """(pooled SD of the final bbox AP over seeds, cells pooled): sqrt(sum (n_c - 1) s_c^2 / sum (n_c - 1)) over
    the (arm, size, hparams, schedule) cells with two or more finished replicates that have a final bbox AP; None
    when there is none."""
    num, dof, cells = 0.0, 0, 0
    for mean in seed_means(runs):
        if not isinstance(mean, MeanRun):
            continue
        values = [r.final("bbox") for r in mean.members if r.finished and r.final("bbox") is not None]
        if len(values) < 2:
            continue
        m = sum(values) / len(values)
        num += sum((v - m) ** 2 for v in values)
        dof += len(values) - 1
        cells += 1
    return (math.sqrt(num / dof), cells) if dof else None


def seed_spread(study: Study) -> SeedSpread | None:
    """The seed spread the verdict quotes: the study's own (pooled over its seeded cells, `pooled_seed_sd`), else
    the one in STUDY/seed_spread.json (a positive "sd" and a "source"), else None (never a guess)."""
    own = pooled_seed_sd(study.runs)
    if own is not None:
        return SeedSpread(own[0], f"this study ({own[1]} arm-schedule cells with seeds)")
    record = _read_json(study.root / SEED_SPREAD_FILE)
    sd = metric_value((record or {}).get("sd"))
    if sd is None or sd <= 0:
        return None
    return SeedSpread(sd, str(record.get("source") or SEED_SPREAD_FILE))
