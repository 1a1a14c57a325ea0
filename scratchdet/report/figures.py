"""The report's figures: learning curves (Figs. 1/3/4), samples seen (Fig. 2), AP vs data size (Fig. 7) and training
loss next to AP (Fig. 8). Every figure draws every arm of the study, in one colour per arm (`arm_colors`) and named
by its spec name. Each builder returns a matplotlib Figure (inspectable in tests); `save_figure` writes it.

Figures are built with `matplotlib.figure.Figure` on an Agg canvas, never pyplot: headless (no display needed), no
global backend switch for the importing process, and nothing to close when a report is written from a long-lived one.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib
import matplotlib.colors
import matplotlib.patches
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from scratchdet.report.findings import CAUGHT_UP_AP, SizePoint
from scratchdet.report.results import (
    SEEN_KEYS,
    Arm,
    arm_label,
    pretrained_arms,
    reference_arm,
    samples_of,
    seed_means,
    study_arms,
)
from scratchdet.report.results import has_seeds as results_has_seeds

if TYPE_CHECKING:
    from scratchdet.report.results import RunData

IOU_LABELS = {"bbox": "bbox AP (%)", "segm": "mask AP (%)"}
SCRATCH_COLOR = "tab:blue"
# The pre-trained arms' colours, in plan order: tab10 without blue (scratch) and green (the examples' ground truth).
PRETRAINED_COLORS = ("tab:orange", "tab:red", "tab:purple", "tab:brown", "tab:pink", "tab:olive", "tab:cyan")


def arm_colors(arms: list[Arm]) -> dict[str, str]:
    """{arm name: colour}, one colour per arm in every figure: scratch blue, the pre-trained arms orange, red, ...
    in plan order (tab20b's after the seventh)."""
    colors = {}
    pres = [a for a in arms if a.pretrained]
    extra = [matplotlib.colors.to_hex(c) for c in matplotlib.colormaps["tab20b"].colors]
    palette = list(PRETRAINED_COLORS) + extra
    for arm in arms:
        colors[arm.name] = SCRATCH_COLOR if not arm.pretrained else palette[pres.index(arm) % len(palette)]
    return colors


def safe_stem(text: str) -> str:
    """A file-name stem from a label such as "curves_all_lr=0.01"."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "figure"


def new_figure(figsize: tuple[float, float]) -> Figure:
    fig = Figure(figsize=figsize, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig: Figure, out_dir: Path, stem: str) -> tuple[Path, Path]:
    """Writes `stem.png` and `stem.svg` into out_dir; returns (png, svg)."""
    png, svg = out_dir / f"{stem}.png", out_dir / f"{stem}.svg"
    # No timestamp and fixed SVG ids: the same data gives the same files.
    with matplotlib.rc_context({"svg.hashsalt": "scratchdet"}):
        fig.savefig(png, dpi=110, metadata={"Software": None})
        fig.savefig(svg, metadata={"Date": None})
    return png, svg


def _schedule_colors(runs: list[RunData]) -> dict[float, str]:
    schedules = sorted({r.schedule or 0.0 for r in runs})
    cmap = matplotlib.colormaps["viridis"]
    return {s: cmap(i / max(1, len(schedules) - 1) * 0.9) for i, s in enumerate(schedules)}


def _legend_label(run: RunData) -> str:
    label = run.label if getattr(run, "seed", None) is None else f"{run.label} seed {run.seed}"
    return label if run.finished else f"{label} (unfinished)"


def learning_curves_figure(runs: list[RunData], title: str) -> Figure:
    """AP vs iterations: one column per arm (scratch, then each pre-trained arm; shared y per row), one row per IoU
    type (bbox, and mask when any run has it), one line per schedule; dotted verticals at inferred LR drops."""
    iou_types = ["bbox"] + (["segm"] if any(r.curve("segm") for r in runs) else [])
    arms = study_arms(runs)
    fig = new_figure((5.5 * max(2, len(arms)), 3.6 * len(iou_types)))
    axes = fig.subplots(len(iou_types), max(1, len(arms)), sharey="row", squeeze=False)
    colors = _schedule_colors(runs)
    for row, iou_type in enumerate(iou_types):
        for col, arm in enumerate(arms):
            ax = axes[row][col]
            arm_runs = [r for r in runs if r.arm == arm.name]
            drawn = False
            for run in arm_runs:
                curve = run.curve(iou_type)
                color = colors[run.schedule or 0.0]
                if curve:
                    xs, ys = zip(*curve, strict=True)
                    ax.plot(
                        xs,
                        ys,
                        marker="o",
                        markersize=3,
                        color=color,
                        label=_legend_label(run),
                        linestyle="-" if run.finished else "--",
                    )
                    drawn = True
                for drop in run.lr_drops:
                    ax.axvline(drop, color=color, linestyle=":", linewidth=1, alpha=0.7)
            if not drawn:
                text = f"no {arm.label} runs" if not arm_runs else "no evaluation with predictions yet"
                ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="gray")
            ax.set_title(f"{arm.label}: {IOU_LABELS[iou_type].split(' (')[0]}")
            ax.set_xlabel("iterations")
            ax.set_ylabel(IOU_LABELS[iou_type])
            ax.grid(alpha=0.3)
            if drawn:
                ax.legend(title="schedule", fontsize=8)
    fig.suptitle(f"{title}\n(dotted: LR drops inferred from the logged LR; dashed: unfinished run)", fontsize=10)
    return fig


def samples_figure(runs: list[RunData], title: str) -> Figure:
    """Grouped bars per schedule, log y, one panel per quantity (images, instances, pixels): scratch, then for each
    pre-trained arm its fine-tuning, its pre-training and their total (the arm's colour, lighter to full).

    Args:
        runs: the runs of one training-set size and setting (`results.samples_of` gives their counts).
    """
    arms = study_arms(runs)
    colors = arm_colors(arms)
    scratch = reference_arm(arms)
    # (legend name, arm, part, alpha): part "own" = the run's own training, "pre" = pre-training, "total".
    series = [(scratch.label, scratch, "own", 1.0)] if scratch else []
    for arm in pretrained_arms(arms):
        series += [
            (f"{arm.label}: fine-tuning", arm, "own", 0.45),
            (f"{arm.label}: pre-training", arm, "pre", 0.7),
            (f"{arm.label}: total", arm, "total", 1.0),
        ]
    labels = list(dict.fromkeys(r.label for r in sorted(runs, key=lambda r: r.schedule or 0.0)))
    fig = new_figure((12 + 2 * max(0, len(arms) - 2), 3.8))
    axes = fig.subplots(1, len(SEEN_KEYS), squeeze=False)[0]
    width = 0.8 / max(1, len(series))
    for ax, key in zip(axes, SEEN_KEYS, strict=True):
        for j, (name, arm, part, alpha) in enumerate(series):
            xs, heights = [], []
            for i, label in enumerate(labels):
                value = _series_value(runs, arm, label, part, key)
                if value:  # zero or unknown: nothing to draw on a log axis
                    xs.append(i + (j - (len(series) - 1) / 2) * width)
                    heights.append(value)
            estimate = part != "own" and any((r.pretrain_seen or {}).get("estimate") for r in runs if r.arm == arm.name)
            ax.bar(
                xs,
                heights,
                width,
                label=name + (" (estimate)" if estimate else ""),
                hatch="//" if estimate else None,
                color=colors[arm.name],
                alpha=alpha,
                edgecolor="black" if part == "total" else None,
                linewidth=0.5,
            )
        ax.set_yscale("log")
        ax.set_xticks(range(len(labels)), labels)
        ax.set_xlabel("schedule")
        ax.set_ylabel(f"{key} seen (log scale)")
        ax.set_title(key)
        ax.grid(alpha=0.3, axis="y")
    fig.legend(*axes[0].get_legend_handles_labels(), loc="outside lower center", ncols=min(len(series), 4), fontsize=8)
    fig.suptitle(title, fontsize=10)
    return fig


def _series_value(runs: list[RunData], arm: Arm, label: str, part: str, key: str) -> float | None:
    for run in runs:
        if run.arm != arm.name or run.label != label:
            continue
        own, pre = samples_of(run)
        if part == "own":
            return own.get(key)
        if part == "pre":
            return pre.get(key)
        if own.get(key) is not None and pre.get(key) is not None:
            return own[key] + pre[key]
    return None


def data_size_figure(points: list[SizePoint], title: str) -> Figure:
    """Final bbox AP vs training images (log x) for every arm, each at its best finished schedule; a size of unknown
    image count ("all") is placed right of the largest known one and labelled. Each pre-trained arm's gap to scratch
    is annotated (one arm: red above the threshold; several: in the arm's colour, bold above it)."""
    known = [p.train_images for p in points if p.train_images]
    right = max(known) * 2 if known else 1
    xs = {p.size_label: p.train_images or right * (2**i) for i, p in enumerate(p for p in points if not p.train_images)}
    xs.update({p.size_label: p.train_images for p in points if p.train_images})
    arms = points[0].order if points and points[0].order else []
    colors = arm_colors(arms)
    scratch, pres = reference_arm(arms), pretrained_arms(arms)
    fig = new_figure((6.5, 4.2))
    ax = fig.subplots()
    for arm in arms:
        pts = [(xs[p.size_label], p.arms[arm.name].final()) for p in points if p.arms.get(arm.name) is not None]
        if pts:
            ax.plot(*zip(*pts, strict=True), marker="o", color=colors[arm.name], label=arm.label)
    for p in points:
        scr = p.arms.get(scratch.name) if scratch else None
        shown = [(arm, p.arms.get(arm.name)) for arm in pres if p.arms.get(arm.name) is not None]
        if scr is None:
            continue
        for k, (arm, pre) in enumerate(shown):
            gap = round(round(pre.final(), 1) - round(scr.final(), 1), 1)
            above = gap > CAUGHT_UP_AP
            ax.annotate(
                f"{gap:+.1f}",
                (xs[p.size_label], max(max(r.final() for _, r in shown), scr.final())),
                textcoords="offset points",
                xytext=(0, 6 + 11 * k),
                ha="center",
                fontsize=8,
                color=("red" if above else "gray") if len(pres) == 1 else colors[arm.name],
                fontweight="bold" if above and len(pres) > 1 else "normal",
            )
    ax.set_xscale("log")
    ticks = sorted(xs.items(), key=lambda kv: kv[1])
    names = [label if v not in known or label == str(v) else f"{label}\n({v:,})" for label, v in ticks]
    ax.set_xticks([v for _, v in ticks], names)
    ax.margins(x=0.08, y=0.12 + 0.06 * max(0, len(pres) - 1))  # room for the gap annotations
    ax.minorticks_off()
    ax.set_xlabel("training images (log scale)")
    ax.set_ylabel("final bbox AP (%)")
    if len(pres) > 1:
        note = f"annotations: each pre-trained arm - scratch, in its colour; bold: > {CAUGHT_UP_AP} AP"
    else:
        note = f"annotation: {pres[0].label if pres else 'pre-trained'} - scratch; red: > {CAUGHT_UP_AP} AP"
    ax.set_title(f"{title}\n({note})", fontsize=10)
    ax.grid(alpha=0.3)
    if ax.lines:
        ax.legend()
    return fig


def loss_and_ap_figure(runs: list[RunData], title: str) -> Figure:
    """Fig. 8: training loss (left) and bbox AP (right) vs iterations for the same runs; one colour per arm, one
    line style per schedule."""
    fig = new_figure((11, 3.8))
    loss_ax, ap_ax = fig.subplots(1, 2)
    styles = ["-", "--", "-.", ":"]
    colors = arm_colors(study_arms(runs))
    for run in runs:
        label = f"{arm_label(run.arm)} {_legend_label(run)}"
        schedules = sorted({r.schedule or 0.0 for r in runs if r.arm == run.arm})
        style = styles[schedules.index(run.schedule or 0.0) % len(styles)]
        for ax, curve in ((loss_ax, run.loss_curve()), (ap_ax, run.curve())):
            if curve:
                ax.plot(*zip(*curve, strict=True), linestyle=style, color=colors[run.arm], label=label)
    for ax, ylabel, name in (
        (loss_ax, "training loss (sum of losses)", "training loss"),
        (ap_ax, "bbox AP (%)", "bbox AP"),
    ):
        ax.set_xlabel("iterations")
        ax.set_ylabel(ylabel)
        ax.set_title(name)
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
        else:
            ax.text(0.5, 0.5, "no records", ha="center", va="center", transform=ax.transAxes, color="gray")
    if loss_ax.lines and all(v > 0 for r in runs for _, v in r.loss_curve()):
        loss_ax.set_yscale("log")  # a loss that keeps falling on a small set spans orders of magnitude
    fig.suptitle(title, fontsize=10)
    return fig


SCHEDULE_STYLES = ("-", "--", "-.", ":", (0, (5, 1)), (0, (3, 1, 1, 1, 1, 1)))


def arms_curves_figure(runs: list[RunData], title: str) -> Figure:
    """Fig. 1 of the paper: bbox AP vs iterations, every arm on the same axes; one colour per arm (`arm_colors`),
    legends by spec arm name, one line style per schedule, each schedule's LR drops marked on its own curve (open
    markers). With seed replicates each seed's run is a thin line (no legend entry) and the mean over seeds at the
    evaluations every seed has (`results.MeanRun.curve`) the thick, labelled one."""
    fig = new_figure((9, 4.8))
    ax = fig.subplots()
    seeded = results_has_seeds(runs)
    if seeded:
        arm_colours = arm_colors(study_arms(runs))
        steps = sorted({r.schedule or 0.0 for r in runs})
        for run in runs:
            if run.seed is not None and (curve := run.curve("bbox")):
                style = SCHEDULE_STYLES[steps.index(run.schedule or 0.0) % len(SCHEDULE_STYLES)]
                ax.plot(*zip(*curve, strict=True), color=arm_colours[run.arm], linestyle=style, linewidth=0.6,
                        alpha=0.5, label="_seed")  # fmt: skip
        runs = seed_means(runs)
    schedules = sorted({r.schedule or 0.0 for r in runs})
    styles = {s: SCHEDULE_STYLES[i % len(SCHEDULE_STYLES)] for i, s in enumerate(schedules)}
    arms = [a.name for a in study_arms(runs)]
    colors = arm_colors(study_arms(runs))
    drawn = False
    for run in sorted(runs, key=lambda r: (arms.index(r.arm), r.schedule or 0.0)):
        curve = run.curve("bbox")
        if not curve:
            continue
        xs, ys = zip(*curve, strict=True)
        color = colors[run.arm]
        label = f"{arm_label(run.arm)} {_legend_label(run)}"
        width = 2.2 if seeded else None  # the mean over seeds, drawn over its thin seed lines
        ax.plot(xs, ys, color=color, linestyle=styles[run.schedule or 0.0], marker="o", markersize=2.5, label=label,
                linewidth=width)  # fmt: skip
        for drop in run.lr_drops:  # the curve's value at the last evaluation before the drop
            before = [(x, y) for x, y in curve if x <= drop]
            if before:
                ax.plot(*before[-1], marker="v", markersize=7, markerfacecolor="white", color=color)
        drawn = True
    if not drawn:
        ax.text(0.5, 0.5, "no evaluation with predictions yet", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("iterations")
    ax.set_ylabel(IOU_LABELS["bbox"])
    ax.grid(alpha=0.3)
    if drawn:
        ax.legend(fontsize=8, ncols=max(2, len(arms)), title="arm and schedule")
    seeds_note = "; thin lines: each seed, thick: their mean" if seeded else ""
    fig.suptitle(
        f"{title}\n(open triangles: the LR drops of that schedule, inferred from the logged LR{seeds_note})",
        fontsize=10,
    )
    return fig


def _draw_instances(ax, image, instances: list[dict], names: dict[int, str], color: str) -> None:
    """An image with boxes (XYWH), masks (H x W uint8, optional) and labels."""
    import numpy as np

    ax.imshow(image)
    overlay = np.zeros((*image.shape[:2], 4))
    for inst in instances:
        x, y, w, h = inst["bbox"]
        ax.add_patch(matplotlib.patches.Rectangle((x, y), w, h, fill=False, edgecolor=color, linewidth=1.2))
        text = names.get(inst["category_id"], str(inst["category_id"]))
        if "score" in inst:
            text += f" {inst['score']:.2f}"
        ax.text(x, y, text, fontsize=6, color="white", va="bottom", bbox={"facecolor": color, "pad": 0.5, "lw": 0})
        if inst.get("mask") is not None:
            overlay[inst["mask"] > 0] = matplotlib.colors.to_rgba(color, 0.35)
    ax.imshow(overlay)
    ax.set_axis_off()


def examples_figure(rows: list[dict], columns: list[str], title: str, colors: dict[str, str] | None = None) -> Figure:
    """Validation images side by side: the ground truth, then each arm's detections.

    Args:
        rows: per image {"image": H x W x 3 array, "id": image id, "names": {category id: name},
            "panels": {column name: [{"bbox", "category_id", optional "score", optional "mask"}]}}.
        columns: panel names in order, e.g. ["ground truth", "scratch 3x", "pre-trained 3x"].
        colors: {column name: colour} (the arms' colours, `arm_colors`); a column not in it is drawn in scratch's
            colour, or the first pre-trained arm's when its name starts with "pre".
    """
    fig = new_figure((3.2 * len(columns), 3.0 * len(rows)))
    axes = fig.subplots(len(rows), len(columns), squeeze=False)
    colors = {"ground truth": "tab:green", **(colors or {})}
    for i, row in enumerate(rows):
        for j, column in enumerate(columns):
            color = colors.get(column, PRETRAINED_COLORS[0] if column.startswith("pre") else SCRATCH_COLOR)
            _draw_instances(axes[i][j], row["image"], row["panels"].get(column, []), row["names"], color)
            axes[i][j].set_title(f"{column} (image {row['id']})" if j == 0 else column, fontsize=8)
    fig.suptitle(title, fontsize=10)
    return fig
