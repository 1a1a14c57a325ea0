"""`scratchdet report STUDY`: the paper's figures and tables for a study folder, as one self-contained HTML page.

Reads what the study runner wrote (plan.json, runs/*/metrics.jsonl, init.json, eval/*.json) and writes
`STUDY/report/`: report.html (figures embedded, tables inline, no external files), figures/*.png|svg and
tables/*.csv|md. Numbers are reported as measured; anything that cannot be computed (a missing run, an unfinished
run, an evaluation without predictions) is shown as "-" and said in words, never filled in.
"""

from __future__ import annotations

import base64
import csv
import html
import json
from dataclasses import dataclass
from pathlib import Path

from scratchdet.report import catchup, figures, findings, results, verdict
from scratchdet.report.results import SEEN_KEYS, RunData, Study, load_study, metric_value

AP_KEYS = ("AP", "AP50", "AP75")
IOU_NAMES = {"bbox": "bbox", "segm": "mask"}
TOY_NOTE = (
    "Results are reported as measured. At toy scale (few iterations, small data) they need not reproduce the "
    "paper's numbers; the report computes every comparison from these runs and claims nothing beyond them."
)


@dataclass
class Table:
    """Cells are str, int, float or None; CSV keeps 3 decimals, Markdown/HTML show 1, None is "-" everywhere."""

    name: str
    title: str
    headers: list[str]
    rows: list[list]
    note: str = ""

    @staticmethod
    def cell(value, precise: bool = False) -> str:
        if value is None:
            return "-"
        if isinstance(value, bool):
            return "yes" if value else "no"
        if isinstance(value, int):
            return str(value) if precise else f"{value:,}"
        if isinstance(value, float):
            return f"{round(value, 3):g}" if precise else f"{value:.1f}"
        return str(value)

    def write(self, out_dir: Path) -> None:
        with (out_dir / f"{self.name}.csv").open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(self.headers)
            writer.writerows([[self.cell(v, precise=True) for v in row] for row in self.rows])
        (out_dir / f"{self.name}.md").write_text(self.markdown())

    def markdown(self) -> str:
        lines = [f"**{self.title}**", "", "| " + " | ".join(self.headers) + " |", "|" + " --- |" * len(self.headers)]
        lines += ["| " + " | ".join(self.cell(v).replace("|", "/") for v in row) + " |" for row in self.rows]
        return "\n".join(lines + (["", self.note] if self.note else []) + [""])

    def html(self) -> str:
        head = "".join(f"<th>{html.escape(h)}</th>" for h in self.headers)
        body = "".join(
            "<tr>" + "".join(f"<td>{html.escape(self.cell(v))}</td>" for v in row) + "</tr>" for row in self.rows
        )
        note = f"<p class='note'>{html.escape(self.note)}</p>" if self.note else ""
        return f"<h3>{html.escape(self.title)}</h3><table><tr>{head}</tr>{body}</table>{note}"


def _run_note(run: RunData) -> str:
    if not run.started:
        return f"no records in {run.path.name}/metrics.jsonl"
    parts = []
    if not run.finished:
        of = f" of {run.max_iters}" if run.max_iters else ""
        parts.append(f"did not finish (last record at iter {run.last_iter}{of})")
    last = run.last_eval
    if last is None:
        parts.append("never evaluated")
    elif last.get("status", "ok") != "ok":
        parts.append(f"last evaluation (iter {last.get('iter')}): {last.get('status')}")
    return "; ".join(parts)


