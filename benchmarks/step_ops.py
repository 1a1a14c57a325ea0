"""Counts the aten ops of one training iteration on CPU, and those that would make a CUDA host wait.

    PYTHONPATH=. .venv/bin/python benchmarks/step_ops.py --config configs/mini/mask_rcnn_R18_FPN_GN_scratch.yaml \
        --batches 2 8 --size 128 --steps torchvision fast
    PYTHONPATH=. .venv/bin/python benchmarks/step_ops.py --batches 2 8 --size 256 --amps none bf16
    PYTHONPATH=. .venv/bin/python benchmarks/step_ops.py --config configs/mini/mask_rcnn_R18_FPN_GN_scratch.yaml \
        --batches 2 --size 128 --classes 6 --steps torchvision fast --time 40   # seconds per iteration, A/B
    ... --steps torchvision fast --profile 5 --threads 1   # where the extra time goes (torch.profiler, self CPU)

One iteration = the model's training forward on random images with random boxes and masks, the loss sum, backward
and an SGD step, run under a `TorchDispatchMode` that sees every op the dispatcher runs (forward and backward: CPU
autograd runs on the calling thread). No GPU is needed: the ops that make a CUDA host wait are the same ops on CPU.

Would-sync ops (the CUDA implementation copies a device value to the host before it can return):
- data-dependent output sizes: `nonzero` (also `torch.where(cond)`), boolean-mask `index` / `index_put`,
  `masked_select`, `unique*`, `repeat_interleave` without `output_size`, `torchvision::nms` (its CUDA kernel
  reduces the suppression mask on the host), `bincount`;
- a value read by Python: `_local_scalar_dense` (`.item()`, `bool(tensor)`, `int(tensor)`), `equal`, `is_nonzero`.

Casts: `_to_copy` ops from one floating dtype to another, split into autocast's casts of the weights, their
gradients' casts back to fp32 in the backward pass, and the rest (activations). CPU autocast runs GroupNorm in the
low-precision dtype (it is on CUDA autocast's fp32 list, not CPU's), so casts around GroupNorm appear only on a GPU.

Prints one markdown table row per (config, batch, precision, model.step) and, with --json, writes the counts.
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

ROOT = Path(__file__).resolve().parents[1]
PAPER_CONFIG = ROOT / "configs" / "paper" / "mask_rcnn_R50_FPN_GN_scratch_2x.yaml"
MINI_CONFIG = ROOT / "configs" / "mini" / "mask_rcnn_R18_FPN_GN_scratch.yaml"

# Ops whose CUDA kernels make the host wait, whatever their arguments (see the module docstring).
ALWAYS_SYNC = {
    "aten.nonzero",
    "aten.argwhere",
    "aten.masked_select",
    "aten._local_scalar_dense",
    "aten.is_nonzero",
    "aten.equal",
    "aten.unique",
    "aten._unique",
    "aten._unique2",
    "aten.unique_dim",
    "aten.unique_consecutive",
    "aten.bincount",
    "torchvision.nms",
}


def _has_bool_index(indices) -> bool:
    return any(isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8) for i in indices or ())


def would_sync(name: str, args, kwargs) -> bool:
    """True when the op `name` ('namespace.op', overload stripped) with these arguments would block a CUDA host.

    Raises nothing; unknown ops count as not syncing.
    """
    if name in ALWAYS_SYNC:
        return True
    if name in ("aten.index", "aten.index_put", "aten.index_put_", "aten._index_put_impl_"):
        return _has_bool_index(args[1] if len(args) > 1 else kwargs.get("indices"))
    if name == "aten.repeat_interleave":
        # The Tensor overload computes its output size from the repeats' sum unless output_size is given.
        return (
            isinstance(args[0], torch.Tensor)
            and len(args) < 2
            or (kwargs.get("output_size") is None and isinstance(args[1] if len(args) > 1 else None, torch.Tensor))
        )
    return False


class OpCounter(TorchDispatchMode):
    """Counts every op dispatched while active, per `phase` (set by the caller: forward, backward, optimizer):
    `ops` ((phase, name) -> count), `syncs` (would-sync name -> count), and the floating-point `_to_copy` casts in
    `casts`: "weights" (forward casts of a parameter, matched by storage pointer), "weight grads" (backward casts
    to fp32 of a parameter-shaped tensor: the gradients of those casts), "other" (activations and the rest)."""

    def __init__(self, params=()):
        super().__init__()
        params = list(params)
        self.param_ptrs = {p.data_ptr() for p in params}
        self.param_shapes = {tuple(p.shape) for p in params}
        self.phase = "forward"
        self.ops: collections.Counter = collections.Counter()
        self.syncs: collections.Counter = collections.Counter()
        self.casts: collections.Counter = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = f"{func.namespace}.{func._opname}"
        self.ops[(self.phase, name)] += 1
        if would_sync(name, args, kwargs):
            self.syncs[name.split(".", 1)[1] + ("[bool]" if "index" in name else "")] += 1
        dtype = kwargs.get("dtype")
        if (
            name == "aten._to_copy"
            and dtype is not None
            and dtype.is_floating_point
            and args[0].is_floating_point()
            and dtype != args[0].dtype
        ):
            if self.phase == "forward" and args[0].data_ptr() in self.param_ptrs:
                self.casts["weights"] += 1
            elif self.phase == "backward" and dtype == torch.float32 and tuple(args[0].shape) in self.param_shapes:
                self.casts["weight grads"] += 1
            else:
                self.casts["other"] += 1
        return func(*args, **kwargs)


def random_batch(batch: int, size: int, num_classes: int, instances: int, generator: torch.Generator):
    """`batch` RGB images of size x size in [0, 1] with `instances` random boxes each (sides 8-50% of the image),
    random labels in 1..num_classes-1 and box-filled masks: the model's training input (list of images, targets)."""
    images, targets = [], []
    for _ in range(batch):
        images.append(torch.rand(3, size, size, generator=generator))
        wh = (torch.rand(instances, 2, generator=generator) * 0.42 + 0.08) * size
        xy = torch.rand(instances, 2, generator=generator) * (size - wh)
        boxes = torch.cat([xy, xy + wh], dim=1).floor()
        masks = torch.zeros(instances, size, size, dtype=torch.uint8)
        for k, (x1, y1, x2, y2) in enumerate(boxes.to(torch.int64).tolist()):
            masks[k, y1:y2, x1:x2] = 1
        labels = torch.randint(1, num_classes, (instances,), generator=generator)
        targets.append({"boxes": boxes, "labels": labels, "masks": masks})
    return images, targets


