"""Training and inference throughput of scratchdet's loop vs a plain torchvision loop, same model, same data.

    .venv/bin/python benchmarks/train_throughput.py --size 320 --iters 8 --out bench.json
    .venv/bin/python benchmarks/train_throughput.py --config configs/mini/mask_rcnn_R18_FPN_GN_scratch.yaml \
        --size 96 --max-size 128 --workers 0 --iters 60 --warmup 5 --repeats 3 --options --out mini.json

Each measurement runs in its own process (so peak memory is that measurement's alone), in alternation
ours / plain / ours / plain ... for --repeats rounds (so slow drifts of a shared machine hit both alike):

- ours:    `scratchdet.engine.trainer.train` (the real loop: stream sampler, loss checks, logging, checkpoint at the
           end) on the R50-FPN-GN Mask R-CNN paper config at reduced size; img/s from the time per iteration it
           logs in metrics.jsonl once per --window iterations, warm-up windows excluded, median window.
- plain:   torchvision's reference detection loop (references/detection/engine.py: train_one_epoch): a DataLoader,
           `sum(model(images, targets).values())`, `.item()` of the losses every iteration, zero_grad / backward /
           step; the same model built by scratchdet (same init), the same dataset objects (same decoding, resizing,
           flips), loader workers, and the same batches in the same order (scratchdet's sampler), since an
           iteration's cost depends on its images.
- plain_stock: the plain loop on the same network with torchvision's stock RoI poolers instead of scratchdet's
           (modeling/roi_align.py: the same forward, a faster CPU backward): what torchvision's reference trains.
- loader:  the training DataLoader alone (decode, resize, flip, collate), no model: the input pipeline's ceiling.
- infer:   evaluation-mode forward passes over validation images, one image per call, as `scratchdet eval` does,
           of the scratch-initialized (untrained) model: a trained one keeps other numbers of detections.
- pad:     (no timing) the fraction of padded pixels in the batches the model sees, with and without
           data.aspect_ratio_grouping.
- profile: torch.profiler over three training iterations of the model: self time per operator (on CUDA, per
           kernel), the top 25, sync points, and on CUDA the GPU-busy share of the profiled wall time.

Peak memory: the process's peak resident set (ru_maxrss) on CPU; torch.cuda.max_memory_allocated on a GPU.
Prints one markdown row per measurement and writes every number to --out.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAPER_CONFIG = ROOT / "configs" / "paper" / "mask_rcnn_R50_FPN_GN_scratch_2x.yaml"


def _overrides(args, data: Path, out: Path, extra: list[str]) -> list[str]:
    size = args.size
    # The paper config names COCO's paths explicitly; point all four at the synthetic folder.
    paths = [
        f"data.{split}.{key}={data / name}"
        for split in ("train", "val")
        for key, name in (("json", f"instances_{split}.json"), ("images", split))
    ]
    return [
        *paths,
        f"output={out}",
        f"data.min_size_train=[{size}]",
        f"data.max_size_train={args.max_size or int(size * 1.667)}",
        f"data.min_size_test={size}",
        f"data.max_size_test={args.max_size or int(size * 1.667)}",
        f"train.batch_size={args.batch}",
        f"data.num_workers={args.workers}",
        f"train.device={args.device}",
        f"train.log_period={args.window}",
        f"train.max_iters={args.warmup + args.iters}",
        "eval.max_images=1",
        *extra,
    ]


def _peak_memory_mb(device: str) -> float:
    import torch

    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


# Runs that only read the config (no training) never write their output folder.
UNUSED_OUTPUT = Path(tempfile.gettempdir()) / "scratchdet-benchmark-unused"


def _cfg(args, data: Path, extra: list[str], out: Path = UNUSED_OUTPUT):
    from scratchdet.config import load_config

    return load_config(args.config, _overrides(args, data, out, extra))


def measure_ours(args, data: Path, extra: list[str]) -> dict:
    from scratchdet.engine.metrics import read_metrics
    from scratchdet.engine.trainer import train

    with tempfile.TemporaryDirectory() as tmp:
        train(_cfg(args, data, extra, Path(tmp) / "run"))
        # One record per --window iterations, each the window's mean time per iteration; warm-up windows dropped.
        times = [r["time_per_iter"] for r in read_metrics(Path(tmp) / "run", "train")][args.warmup // args.window :]
    return {
        "s_per_iter": statistics.median(times),
        "img_s": args.batch / statistics.median(times),
        "peak_mb": _peak_memory_mb(args.device),
    }


def _stock_poolers_(model) -> None:
    """Swaps scratchdet's RoI poolers (roi_align.py: the same forward, a sparse CPU backward) for torchvision's own,
    in place: the model a plain torchvision user builds, with the same weights."""
    from torchvision.ops import MultiScaleRoIAlign

    heads = model.roi_heads
    for name in ("box_roi_pool", "mask_roi_pool", "keypoint_roi_pool"):
        pool = getattr(heads, name, None)
        if pool is not None:
            setattr(heads, name, MultiScaleRoIAlign(pool.featmap_names, pool.output_size, pool.sampling_ratio))


def _plain_setup(args, data: Path, extra: list[str], stock: bool = False):
    """The plain loop's pieces: config, device, the scratchdet-built model with the trainer's init, SGD, and a
    DataLoader over scratchdet's batches (same images, same order, same flips: an iteration's cost depends on its
    images, so only the loop may differ). Returns (cfg, device, model, optimizer, loader)."""
    import torch
    from torch.utils.data import DataLoader

    from scratchdet.data.build import build_train_dataset, collate
    from scratchdet.data.samplers import TrainingBatchSampler, aspect_groups
    from scratchdet.modeling.detector import build_detector
    from scratchdet.weights.initialization import initialize

    cfg = _cfg(args, data, extra)
    torch.manual_seed(cfg.seed)
    device = torch.device(args.device)
    dataset = build_train_dataset(cfg)
    model = build_detector(cfg, dataset.num_classes)
    initialize(model, cfg)  # the trainer's scratch init (MSRA fill)
    if stock:
        _stock_poolers_(model)
    model.to(device).train()
    if cfg.train.channels_last:
        model.to(memory_format=torch.channels_last)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=0.0025, momentum=0.9, weight_decay=1e-4)
    # The batches `ours` trains on: aspect-ratio groups too when the config asks (the paper configs do), since
    # grouping changes how much each batch is padded.
    groups = aspect_groups(dataset.image_sizes()) if cfg.data.aspect_ratio_grouping else None
    batches = TrainingBatchSampler(len(dataset), cfg.seed, args.batch, group_ids=groups)
    loader = DataLoader(
        dataset, batch_sampler=batches, num_workers=args.workers, collate_fn=collate, pin_memory=device.type == "cuda"
    )
    return cfg, device, model, optimizer, loader


def _plain_autocast(cfg, device):
    """train.amp for the plain loop, as torchvision's reference does it (--amp: autocast, and a GradScaler for
    fp16; bf16 needs no scaler)."""
    import torch

    dtype = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[cfg.train.amp]
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.train.amp == "fp16")
    return lambda: torch.autocast(device.type, dtype=dtype, enabled=dtype is not None), scaler


def measure_plain(args, data: Path, extra: list[str], stock: bool = False) -> dict:
    """The reference loop, timed per --window iterations: on a GPU the device is synchronized only at window
    boundaries (the reference itself never synchronizes; its per-iteration `.item()` waits for the forward pass
    only), so each window's time includes its last kernels and nothing of the next window's."""
    import torch

    from scratchdet.engine.trainer import MODEL_TARGET_KEYS

    cfg, device, model, optimizer, loader = _plain_setup(args, data, extra, stock)
    autocast, scaler = _plain_autocast(cfg, device)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    windows = []
    stream = iter(loader)
    for _ in range((args.warmup + args.iters) // args.window):
        sync()
        tick = time.perf_counter()
        for _ in range(args.window):
            images, targets = next(stream)
            images = [img.to(device) for img in images]
            targets = [{k: t[k].to(device) for k in MODEL_TARGET_KEYS if k in t} for t in targets]
            with autocast():
                loss_dict = model(images, targets)
            losses = sum(loss_dict.values())
            loss_value = losses.item()  # the reference logs (and checks) the loss every iteration
            if not math.isfinite(loss_value):
                raise SystemExit(f"loss is {loss_value}")
            _ = {k: v.item() for k, v in loss_dict.items()}  # MetricLogger.update
            optimizer.zero_grad()
            scaler.scale(losses).backward()
            scaler.step(optimizer)
            scaler.update()
        sync()
        windows.append((time.perf_counter() - tick) / args.window)
    times = windows[args.warmup // args.window :]
    return {
        "s_per_iter": statistics.median(times),
        "img_s": args.batch / statistics.median(times),
        "peak_mb": _peak_memory_mb(args.device),
    }


def measure_plain_stock(args, data: Path, extra: list[str]) -> dict:
    """The plain loop on the same network with torchvision's stock RoI poolers (what torchvision's reference trains)."""
    return measure_plain(args, data, extra, stock=True)


def measure_loader(args, data: Path, extra: list[str]) -> dict:
    from scratchdet.data.build import build_train_dataset, build_train_loader

    cfg = _cfg(args, data, extra)
    dataset = build_train_dataset(cfg)
    loader = iter(build_train_loader(dataset, cfg))
    n_batches = 4 * (args.warmup + args.iters)
    for _ in range(args.warmup):
        next(loader)
    tick = time.perf_counter()
    for _ in range(n_batches):
        next(loader)
    elapsed = time.perf_counter() - tick
    return {"img_s": n_batches * args.batch / elapsed}


def measure_infer(args, data: Path, extra: list[str]) -> dict:
    import torch

    from scratchdet.data.build import build_val_dataset
    from scratchdet.evaluation.coco import run_inference
    from scratchdet.modeling.detector import build_detector
    from scratchdet.weights.initialization import initialize

    cfg = _cfg(args, data, extra)
    torch.manual_seed(cfg.seed)
    val = build_val_dataset(cfg)
    model = build_detector(cfg, val.num_classes)
    initialize(model, cfg)  # the trainer's scratch init (MSRA fill)
    model.to(args.device)
    n = min(len(val), args.iters * 2)
    run_inference(model, val, torch.device(args.device), max_images=1)  # warm-up
    tick = time.perf_counter()
    run_inference(model, val, torch.device(args.device), max_images=n)
    return {"img_s": n / (time.perf_counter() - tick), "peak_mb": _peak_memory_mb(args.device)}


def measure_padding(args, data: Path, extra: list[str]) -> dict:
    """Padded / real pixels of the batches the model pads (to the batch's largest H and W, rounded up to 32)."""
    from scratchdet.data.build import build_train_dataset, build_train_loader

    out = {}
    for grouping in ("false", "true"):
        cfg = _cfg(args, data, [*extra, f"data.aspect_ratio_grouping={grouping}", "data.num_workers=0"])
        loader = iter(build_train_loader(build_train_dataset(cfg), cfg))
        real = padded = 0
        for _ in range(64):
            images, _ = next(loader)
            h = math.ceil(max(i.shape[-2] for i in images) / 32) * 32
            w = math.ceil(max(i.shape[-1] for i in images) / 32) * 32
            real += sum(i.shape[-2] * i.shape[-1] for i in images)
            padded += len(images) * h * w
        out[f"grouping_{grouping}"] = padded / real - 1
    return out


def measure_profile(args, data: Path, extra: list[str]) -> dict:
    """Where a training iteration's time goes: torch.profiler over 3 iterations after 2 warm-up (the plain loop's
    step, under train.amp as given). Operators by self time on the device that computes (the GPU's kernels on
    CUDA), the host's own top operators, the host-device sync points per iteration, and on CUDA the fraction of the
    wall time the GPU was busy (1 - that fraction: the host gaps)."""
    import torch
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    from scratchdet.engine.trainer import MODEL_TARGET_KEYS

    cfg, device, model, optimizer, batches = _plain_setup(args, data, extra)
    autocast, scaler = _plain_autocast(cfg, device)
    loader = iter(batches)

    def step():
        images, targets = next(loader)
        images = [i.to(device) for i in images]
        targets = [{k: t[k].to(device) for k in MODEL_TARGET_KEYS if k in t} for t in targets]
        with autocast():
            loss = sum(model(images, targets).values())
        optimizer.zero_grad()
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    for _ in range(2):
        step()
    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        # Timed inside the block: the profiler's start and its trace processing at the end are not the step's.
        # The profiler still slows the host (it records every launch): this wall time is an upper bound.
        if cuda:
            torch.cuda.synchronize()
        tick = time.perf_counter()
        for _ in range(3):
            step()
        if cuda:
            torch.cuda.synchronize()
        wall_ms = (time.perf_counter() - tick) * 1000 / 3
    averages = prof.key_averages()

    def self_time(event, on_device: bool) -> float:  # microseconds; torch renamed "cuda" to "device" in 2.4
        if not on_device:
            return event.self_cpu_time_total
        return getattr(event, "self_device_time_total", None) or getattr(event, "self_cuda_time_total", 0)

    def top(events, on_device: bool, n: int) -> tuple[float, list[dict]]:
        events = sorted(events, key=lambda e: self_time(e, on_device), reverse=True)
        total = sum(self_time(e, on_device) for e in events)
        rows = [
            {
                "op": e.key,
                "share": self_time(e, on_device) / total if total else 0.0,
                "ms_per_iter": self_time(e, on_device) / 3 / 1000,
                "calls_per_iter": e.count / 3,
            }
            for e in events[:n]
        ]
        return total / 3 / 1000, rows

    host_events = [e for e in averages if e.device_type == DeviceType.CPU]
    syncs = ("aten::item", "aten::_local_scalar_dense", "aten::nonzero", "cudaStreamSynchronize", "cudaMemcpyAsync")
    if not cuda:
        total_ms, rows = top(host_events, False, 25)
        return {"wall_ms_per_iter": wall_ms, "total_ms_per_iter": total_ms, "top": rows}
    # On CUDA, kernels (and copies) are device events; an operator's own device time is that of the kernels it
    # launched, so summing both kinds would count each kernel twice.
    kernel_ms, kernels = top([e for e in averages if e.device_type != DeviceType.CPU], True, 25)
    _, op_rows = top(host_events, True, 20)
    host_ms, host_rows = top(host_events, False, 15)
    return {
        "wall_ms_per_iter": wall_ms,
        "total_ms_per_iter": kernel_ms,
        "gpu_busy_fraction": kernel_ms / wall_ms,  # one stream: kernel times do not overlap
        "top": kernels,
        "ops_by_gpu_time": op_rows,
        "host_ms_per_iter": host_ms,
        "host_top": host_rows,
        "sync_points_per_iter": {e.key: e.count / 3 for e in averages if e.key in syncs},
    }


# One round: each training measurement once, in this order.
ROUND = ("ours", "plain", "plain_stock")

MODES = {
    "ours": measure_ours,
    "plain": measure_plain,
    "plain_stock": measure_plain_stock,
    "loader": measure_loader,
    "infer": measure_infer,
    "pad": measure_padding,
    "profile": measure_profile,
}


def _child(args) -> None:
    import torch

    torch.set_num_threads(args.threads)
    result = MODES[args.mode](args, Path(args.data), args.extra)
    print("RESULT " + json.dumps(result))


def _run_child(args, mode: str, extra: list[str]) -> dict:
    cmd = [sys.executable, __file__, "--child", mode, "--data", args.data, *_common(args)]
    cmd += [f"--extra={e}" for e in extra]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise SystemExit(f"{mode} {extra} failed:\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT ") :])