def final_ap_table(runs: list[RunData]) -> Table:
    """Tables 1-2: the last evaluation of every run (rows: arm, schedule, size, hparams; arm by spec name). With seed
    replicates every seed's run has its row (column "seed") and each (arm, size, hparams, schedule) a row "mean"
    after them: the mean over its seeds of each metric (`results.MeanRun`), the number every comparison uses."""
    seeded = results.has_seeds(runs)
    metric_headers = [f"{IOU_NAMES[t]} {k}" for t in IOU_NAMES for k in AP_KEYS]
    rows = []

    def row(run, seed_cell) -> list:
        last = run.last_eval
        cells = [run.name, run.arm, run.label, run.size_label, run.hparams]
        cells += [seed_cell] if seeded else []
        return [
            *cells,
            run.status,
            last.get("iter") if last else None,
            *[run.final(t, k) for t in IOU_NAMES for k in AP_KEYS],
            run.init,
            _run_note(run) if isinstance(run, RunData) else f"mean over seeds {', '.join(map(str, run.seeds))}",
        ]

    ordered = results.sort_runs(runs)
    for i, run in enumerate(ordered):
        rows.append(row(run, run.seed))
        after = ordered[i + 1] if i + 1 < len(ordered) else None
        if run.seed is not None and (after is None or results.cell_key(after) != results.cell_key(run)):
            cell = [r for r in runs if r.seed is not None and results.cell_key(r) == results.cell_key(run)]
            rows.append(row(results.MeanRun(cell), "mean"))
    headers = ["run", "arm", "schedule", "train size", "hparams", *(["seed"] if seeded else [])]
    note = (
        "Unfinished runs (no 'end' record) show their last evaluation and are left out of the findings. Each run's "
        "init.json was checked against its arm's init and weights before this report was written."
    )
    if seeded:
        note += (
            " Seed replicates: one row per seed, then their mean (seed 'mean'), the number the findings and the "
            "verdict compare; a mean is usable when every seed is."
        )
    return Table(
        "final_ap",
        "Final AP per run (last evaluation; AP in %)",
        [*headers, "status", "last eval iter", *metric_headers, "init", "note"],
        rows,
        note,
    )


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else a / b


def samples_table(runs: list[RunData]) -> Table:
    """Fig. 2 as numbers: images/instances/pixels of fine-tuning, pre-training and total, relative to scratch."""
    reference = results.reference_arm(results.study_arms(runs))
    scratch = {(r.size_label, r.hparams, r.schedule): r for r in runs if reference and r.arm == reference.name}
    rows = []
    for run in results.sort_runs(runs):
        own, pre = results.samples_of(run)
        total = {k: None if own[k] is None else own[k] + (pre[k] or 0) for k in SEEN_KEYS}
        ref = scratch.get((run.size_label, run.hparams, run.schedule))
        ref_total = results.samples_of(ref)[0] if ref is not None else dict.fromkeys(SEEN_KEYS)
        estimate = (run.pretrain_seen or {}).get("estimate")
        rows.append(
            [
                run.name,
                run.arm,
                run.label,
                run.size_label,
                run.hparams,
                *[own[k] for k in SEEN_KEYS],
                *[pre[k] for k in SEEN_KEYS],
                estimate or "",
                *[total[k] for k in SEEN_KEYS],
                *[None if run.init == "scratch" else _ratio(total[k], ref_total[k]) for k in SEEN_KEYS],
            ]
        )
    return Table(
        "samples_seen",
        "Samples seen (fine-tuning, pre-training, total; 'x scratch' = total / scratch "
        "at the same schedule, size and hparams)",
        [
            "run",
            "arm",
            "schedule",
            "train size",
            "hparams",
            *[f"fine-tune {k}" for k in SEEN_KEYS],
            *[f"pre-train {k}" for k in SEEN_KEYS],
            "pre-train estimate",
            *[f"total {k}" for k in SEEN_KEYS],
            *[f"{k} x scratch" for k in SEEN_KEYS],
        ],
        rows,
        "Pre-training counts come from init.json; an 'estimate' text means the weights carried no counts "
        "and a recipe was assumed.",
    )


def _hours(value: float | None) -> str | None:
    return None if value is None else f"{value:.3g}"  # toy runs take seconds, paper runs thousands of hours


def _hours_sum(values) -> float | None:
    values = list(values)
    return None if not values or any(v is None for v in values) else sum(values)