def build(
    config: Path, size: int, overrides: list[str], num_classes: int, seed: int = 0, per_level_pooling: bool = False
):
    """The config's detector at short side `size` (train mode) and an SGD optimizer over its trainable parameters;
    `per_level_pooling` puts torchvision's per-level RoI selection back into a model.step=fast model (to measure
    what the fixed-shape pooler costs)."""
    from scratchdet.config import load_config
    from scratchdet.modeling.detector import build_detector

    cfg = load_config(
        config,
        [
            f"data.min_size_train=[{size}]",
            f"data.max_size_train={size}",
            f"data.min_size_test={size}",
            f"data.max_size_test={size}",
            "output=/tmp/scratchdet-step-ops-unused",  # required by the schema; nothing is written
            *overrides,
        ],
    )
    torch.manual_seed(seed)
    model = build_detector(cfg, num_classes).train()
    if per_level_pooling:  # the stock per-level selection (a nonzero per level) in place of the fixed-shape pooler
        from scratchdet.modeling.roi_align import MultiScaleRoIAlign

        for pool in (model.roi_heads.box_roi_pool, getattr(model.roi_heads, "mask_roi_pool", None)):
            if pool is not None:
                pool.__class__ = MultiScaleRoIAlign
    params = [p for p in model.parameters() if p.requires_grad]
    return cfg, model, torch.optim.SGD(params, lr=1e-4, momentum=0.9)


