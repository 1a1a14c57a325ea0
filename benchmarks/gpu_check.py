"""The GPU measurements of one device session (benchmarks/gpu_check.sh runs this after the GPU-marked tests).

    python benchmarks/gpu_check.py --coco ../shared/data/coco_tiny --out OUT_DIR
    python benchmarks/gpu_check.py --coco ../shared/data/coco_tiny --out /tmp/dry --dry-run   # CPU, tiny sizes

R50-FPN-GN Mask R-CNN from scratch (configs/paper/mask_rcnn_R50_FPN_GN_scratch_2x.yaml) at the paper's 800x1333, on
the real COCO images of `--coco` (a coco_tiny-style folder: annotations/instances_{train,val}2017.json with
train2017/ and val2017/), JPEG decoding included:

- train: for each batch per GPU (--batches) and precision (--amps: none = fp32 with PyTorch's defaults, i.e. TF32
  convolutions and fp32 matmuls; bf16 = autocast), scratchdet's loop ("ours", `engine.trainer.train`) and the
  plain torchvision reference loop on the same model and batches ("plain", train_throughput.py), one of each per
  round for --rounds rounds in this one process, the first loop alternating between rounds; each measurement is
  the median of its windows of --window iterations after --warmup. Images/s and peak GPU memory
  (max_memory_allocated, reset before each);
- step: ours at the largest batch with model.step=torchvision and model.step=fast (modeling/fast_step.py), in each
  of --step-amps (default bf16 and fp16 with its grad scaler: bf16 cost AP in the CUDA learning test, fp16 did not),
  alternating per round; then torch.profiler over 3 bf16 iterations of the fast step (as "profile" below);
- ours at the largest batch with each of --options (default: bf16 with train.channels_last);
- inference: evaluation-mode forward passes, one image per call, as `scratchdet eval` runs;
- loader: the training DataLoader alone (JPEG decode, resize, flip, collate) with --workers workers, against what
  the model consumes;
- profile: torch.profiler over 3 bf16 iterations of the plain step at the largest batch: the top GPU kernels, the
  host's top operators, sync points per iteration, and the GPU-busy fraction of the wall time.

Every measurement is appended to OUT/gpu_results.jsonl as it finishes (a run cut short keeps what it measured);
OUT/gpu_rows.md gets the markdown rows at the end.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "benchmarks"), str(ROOT)]  # scratchdet from this checkout, installed or not
import train_throughput as tt  # noqa: E402  (the measurements themselves, shared with the CPU benchmark)

PARTS = ["train", "step", "options", "infer", "loader", "profile"]


def coco_view(coco: Path, into: Path) -> Path:
    """A folder in `scratchdet data synth`'s layout (instances_{train,val}.json, train/, val/) of links into a
    coco_tiny-style folder, so train_throughput's path overrides apply unchanged."""
    into.mkdir(parents=True, exist_ok=True)
    for split in ("train", "val"):
        for link, target in (
            (into / f"instances_{split}.json", coco / "annotations" / f"instances_{split}2017.json"),
            (into / split, coco / f"{split}2017"),
        ):
            if not target.exists():
                raise SystemExit(f"{target} is missing: --coco must hold annotations/ and {split}2017/")
            if not link.exists():
                link.symlink_to(target.resolve())
    return into


class Recorder:
    """Appends each measurement to OUT/gpu_results.jsonl and prints it."""

    def __init__(self, out: Path):
        self.path = out / "gpu_results.jsonl"
        self.rows: list[dict] = []

    def add(self, row: dict) -> dict:
        self.rows.append(row)
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        print(json.dumps(row), flush=True)
        return row


def _fresh(device: str) -> None:
    import torch

    gc.collect()
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def _args(base: argparse.Namespace, **changes) -> argparse.Namespace:
    return argparse.Namespace(**{**vars(base), **changes})