def compute_tables(study: Study) -> tuple[Table, Table, list[str]]:
    """The study's compute (paper Fig. 2 argues in it; docs/PAPER.md, "Sample accounting (Fig. 2)"): device-hours
    per run and per arm, the shared trunks' saving, and each pre-trained arm's fine-tuning (and the study's own
    pre-training of it) against scratch's. Device-hours are measured: time per iteration x iterations x processes,
    from the runs' logs.

    Returns:
        (per-run table, per-arm table, sentences: the trunks' saving, then one per pre-trained arm).
    """
    runs = results.sort_runs(study.runs)
    rows = [
        [
            r.name,
            r.arm,
            r.label,
            r.size_label,
            r.hparams,
            r.fork_iter,
            _hours(r.own_device_hours),
            _hours(r.device_hours),
        ]
        for r in runs
    ]
    per_run = Table(
        "compute_per_run",
        "Device-hours per run (measured: time per iteration x iterations x processes)",
        ["run", "arm", "schedule", "train size", "hparams", "forked at", "own device-h", "as a separate run device-h"],
        rows,
        "'own' counts the run's iterations after its fork; 'as a separate run' adds its trunk's iterations before "
        "the fork, what it would have cost trained alone. '-': not (yet) logged.",
    )
    arms = results.study_arms(runs)
    reference = results.reference_arm(arms)
    fine_tune = {a.name: _hours_sum(r.device_hours for r in runs if r.arm == a.name) for a in arms}
    pretrain = {a.name: (study.pretrain.get(a.name) or {}).get("device_hours") for a in arms}
    scratch_hours = fine_tune.get(reference.name) if reference else None
    arm_rows = []
    for arm in arms:
        n = sum(r.arm == arm.name for r in runs)
        total = fine_tune[arm.name] if not arm.pretrained else _hours_sum([pretrain[arm.name], fine_tune[arm.name]])
        ratio = None if not arm.pretrained else _ratio(fine_tune[arm.name], scratch_hours)
        arm_rows.append(
            [arm.name, arm.init, n, _hours(pretrain[arm.name]), _hours(fine_tune[arm.name]), _hours(total), ratio]
        )
    per_arm = Table(
        "compute_per_arm",
        "Device-hours per arm: the study's own pre-training, and fine-tuning summed over runs trained separately",
        [
            "arm",
            "init",
            "runs",
            "pre-training device-h",
            "fine-tuning device-h (separate runs)",
            "total device-h",
            "fine-tuning x scratch",
        ],
        arm_rows,
        "Pre-training done outside the study (a weights file) is not counted here; its samples are in the "
        "samples-seen table when the file records them. 'total' is known where both parts are.",
    )
    shared = _hours_sum([*study.trunk_hours.values(), *(r.own_device_hours for r in runs)])
    separate = _hours_sum(r.device_hours for r in runs)
    if shared is None or separate is None or not separate:
        saving = "The shared trunks' saving in device-hours is known once every run and trunk has logged its time."
    else:
        saving = (
            f"Fine-tuning used {shared:.3g} device-hours with the shared trunks; separate runs would have used "
            f"{separate:.3g} ({separate - shared:.3g} saved, {1 - shared / separate:.0%})."
        )
    sentences = [saving]
    for arm in results.pretrained_arms(arms):
        sentences.append(_arm_compute_sentence(arm, fine_tune[arm.name], pretrain[arm.name], reference, scratch_hours))
    return per_run, per_arm, sentences


def _arm_compute_sentence(
    arm: results.Arm,
    fine_tune: float | None,
    pretrain: float | None,
    reference: results.Arm | None,
    scratch: float | None,
) -> str:
    """One pre-trained arm's device-hours against the scratch arm's, e.g. "Arm imagenet: fine-tuning 0.2
    device-hours, 1.0x scratch's 0.2; its pre-training was done outside the study (not counted)."."""
    name = reference.label if reference else "scratch"
    if fine_tune is None:
        return f"Arm {arm.name}: its fine-tuning device-hours are known once every run of it has logged its time."
    vs = f", {fine_tune / scratch:.1f}x {name}'s {scratch:.3g}" if scratch else f" ({name}'s are not known)"
    if pretrain is None:
        pre = "its pre-training was done outside the study (a weights file), not counted"
    else:
        total = pretrain + fine_tune
        ratio = f", {total / scratch:.1f}x {name}'s" if scratch else ""
        pre = f"with the study's own pre-training ({pretrain:.3g}) {total:.3g} device-hours in all{ratio}"
    return f"Arm {arm.name}: fine-tuning {fine_tune:.3g} device-hours{vs}; {pre}."