def train_step(model, optimizer, images, targets, amp: str) -> dict:
    """One iteration as the trainer runs it (autocast forward, loss sum, backward, SGD step), without the loop's
    logging and its one finite-loss check (engine/trainer.py, one `_local_scalar_dense` more)."""
    dtype = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[amp]
    with torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
        losses = model(images, targets)
    sum(losses.values()).backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return losses


def count_step(
    config: Path, batch: int, size: int, amp: str = "none", step: str = "torchvision", num_classes: int = 81,
    instances: int = 5, seed: int = 0, overrides: list[str] = (),
) -> dict:  # fmt: skip
    """Op counts of one training iteration (the second one: the first builds caches such as anchors' and the
    poolers' scales, which a long run builds once).

    Returns a dict: ops (all aten + torchvision ops of the iteration), model_ops (forward + backward, without the
    optimizer step: SGD on CPU runs per parameter, on CUDA as foreach ops), syncs (would-sync total), sync_ops
    (name -> count), casts (kind -> floating-point `_to_copy` count, see OpCounter), top_ops (8 most frequent).
    """
    _, model, optimizer = build(config, size, [f"model.step={step}", *overrides], num_classes, seed)
    generator = torch.Generator().manual_seed(seed)
    train_step(model, optimizer, *random_batch(batch, size, num_classes, instances, generator), amp)
    images, targets = random_batch(batch, size, num_classes, instances, generator)
    counter = OpCounter(model.parameters())
    dtype = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[amp]
    with counter:  # train_step's work, phase by phase
        with torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
            losses = model(images, targets)
        counter.phase = "backward"
        sum(losses.values()).backward()
        counter.phase = "optimizer"
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    names: collections.Counter = collections.Counter()
    for (_, name), n in counter.ops.items():
        names[name] += n
    return {
        "ops": sum(counter.ops.values()),
        "model_ops": sum(n for (phase, _), n in counter.ops.items() if phase != "optimizer"),
        "syncs": sum(counter.syncs.values()),
        "sync_ops": dict(counter.syncs.most_common()),
        "casts": {k: counter.casts[k] for k in ("weights", "weight grads", "other")},
        "top_ops": dict(names.most_common(8)),
    }


def time_steps(
    config: Path, batch: int, size: int, steps: list[str], rounds: int, warmup: int = 3, amp: str = "none",
    num_classes: int = 81, instances: int = 5, seed: int = 0, overrides: list[str] = (),
) -> dict:  # fmt: skip
    """Seconds per training iteration (`train_step`) of each model.step, alternating: each round runs every step once
    on the same batch, the first step of the round alternating, so a shared machine's drifts hit all alike.

    Returns {step: [seconds per round]} after `warmup` untimed rounds; every model starts from the same weights.
    """
    import time

    # "fast-perlevel": model.step=fast with torchvision's per-level RoI selection instead of the fixed-shape pooler.
    models = {
        step: build(config, size, [f"model.step={step.split('-')[0]}", *overrides], num_classes, seed,
                    per_level_pooling=step.endswith("-perlevel"))[1:]
        for step in steps
    }  # fmt: skip
    generator = torch.Generator().manual_seed(seed)
    times: dict = {step: [] for step in steps}
    for r in range(warmup + rounds):
        images, targets = random_batch(batch, size, num_classes, instances, generator)
        order = steps if r % 2 == 0 else steps[::-1]
        for step in order:
            tick = time.perf_counter()
            train_step(*models[step], images, targets, amp)
            if r >= warmup:
                times[step].append(time.perf_counter() - tick)
    return times


