"""Are two study folders' results the same? Compares every planned run's final evaluation (all bbox and segm
numbers), its samples seen, and the pre-training summaries, e.g. the same spec run before and after a refactoring.

    .venv/bin/python scripts/compare_studies.py BEFORE_STUDY_DIR AFTER_STUDY_DIR

Prints the runs that differ and each run's final bbox AP side by side; exit status 1 when anything differs.
"""

from __future__ import annotations

import sys
from pathlib import Path

from scratchdet.report.results import load_study


def finals(study_dir: Path) -> dict:
    study = load_study(study_dir)
    out = {}
    for run in study.runs:
        last = run.last_eval or {}
        out[run.name] = {"iter": last.get("iter"), "bbox": last.get("bbox"), "segm": last.get("segm"), "seen": run.seen}
    for arm, summary in study.pretrain.items():
        out[f"pretrain/{arm}"] = {"seen": summary["seen"], "iter": summary["iter"]}
    return out


def main(before: str, after: str) -> int:
    a, b = finals(Path(before)), finals(Path(after))
    differ = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))
    print(f"identical: {len(a.keys() | b.keys()) - len(differ)} of {len(a.keys() | b.keys())}; differ: {differ}")
    for name in sorted(k for k in a if not k.startswith("pretrain/")):
        ap = [((x.get(name) or {}).get("bbox") or {}).get("AP") for x in (a, b)]
        print(f"  {name}: bbox AP {ap[0]} -> {ap[1]}")
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))