def data_size_table(points: list[findings.SizePoint]) -> Table:
    """Figs. 7-8 as numbers: per size, each arm's best finished run, each pre-trained arm's gap to scratch and, with
    several pre-trained arms, the best of them."""
    arms = points[0].order if points else []
    reference, pres = results.reference_arm(arms), results.pretrained_arms(arms)
    rows = []
    for p in points:
        best = {a.name: p.arms.get(a.name) for a in arms}
        ap = {name: run.final() if run else None for name, run in best.items()}
        row = [p.size_label, p.train_images, p.hparams]
        for arm in arms:
            row += [ap[arm.name], best[arm.name].label if best[arm.name] else None]
        ref_ap = ap.get(reference.name) if reference else None
        row += [None if ref_ap is None or ap[a.name] is None else ap[a.name] - ref_ap for a in pres]
        if len(pres) > 1:
            known = [(a, ap[a.name]) for a in pres if ap[a.name] is not None]
            row.append(findings.best_arm_text(known) if known else None)
        rows.append(row)
    ref_label = reference.label if reference else "scratch"
    headers = ["train size", "train images", "hparams"]
    for arm in arms:
        headers += [f"{arm.label} bbox AP", f"{arm.label} schedule"]
    headers += [f"gap ({a.label} - {ref_label})" for a in pres]
    if len(pres) > 1:
        headers.append("best pre-trained arm")
    title = "Final bbox AP vs training-set size (each arm at its best finished schedule)"
    return Table("data_size", title, headers, rows)


def hparam_table(runs: list[RunData]) -> Table:
    """The hyper-parameter grid: best finished bbox AP per setting and arm, the best setting per arm, the one used
    (`findings.selected_hparams`); with seeds, of the means over seeds."""
    runs = results.seed_means(runs)
    arms = results.study_arms(runs)
    rows = []
    for size in results.sizes(runs):
        chosen, _ = findings.selected_hparams(runs, size)
        settings = sorted({r.hparams for r in runs if r.size_label == size})
        best = {arm.name: findings.best_hparams(runs, size, arm.name) for arm in arms}
        for hp in settings:
            overrides = next((r.overrides for r in runs if r.size_label == size and r.hparams == hp), [])
            cells = []
            for arm in arms:
                run = results.best_run([r for r in runs if (r.size_label, r.hparams, r.arm) == (size, hp, arm.name)])
                cells += [run.final() if run else None, run.label if run else None]
            best_for = [a.label for a in arms if best[a.name] == hp]
            text = " ".join(map(str, overrides)) if isinstance(overrides, list) else json.dumps(overrides)
            rows.append([size, hp, text, *cells, ", ".join(best_for), hp == chosen])
    several = len(results.pretrained_arms(arms)) > 1
    return Table(
        "hparams",
        "Hyper-parameter grid: best finished bbox AP per setting (over schedules)",
        [
            "train size",
            "hparams",
            "overrides",
            *[h for a in arms for h in (f"{a.label} bbox AP", f"{a.label} schedule")],
            "best for",
            "used",
        ],
        rows,
        "As in the paper (Sec. 5.1), the setting is selected on the pre-trained arm and reused for scratch."
        if not several
        else "As in the paper (Sec. 5.1), the setting is selected on the pre-trained arms: the one of the best "
        "pre-trained run over all pre-trained arms, used for every arm.",
    )


# ---------------------------------------------------------------------------------------------------- HTML

CSS = """body{font-family:sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.5em 0;font-size:13px}td,th{border:1px solid #ccc;padding:2px 6px;
text-align:right}th{background:#f3f3f3}td:first-child{text-align:left}img{max-width:100%}
.note{color:#555;font-size:13px}li{margin:.3em 0}"""


def _embed(fig, fig_dir: Path, stem: str, title: str) -> str:
    """Saves `fig` as PNG + SVG and returns an HTML <figure> with the SVG inlined as a data URI."""
    svg_path = figures.save_figure(fig, fig_dir, figures.safe_stem(stem))[1]
    # An <img> data URI keeps each SVG in its own document: ids inside matplotlib SVGs cannot clash across figures.
    data = base64.b64encode(svg_path.read_bytes()).decode("ascii")
    return (
        f"<figure><img alt='{html.escape(title)}' src='data:image/svg+xml;base64,{data}'>"
        f"<figcaption class='note'>{html.escape(title)} (files: figures/{svg_path.stem}.png, .svg)</figcaption>"
        "</figure>"
    )


