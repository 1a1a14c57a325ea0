"""Mask and keypoint predictors on CPU: torchvision's (NCHW) vs scratchdet's (channels-last input), no gradients.

    .venv/bin/python benchmarks/predictor_layout.py --threads 1
    .venv/bin/python benchmarks/predictor_layout.py --threads 1 --run RUN_DIR [--images 30] [OVERRIDES ...]

The first form times the predictor modules alone at the sizes of the mini config and of the paper's R50-FPN heads
(RoIs of [R, C, 14, 14]). The second loads a trained run (as `scratchdet eval` does, with its overrides, e.g.
model.rpn_post_nms_top_n_test=100) and times its whole evaluation inference (scratchdet.evaluation.coco.
run_inference: image loading, the model, conversion to COCO results) over the first --images validation images,
with the run's predictor and with torchvision's holding the same weights. Rounds alternate the two, and the median
of --repeats rounds is reported, because the machine is shared.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from torchvision.models.detection.keypoint_rcnn import KeypointRCNNPredictor
from torchvision.models.detection.mask_rcnn import MaskRCNNPredictor

from scratchdet.modeling.predictors import KeypointPredictor, MaskPredictor

# (name, torchvision class, scratchdet class, constructor args, input channels, RoIs)
CASES = [
    ("mask, mini (64 ch, 6 classes), 48 RoIs", MaskRCNNPredictor, MaskPredictor, (64, 64, 6), 64, 48),
    ("mask, R50-FPN (256 ch, 81 classes), 100 RoIs", MaskRCNNPredictor, MaskPredictor, (256, 256, 81), 256, 100),
    (
        "keypoints, R50-FPN (512 ch, 17 keypoints), 50 RoIs",
        KeypointRCNNPredictor,
        KeypointPredictor,
        (512, 17),
        512,
        50,
    ),
]


def _time_ms(module: torch.nn.Module, x: torch.Tensor, n: int) -> float:
    module(x)
    start = time.perf_counter()
    for _ in range(n):
        module(x)
    return (time.perf_counter() - start) / n * 1000


@torch.no_grad()
def modules(repeats: int, calls: int) -> list[dict]:
    rows = []
    for name, theirs_cls, ours_cls, ctor, channels, rois in CASES:
        torch.manual_seed(0)
        ours = ours_cls(*ctor).eval()
        theirs = theirs_cls(*ctor).eval()
        theirs.load_state_dict(ours.state_dict())
        x = torch.randn(rois, channels, 14, 14)
        times = {"torchvision": [], "scratchdet": []}
        for _ in range(repeats):
            times["torchvision"].append(_time_ms(theirs, x, calls))
            times["scratchdet"].append(_time_ms(ours, x, calls))
        max_diff = (ours(x) - theirs(x)).abs().max().item()
        rows.append(_row(name, times, max_abs_diff=max_diff))
    return rows


def whole_inference(run_dir: str, overrides: list[str], images: int, repeats: int, threads: int) -> dict:
    from scratchdet.engine.run_eval import load_run
    from scratchdet.evaluation.coco import run_inference

    run = load_run(run_dir, overrides)
    heads = run.model.roi_heads
    attr = "mask_predictor" if heads.has_mask() else "keypoint_predictor"
    ours = getattr(heads, attr)
    if attr == "mask_predictor":
        theirs = MaskRCNNPredictor(
            ours.conv5_mask.in_channels, ours.conv5_mask.out_channels, ours.mask_fcn_logits.out_channels
        )
    else:
        theirs = KeypointRCNNPredictor(ours.kps_score_lowres.in_channels, ours.kps_score_lowres.out_channels)
    theirs.load_state_dict(ours.state_dict())  # the same weights under torchvision's forward
    theirs.to(run.device).eval()
    torch.set_num_threads(threads)  # after load_run, which applies the run's train.num_threads
    run_inference(run.model, run.val_set, run.device, min(images, 5))  # warm-up
    times: dict[str, list[float]] = {"torchvision": [], "scratchdet": []}
    counts = {}
    for _ in range(repeats):
        for label, module in (("torchvision", theirs), ("scratchdet", ours)):
            setattr(heads, attr, module)
            start = time.perf_counter()
            results = run_inference(run.model, run.val_set, run.device, images)
            times[label].append((time.perf_counter() - start) / images * 1000)
            counts[label] = len(results)
    setattr(heads, attr, ours)
    return _row(f"whole evaluation inference, ms per image ({images} images, {run_dir})", times, detections=counts)


def _row(name: str, times: dict[str, list[float]], **extra) -> dict:
    tv, sd = (statistics.median(times[k]) for k in ("torchvision", "scratchdet"))
    return {
        "case": name,
        "torchvision_ms": round(tv, 2),
        "scratchdet_ms": round(sd, 2),
        "speedup": round(tv / sd, 2),
        "rounds": {k: [round(v, 2) for v in vs] for k, vs in times.items()},
        **extra,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--calls", type=int, default=10, help="module calls per timed round")
    parser.add_argument("--run", help="a trained run folder: time its whole evaluation inference")
    parser.add_argument("--images", type=int, default=30)
    parser.add_argument("overrides", nargs="*", help="config overrides for --run, as for `scratchdet eval`")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = modules(args.repeats, args.calls) if args.run is None else []
    if args.run is not None:
        rows.append(whole_inference(args.run, args.overrides, args.images, args.repeats, args.threads))
    for row in rows:
        print(json.dumps(row))


if __name__ == "__main__":
    main()