def profile_steps(
    config: Path, batch: int, size: int, steps: list[str], iterations: int, num_classes: int = 81,
    instances: int = 5, seed: int = 0, overrides: list[str] = (),
) -> dict:  # fmt: skip
    """{step: {op name: self CPU ms per iteration}} from torch.profiler over `iterations` iterations of each step
    (after 3 untimed ones), the same batches for every step: where one step's extra time goes."""
    from torch.profiler import ProfilerActivity, profile

    out = {}
    for step in steps:
        _, model, optimizer = build(config, size, [f"model.step={step.split('-')[0]}", *overrides], num_classes, seed,
                                    per_level_pooling=step.endswith("-perlevel"))  # fmt: skip
        generator = torch.Generator().manual_seed(seed)
        batches = [random_batch(batch, size, num_classes, instances, generator) for _ in range(3 + iterations)]
        for images, targets in batches[:3]:
            train_step(model, optimizer, images, targets, "none")
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for images, targets in batches[3:]:
                train_step(model, optimizer, images, targets, "none")
        out[step] = {e.key: e.self_cpu_time_total / 1e3 / iterations for e in prof.key_averages()}
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=PAPER_CONFIG)
    parser.add_argument("--batches", type=int, nargs="+", default=[2, 8])
    parser.add_argument("--size", type=int, default=256, help="square images of this side (pixels)")
    parser.add_argument("--amps", nargs="+", default=["none"], choices=["none", "bf16", "fp16"])
    parser.add_argument(
        "--steps", nargs="+", default=["torchvision"], choices=["torchvision", "fast", "fast-perlevel"],
        help="model.step values; fast-perlevel (--time only): fast with torchvision's per-level RoI selection",
    )  # fmt: skip
    parser.add_argument("--classes", type=int, default=81, help="object classes + background")
    parser.add_argument("--instances", type=int, default=5, help="random boxes per image")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--time", type=int, default=0, help="instead of counting: time this many alternating rounds")
    parser.add_argument("--warmup", type=int, default=3, help="untimed rounds before --time's")
    parser.add_argument("--options", nargs="*", default=[], help="more config overrides, key=value")
    parser.add_argument("--profile", type=int, default=0, help="instead: profile this many iterations of each step")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.profile:
        ms = profile_steps(args.config, args.batches[0], args.size, args.steps, args.profile, args.classes,
                           args.instances, overrides=args.options)  # fmt: skip
        first, *others = args.steps
        print("self CPU ms per iteration, total: " + ", ".join(f"{k} {sum(v.values()):.1f}" for k, v in ms.items()))
        for other in others:
            ops = sorted(set(ms[first]) | set(ms[other]), key=lambda k: ms[first].get(k, 0) - ms[other].get(k, 0))
            print(f"| op | {first} ms | {other} ms |\n| --- | --- | --- |")
            for op in ops[:15]:
                print(f"| {op} | {ms[first].get(op, 0):.2f} | {ms[other].get(op, 0):.2f} |")
        return
    if args.time:
        import statistics

        print("| config | batch | precision | model.step | rounds | median s/iter | quartiles |")
        print("| --- | --- | --- | --- | --- | --- | --- |")
        for amp in args.amps:
            for batch in args.batches:
                times = time_steps(args.config, batch, args.size, args.steps, args.time, args.warmup, amp,
                                   args.classes, args.instances, overrides=args.options)  # fmt: skip
                for step, t in times.items():
                    q = statistics.quantiles(t, n=4)
                    print(f"| {args.config.stem} | {batch} | {amp} | {step} | {len(t)} | {statistics.median(t):.4f} | "
                          f"{q[0]:.4f}-{q[2]:.4f} |", flush=True)  # fmt: skip
                if args.json:
                    args.json.write_text(json.dumps({"batch": batch, "amp": amp, "times": times}))
        return
    rows = []
    print(
        "| config | batch | precision | model.step | ops (all) | ops (fwd+bwd) | would-sync | which "
        "| casts: weights / weight grads / other |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for amp in args.amps:
        for batch in args.batches:
            for step in args.steps:
                r = count_step(
                    args.config, batch, args.size, amp, step, args.classes, args.instances, overrides=args.options
                )
                which = ", ".join(f"{k} {v}" for k, v in r["sync_ops"].items())
                print(
                    f"| {args.config.stem} | {batch} | {amp} | {step} | {r['ops']} | {r['model_ops']} | {r['syncs']} "
                    f"| {which} | {' / '.join(str(v) for v in r['casts'].values())} |",
                    flush=True,
                )
                rows.append({"config": str(args.config), "batch": batch, "amp": amp, "step": step, **r})
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    sys.exit(main())