def _header(study: Study) -> str:
    parts = [f"<h1>Study report: {html.escape(study.name)}</h1>"]
    if study.created:
        parts.append(f"<p class='note'>plan created {html.escape(str(study.created))}</p>")
    it = study.iterations
    if isinstance(it.get("shared"), int) and isinstance(it.get("separate"), int) and it["separate"] > 0:
        fraction = metric_value(it.get("fraction"))
        fraction = it["shared"] / it["separate"] if fraction is None else fraction
        parts.append(
            f"<p>Iteration accounting: shared trunk: {it['shared']} of {it['separate']} iterations, "
            f"{fraction:.0%} (with shared trunks the study trains {it['shared']} iterations instead of "
            f"{it['separate']} for separate runs).</p>"
        )
    counts = {s: sum(r.status == s for r in study.runs) for s in ("finished", "unfinished", "missing")}
    parts.append(f"<p>{len(study.runs)} planned runs: " + ", ".join(f"{n} {s}" for s, n in counts.items()) + ".</p>")
    for arm, summary in study.pretrain.items():
        seen, state = summary["seen"], "finished" if summary["finished"] else "unfinished"
        parts.append(
            f"<p>Pre-training for arm {html.escape(arm)} ({html.escape(summary['path'])}, {state}): "
            f"{summary['iter']} iterations, " + ", ".join(f"{seen.get(k, 0):,} {k}" for k in SEEN_KEYS) + " seen.</p>"
        )
    parts.append(f"<p class='note'>{html.escape(TOY_NOTE)}</p>")
    return "\n".join(parts)