def measure(rec: Recorder, base, data: Path, mode: str, extra: list[str], role: str = "", **changes) -> dict:
    """One measurement, recorded with its `role` ("train", "option", or the mode's name)."""
    args = _args(base, **changes)
    _fresh(args.device)
    tick = time.perf_counter()
    try:
        result = tt.MODES[mode](args, data, extra)
    except Exception as error:  # a failed measurement is a result too; the others still run
        result = {"error": f"{type(error).__name__}: {error}"}
    row = {"mode": mode, "role": role or mode, "batch": args.batch, "workers": args.workers, "extra": extra}
    row.update(wall_s=time.perf_counter() - tick, **result)
    return rec.add(row)


def environment() -> dict:
    import torch
    import torchvision

    env = {"torch": torch.__version__, "torchvision": torchvision.__version__, "cuda": torch.version.cuda}
    if torch.cuda.is_available():
        env.update(
            gpu=torch.cuda.get_device_name(0),
            cudnn=torch.backends.cudnn.version(),
            cudnn_allow_tf32=torch.backends.cudnn.allow_tf32,
            matmul_allow_tf32=torch.backends.cuda.matmul.allow_tf32,
            cudnn_benchmark=torch.backends.cudnn.benchmark,
        )
    return env


def _img_s(rows: list[dict]) -> float | None:
    values = [r["img_s"] for r in rows if "img_s" in r]
    return statistics.median(values) if values else None


