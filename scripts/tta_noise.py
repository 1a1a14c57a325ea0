"""Does test-time augmentation change AP by more than the test set's noise? (docs/RESULTS.md, "Test-time augmentation")

    .venv/bin/python scripts/tta_noise.py RUN_DIR [key=value ...] [--n-boot 500] [--out tta_noise.json]

Runs the run's latest checkpoint over its validation images twice, plainly and with TTA (eval.tta_* keys, which
may be overridden like for `scratchdet eval`), and compares the two result lists with a paired bootstrap over the
images (scratchdet/evaluation/bootstrap.py): the AP difference, and the 95% interval of that difference over
resampled test sets. A difference inside the interval around 0 is noise.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from scratchdet.engine.run_eval import load_run
from scratchdet.evaluation.bootstrap import paired_bootstrap
from scratchdet.evaluation.coco import run_inference
from scratchdet.evaluation.tta import build_tta_predictor


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run")
    parser.add_argument("overrides", nargs="*")
    parser.add_argument("--n-boot", type=int, default=500)
    parser.add_argument("--out")
    args = parser.parse_args()

    loaded = load_run(args.run, args.overrides)
    cfg, model, val, device = loaded.cfg, loaded.model, loaded.val_set, loaded.device
    if cfg.train.num_threads:  # as `scratchdet eval` runs it (this process does nothing else)
        torch.set_num_threads(cfg.train.num_threads)
    ev = cfg.eval
    n = len(val) if ev.max_images is None else min(ev.max_images, len(val))
    tick = time.perf_counter()
    plain = run_inference(model, val, device, max_images=n)
    plain_s = time.perf_counter() - tick
    tta = run_inference(
        model, val, device, max_images=n, predict=build_tta_predictor(model, ev.tta_sizes, ev.tta_max_size, ev.tta_flip)
    )
    tta_s = time.perf_counter() - tick - plain_s
    iou_types = ["bbox"] + (["segm"] if model.roi_heads.has_mask() else [])
    report = {
        "run": str(args.run),
        "checkpoint": str(loaded.checkpoint),
        "iter": loaded.iteration,
        "images": n,
        "tta_sizes": list(ev.tta_sizes),
        "tta_max_size": ev.tta_max_size,
        "tta_flip": ev.tta_flip,
        "plain_s": round(plain_s, 1),
        "tta_s": round(tta_s, 1),
    }
    for iou_type in iou_types:
        report[iou_type] = paired_bootstrap(val.coco, plain, tta, iou_type, val.image_ids[:n], n_boot=args.n_boot)
        r = report[iou_type]
        print(
            f"{iou_type}: plain AP {r['ap_a']:.2f}, TTA AP {r['ap_b']:.2f}, difference {r['delta']:+.2f} "
            f"(95% over resampled test sets: {r['delta_ci95'][0]:+.2f} .. {r['delta_ci95'][1]:+.2f})"
        )
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