def write_report(study_dir: str | Path) -> Path:
    """Writes STUDY/report/ (report.html, figures/, tables/) for a study folder; returns the path of report.html.

    Raises:
        ScratchdetError: study_dir has no readable plan.json; a run whose init.json contradicts its arm, or more
            than one scratch arm (`results.check_arms`), before anything is written.
    """
    study = load_study(study_dir)
    results.check_arms(study)
    runs, out = study.runs, study.root / "report"
    fig_dir, table_dir = out / "figures", out / "tables"
    fig_dir.mkdir(parents=True, exist_ok=True)
    table_dir.mkdir(parents=True, exist_ok=True)
    arms = results.study_arms(runs)
    colors = figures.arm_colors(arms)
    compared = verdict.comparisons(study)
    sentences = " ".join(html.escape(s) for s in verdict.verdict(compared, arms, results.seed_spread(study)))
    html_parts = [_header(study), f"<h2>Verdict</h2><p class='verdict'>{sentences}</p>"]
    predictions = catchup.sentences(study)
    if predictions:  # after the measured verdict, never in its place
        html_parts.append(
            "<h3>Catch-up prediction (a model's extrapolation, not a measurement)</h3><ul class='prediction'>"
            + "".join(f"<li>{html.escape(line)}</li>" for line in predictions)
            + "</ul>"
        )
    stopped = _sequential_stop(study.root)
    if stopped:
        html_parts.append(f"<h3>Sequential study: stopped early</h3><p class='stopped'>{html.escape(stopped)}</p>")
    main = results.main_size(runs) if runs else None
    if main is not None:
        hp = findings.selected_hparams(runs, main)[0]
        title = f"{study.name}: bbox AP vs iterations, train size {main}, hparams {hp} (Fig. 1)"
        group = [r for r in runs if (r.size_label, r.hparams) == (main, hp)]
        html_parts.append(_embed(figures.arms_curves_figure(group, title), fig_dir, "fig1_arms", title))
    main_compared = [c for c in compared if c.size_label == (compared[0].size_label if compared else None)]
    # Every arm compared at the longest schedule of the largest size, side by side.
    longest = [c for c in main_compared if c.schedule == main_compared[-1].schedule]
    rows = verdict.example_rows(longest) if longest else []
    if rows:
        c = longest[-1]
        columns = list(rows[0]["panels"])
        title = (
            f"Validation images: ground truth and each arm's detections (score >= 0.5) at the end of {c.schedule:g}x, "
            f"train size {c.size_label}"
        )
        run_of = {f"{results.arm_label(r.arm)} {c.schedule:g}x": r.arm for x in longest for r in x.runs().values()}
        panel_colors = {column: colors[arm] for column, arm in run_of.items()}
        fig = figures.examples_figure(rows, columns, title, panel_colors)
        html_parts.append(_embed(fig, fig_dir, "examples", title))
    grouped = "".join(
        f"<h3>{html.escape(topic)}</h3><ul>" + "".join(f"<li>{html.escape(s)}</li>" for s in lines) + "</ul>"
        for topic, lines in findings.grouped_findings(runs).items()
    )
    html_parts += [
        f"<h2>Findings</h2>{grouped}",
        f"<p class='note'>{html.escape(findings.thresholds_text())}</p>",
        "<h2>Learning curves per arm (Figs. 1, 3, 4)</h2>",
    ]
    for (size, hp), group in results.groups(runs).items():
        title = f"{study.name}: learning curves, train size {size}, hparams {hp}"
        html_parts.append(_embed(figures.learning_curves_figure(group, title), fig_dir, f"curves_{size}_{hp}", title))
    tables = [final_ap_table(runs), samples_table(runs)]
    html_parts += ["<h2>Final AP (Tables 1-2)</h2>", tables[0].html(), "<h2>Samples seen (Fig. 2)</h2>"]
    size = results.main_size(runs) if runs else None
    hp = findings.selected_hparams(runs, size)[0] if runs else None
    group = sorted((r for r in runs if (r.size_label, r.hparams) == (size, hp)), key=lambda r: (r.schedule or 0, r.arm))
    if group:
        title = f"Samples seen, train size {size}, hparams {hp} (log scale)"
        html_parts.append(_embed(figures.samples_figure(group, title), fig_dir, f"samples_{size}_{hp}", title))
    html_parts.append(tables[1].html())
    if len(results.sizes(runs)) > 1:
        points = findings.size_points(runs)
        tables.append(data_size_table(points))
        title = "Final bbox AP vs training-set size"
        html_parts += [
            "<h2>Training-set size (Figs. 7-8)</h2>",
            _embed(figures.data_size_figure(points, title), fig_dir, "data_size", title),
            tables[-1].html(),
        ]
        for size in results.smallest_sizes(runs):
            hp = findings.selected_hparams(runs, size)[0]
            title = f"Train size {size}, hparams {hp}: training loss and bbox AP vs iterations (Fig. 8)"
            fig = figures.loss_and_ap_figure([r for r in runs if (r.size_label, r.hparams) == (size, hp)], title)
            html_parts.append(_embed(fig, fig_dir, f"loss_{size}_{hp}", title))
    per_run, per_arm, compute = compute_tables(study)
    tables += [per_arm, per_run]
    html_parts += ["<h2>Compute (Fig. 2)</h2>", *(f"<p>{html.escape(line)}</p>" for line in compute)]
    html_parts += [per_arm.html(), per_run.html()]
    if len({r.hparams for r in runs}) > 1:
        tables.append(hparam_table(runs))
        html_parts += ["<h2>Hyper-parameter grid</h2>", tables[-1].html()]
    for table in tables:
        table.write(table_dir)
    path = out / "report.html"
    path.write_text(
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(study.name)} report"
        f"</title><style>{CSS}</style></head><body>\n" + "\n".join(html_parts) + "\n</body></html>\n"
    )
    return path


def _sequential_stop(root: Path) -> str | None:
    """What a sequential launch skipped and why, from STUDY/decision.json (study/stopping.py writes it; read here as
    plain JSON, so the report imports nothing of the running half), or None when the study was not stopped."""
    try:
        d = json.loads((root / "decision.json").read_text())
        jobs, schedule = list(d["not_run"]), float(d["schedule"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    hours = d.get("device_hours_not_spent")
    cost = f", about {hours:.3g} device-hours at this study's measured pace" if isinstance(hours, (int, float)) else ""
    return (
        f"The study's question was settled at {schedule:g}x ({d.get('kind')}): {d.get('reason')} "
        f"{len(jobs)} job(s) were not run ({d.get('iterations_not_run')} iterations{cost}): {', '.join(jobs)}. "
        "Rerun the study with stopping.enabled=false to train them from the shared checkpoints."
    )
