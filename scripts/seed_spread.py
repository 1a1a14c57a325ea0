"""The seed-to-seed spread a seeded study measured, per cell and pooled, and optionally the record a one-seed study
reads (STUDY/seed_spread.json, report/results.py `seed_spread`), so that its verdict can say how many seeds would
resolve its gap.

    .venv/bin/python scripts/seed_spread.py STUDY_DIR [--out FILE] [--source TEXT]

Prints one line per (arm, size, setting, schedule) cell with two or more finished seeds: each seed's final bbox AP,
their mean and sample SD; then the pooled SD (report/results.py `pooled_seed_sd`: sqrt of the summed squared
deviations over the summed degrees of freedom). With --out, writes {"sd", "source", "cells"} there (`source` says
where it was measured; give the commit and the machine). Exit status 1 when the study has no seeded cell.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

from scratchdet.files import atomic_write_json
from scratchdet.report.results import MeanRun, load_study, pooled_seed_sd, seed_means


def cells(study_dir: Path) -> list[dict]:
    """[{"cell", "seeds", "bbox_ap", "mean", "sd"}] for every cell with two or more finished seeds."""
    out = []
    for mean in seed_means(load_study(study_dir).runs):
        if not isinstance(mean, MeanRun):
            continue
        done = [(r.seed, r.final("bbox")) for r in mean.members if r.finished and r.final("bbox") is not None]
        if len(done) < 2:
            continue
        values = [v for _, v in done]
        out.append(
            {
                "cell": mean.name,
                "seeds": [s for s, _ in done],
                "bbox_ap": values,
                "mean": statistics.fmean(values),
                "sd": statistics.stdev(values),
            }
        )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("study_dir", type=Path)
    parser.add_argument("--out", type=Path, help="write the seed_spread.json record here")
    parser.add_argument("--source", default=None, help="where it was measured (default: the study folder)")
    args = parser.parse_args(argv)
    found = cells(args.study_dir)
    pooled = pooled_seed_sd(load_study(args.study_dir).runs)
    if not found or pooled is None:
        print(f"{args.study_dir}: no cell with two or more finished seeds (run a study with `seeds: [0, 1, 2]`)")
        return 1
    for cell in found:
        aps = ", ".join(f"s{s}: {v:.2f}" for s, v in zip(cell["seeds"], cell["bbox_ap"], strict=True))
        print(f"{cell['cell']}: bbox AP {aps}; mean {cell['mean']:.2f}, SD {cell['sd']:.2f}")
    sd, n = pooled
    print(f"pooled SD over {n} cells: {sd:.3f} bbox AP")
    if args.out:
        source = args.source or str(args.study_dir)
        atomic_write_json(args.out, {"sd": round(sd, 4), "source": source, "cells": found})
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