def markdown(rec: Recorder, base) -> str:
    lines = ["| measurement | img/s | peak GiB |", "| --- | --- | --- |"]
    train = [r for r in rec.rows if r["role"] == "train"]
    for batch in base.batches:
        for amp in base.amps:
            extra = [f"train.amp={amp}"]
            of = {
                who: [r for r in train if r["batch"] == batch and r["extra"] == extra and r["mode"] == who]
                for who in ("ours", "plain")
            }
            for who, rows in of.items():
                if not rows:
                    continue
                ips = _img_s(rows)
                peak = max((r.get("peak_mb", 0) for r in rows), default=0) / 1024
                shown = f"{ips:.2f}" if ips else "failed: " + "; ".join(r.get("error", "") for r in rows)
                lines.append(
                    f"| train {who}, batch {batch}/GPU, {amp} (median of {len(rows)}) | {shown} | {peak:.1f} |"
                )
            ours, plain = _img_s(of["ours"]), _img_s(of["plain"])
            if ours and plain:
                lines.append(f"| train ours / plain, batch {batch}/GPU, {amp} | {ours / plain:.3f} | |")
    steps = [r for r in rec.rows if r["role"] == "step"]
    for amp in sorted({e.split("=")[1] for r in steps for e in r["extra"] if e.startswith("train.amp=")}):
        ips = {}
        for step in ("torchvision", "fast"):
            rows = [r for r in steps if f"train.amp={amp}" in r["extra"] and f"model.step={step}" in r["extra"]]
            ips[step] = _img_s(rows)
            peak = max((r.get("peak_mb", 0) for r in rows), default=0) / 1024
            shown = f"{ips[step]:.2f}" if ips[step] else "failed: " + "; ".join(r.get("error", "") for r in rows)
            lines.append(f"| train ours, model.step={step}, batch {rows[0]['batch'] if rows else '?'}/GPU, {amp} "
                         f"(median of {len(rows)}) | {shown} | {peak:.1f} |")  # fmt: skip
        if ips["torchvision"] and ips["fast"]:
            lines.append(f"| model.step fast / torchvision, {amp} | {ips['fast'] / ips['torchvision']:.3f} | |")
    for r in rec.rows:
        option = r["role"] == "option"
        if option or r["mode"] in ("infer", "loader"):
            name = f"{'train ours' if option else r['mode']}, batch {r['batch']} {' '.join(r['extra'])}"
            if r["mode"] == "loader":
                name += f", {r['workers']} workers"
            shown = f"{r['img_s']:.2f}" if "img_s" in r else f"failed: {r.get('error')}"
            lines.append(f"| {name} | {shown} | {r.get('peak_mb', 0) / 1024:.1f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--coco", required=True, help="a coco_tiny-style folder of real images and annotations")
    parser.add_argument("--out", required=True)
    parser.add_argument("--config", default=str(tt.PAPER_CONFIG))
    parser.add_argument("--size", type=int, default=800)
    parser.add_argument("--max-size", type=int, default=1333)
    parser.add_argument("--batches", type=int, nargs="+", default=[2, 8])
    parser.add_argument("--amps", nargs="+", default=["none", "bf16"])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument(
        "--options",
        nargs="*",
        default=["train.amp=bf16 train.channels_last=true"],
        help="each one more 'ours' row at the largest batch; 'a=1 b=2' sets both",
    )
    parser.add_argument("--step-amps", nargs="+", default=["bf16", "fp16"], help="train.amp values of the step part")
    parser.add_argument("--warmup", type=int, default=4)
    parser.add_argument("--iters", type=int, default=8)
    parser.add_argument("--window", type=int, default=4)
    parser.add_argument("--workers", type=int, default=8, help="loader workers while training")
    parser.add_argument("--loader-workers", type=int, default=0, help="the loader-alone row's (default: --workers)")
    parser.add_argument("--only", nargs="*", default=[], choices=PARTS, help="run only these parts (default: all)")
    parser.add_argument("--dry-run", action="store_true", help="CPU, 160 px, batch 2, 1 round: checks the script")
    base = parser.parse_args()
    if base.warmup % base.window or base.iters % base.window:
        parser.error("--warmup and --iters must be multiples of --window")
    base.device, base.threads = "cuda", 0
    if base.dry_run:
        base.device, base.size, base.max_size, base.batches, base.amps = "cpu", 160, 256, [2], ["none", "bf16"]
        base.rounds, base.warmup, base.iters, base.window, base.workers = 1, 2, 2, 2, 2
    if not base.dry_run:
        import torch

        if not torch.cuda.is_available():
            raise SystemExit("no CUDA device is visible: nothing to measure (--dry-run checks the script on CPU)")
    out = Path(base.out)
    out.mkdir(parents=True, exist_ok=True)
    data = coco_view(Path(base.coco), Path(tempfile.mkdtemp()) / "coco_view")
    rec = Recorder(out)
    rows = out / "gpu_rows.md"  # rewritten after each step, so a run cut short still has its table
    rec.add(
        {
            "mode": "environment",
            "role": "environment",
            "batch": 0,
            "extra": [],
            **environment(),
            "args": {k: str(v) for k, v in vars(base).items()},
        }
    )
    parts = set(base.only or PARTS)
    largest = max(base.batches)
    if "train" in parts:
        for batch in base.batches:
            for amp in base.amps:
                for round_ in range(base.rounds):
                    # Alternate which loop goes first: the first measurement of a new batch/precision pays for
                    # kernels loaded and shapes met for the first time.
                    order = ("ours", "plain") if round_ % 2 == 0 else ("plain", "ours")
                    for who in order:
                        measure(rec, base, data, who, [f"train.amp={amp}"], "train", batch=batch)
                    rows.write_text(markdown(rec, base))
    if "step" in parts:
        for amp in base.step_amps:
            for round_ in range(base.rounds):
                order = ("torchvision", "fast") if round_ % 2 == 0 else ("fast", "torchvision")
                for step in order:
                    measure(rec, base, data, "ours", [f"train.amp={amp}", f"model.step={step}"], "step", batch=largest)
                rows.write_text(markdown(rec, base))
        measure(rec, base, data, "profile", ["train.amp=bf16", "model.step=fast"], "profile fast", batch=largest)
    if "options" in parts:
        for option in base.options:
            measure(rec, base, data, "ours", option.split(), "option", batch=largest)
            rows.write_text(markdown(rec, base))
    if "infer" in parts:
        measure(rec, base, data, "infer", [], batch=1)
    if "loader" in parts:
        measure(rec, base, data, "loader", [], batch=largest, workers=base.loader_workers or base.workers)
    if "profile" in parts:
        measure(rec, base, data, "profile", ["train.amp=bf16"], batch=largest)
    rows.write_text(markdown(rec, base))
    print(rows.read_text())
    failed = [r for r in rec.rows if "error" in r]
    if failed:
        raise SystemExit(f"{len(failed)} measurement(s) failed: see the 'error' rows of {rec.path}")


if __name__ == "__main__":
    main()