def _common(args) -> list[str]:
    return [
        f"--size={args.size}",
        f"--batch={args.batch}",
        f"--iters={args.iters}",
        f"--warmup={args.warmup}",
        f"--window={args.window}",
        f"--workers={args.workers}",
        f"--device={args.device}",
        f"--threads={args.threads}",
        f"--config={args.config}",
        f"--max-size={args.max_size}",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default=str(PAPER_CONFIG), help="the detector config (default: R50-FPN-GN paper)")
    parser.add_argument("--size", type=int, default=320, help="short side of train and test images")
    parser.add_argument("--max-size", type=int, default=0, help="long side limit (default: 1.667 x --size)")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--iters", type=int, default=8, help="timed iterations per measurement")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument(
        "--window",
        type=int,
        default=1,
        help="iterations per timed window (ours logs once per window, as a run would; a log reads the losses "
        "from the device); the median window is reported. --warmup and --iters must be multiples of it",
    )
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2, help="alternating ours/plain rounds")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--options",
        nargs="*",
        default=["train.amp=bf16", "train.channels_last=true", "data.aspect_ratio_grouping=true"],
        help="each is measured as one more 'ours' row; 'a=1 b=2' sets both",
    )
    parser.add_argument("--data", help="a `scratchdet data synth` folder (default: generated in a temp folder)")
    parser.add_argument("--out", default="train_throughput.json")
    parser.add_argument("--child", choices=sorted(MODES), dest="mode", help=argparse.SUPPRESS)
    parser.add_argument("--extra", action="append", default=[], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.warmup % args.window or args.iters % args.window:
        parser.error("--warmup and --iters must be multiples of --window")
    if args.mode:
        return _child(args)

    tmp = tempfile.TemporaryDirectory()
    if args.data is None:
        from scratchdet.data.synthetic import write_synthetic_coco

        args.data = str(Path(tmp.name) / "shapes")
        write_synthetic_coco(
            args.data, train_images=64, val_images=32, seed=0, min_side=args.size, max_side=int(args.size * 1.5)
        )
    results: dict = {"args": {k: v for k, v in vars(args).items() if k not in ("mode", "extra")}, "rounds": []}
    for _ in range(args.repeats):
        results["rounds"].append({who: _run_child(args, who, []) for who in ROUND})
    ours = statistics.median(r["ours"]["img_s"] for r in results["rounds"])
    plain = statistics.median(r["plain"]["img_s"] for r in results["rounds"])
    stock = statistics.median(r["plain_stock"]["img_s"] for r in results["rounds"])
    results["ratio"] = ours / plain
    results["ratio_stock"] = ours / stock
    results["options"] = {o: _run_child(args, "ours", o.split()) for o in args.options}  # "a=1 b=2": both
    results["loader"] = _run_child(args, "loader", [])
    results["infer"] = _run_child(args, "infer", [])
    results["padding"] = _run_child(args, "pad", [])
    results["profile"] = _run_child(args, "profile", [])
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")

    print("| measurement | img/s | peak MB |\n|---|---|---|")
    for i, r in enumerate(results["rounds"]):
        for who in ROUND:
            print(f"| train, {who}, round {i + 1} | {r[who]['img_s']:.3f} | {r[who]['peak_mb']:.0f} |")
    print(f"| train, ours / plain (median of rounds) | {results['ratio']:.3f} | |")
    print(f"| train, ours / plain with torchvision's poolers (median of rounds) | {results['ratio_stock']:.3f} | |")
    for option, r in results["options"].items():
        print(f"| train, ours + {option} | {r['img_s']:.3f} | {r['peak_mb']:.0f} |")
    print(f"| data loader alone | {results['loader']['img_s']:.2f} | |")
    print(f"| inference | {results['infer']['img_s']:.3f} | {results['infer']['peak_mb']:.0f} |")
    p = results["padding"]
    print(
        f"padded pixels / real pixels: {p['grouping_false']:.3f} without grouping, "
        f"{p['grouping_true']:.3f} with data.aspect_ratio_grouping"
    )
    print("profile (self time per operator, share of the iteration's compute):")
    for e in results["profile"]["top"]:
        print(f"  {e['op']:<45} {100 * e['share']:5.1f}%  {e['ms_per_iter']:8.1f} ms/iter")
    return None


if __name__ == "__main__":
    main()
