"""The `scratchdet` command: parse arguments, build the config, call the library. No logic of its own.

scratchdet data synth --out DIR [--train-images N --val-images M --seed S --format coco|voc]
scratchdet data check JSON [--images DIR] [--decode] [--against OTHER_JSON] [--json]
scratchdet data synth --task classify --out DIR
scratchdet pretrain CONFIG [key=value ...]
scratchdet train CONFIG [key=value ...]
scratchdet eval RUN_DIR [checkpoint=PATH] [key=value ...]
scratchdet study SPEC.yaml [key=value ...] [--dry-run] [--replan]
scratchdet study status STUDY_DIR [--json]
scratchdet study job STUDY_DIR JOB_ID          (what the local and slurm launchers run; study/jobs.py)
scratchdet report STUDY_DIR
scratchdet model-info CONFIG [--size H W] [--json] [key=value ...]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from scratchdet.errors import ConfigError, exit_status


def _cmd_data_synth(args) -> int:
    if args.task == "classify":
        from scratchdet.data.classification import write_synthetic_classification

        summary = write_synthetic_classification(args.out, seed=args.seed)
        print(json.dumps(summary, indent=2))
        print(
            f"wrote an ImageNet-style folder {args.out}/train/<class>/, {args.out}/val/<class>/; "
            f"use it with `scratchdet pretrain CONFIG data.root={args.out}`"
        )
        return 0
    from scratchdet.data.synthetic import write_synthetic_coco

    summary = write_synthetic_coco(
        args.out,
        train_images=args.train_images,
        val_images=args.val_images,
        seed=args.seed,
        min_side=args.min_side,
        max_side=args.max_side,
    )
    print(json.dumps(summary, indent=2))
    print(
        f"wrote {args.out}/instances_train.json, {args.out}/instances_val.json and images; "
        f"use it with data.root={args.out}"
    )
    if args.format == "voc":  # the same scenes also in PASCAL VOC layout, beside the COCO files
        from scratchdet.data.voc import write_voc_layout

        voc = write_voc_layout(args.out, args.out, year=2007)
        print(json.dumps(voc, indent=2))
        print(
            f"wrote {args.out}/VOC2007/ (Annotations, JPEGImages, ImageSets/Main/{{trainval,val}}.txt); use it "
            f"with data.format=voc data.voc_root={args.out} data.voc_train_sets=[2007_trainval] "
            "data.voc_val_sets=[2007_val]"
        )
    return 0


def _json_arg(value: str | None, flag: str):
    if value is None:
        return None
    try:
        return json.loads(value)
    except json.JSONDecodeError as e:
        raise ConfigError(f'{flag} {value!r} is not JSON ({e.msg}), e.g. \'[["lhip", "rhip"]]\'') from None


def _cmd_data_check(args) -> int:
    from scratchdet.data.check import check_dataset, format_check_report
    from scratchdet.errors import DataError

    images = args.images or str(Path(args.json).parent)
    masks = False if args.boxes_only else True if args.masks else None
    try:
        report = check_dataset(
            args.json,
            images,
            masks=masks,
            gt_area=args.gt_area,
            against=args.against,
            check_files=not args.no_files,
            decode=args.decode,
            workers=args.workers,
            keypoint_flip_map=_json_arg(args.keypoint_flip_map, "--keypoint-flip-map"),
            max_image_pixels=args.max_image_pixels,
            min_size_test=args.min_size_test,
            max_size_test=args.max_size_test,
        )
    except DataError as e:  # structurally broken: nothing else can be checked; a JSON reader still gets JSON
        if args.json_output:
            print(json.dumps({"path": args.json, "error": str(e), "field": e.field}, indent=2))
        raise
    print(json.dumps(report.to_dict(), indent=2) if args.json_output else format_check_report(report))
    if report.problems:
        counts = ", ".join(f"{kind} {n}" for kind, n in report.counts().items())
        print(
            f"error: {len(report.problems)} problem(s) in {args.json} that training or evaluation would refuse "
            f"or score wrongly ({counts}); see the list above",
            file=sys.stderr,
        )
        return 2
    return 0


def _cmd_train(args) -> int:
    from scratchdet.config import load_config
    from scratchdet.distributed import env_world_size, shutdown_distributed
    from scratchdet.engine.trainer import train

    cfg = load_config(args.config, args.overrides)
    try:
        result = train(cfg)
    finally:
        shutdown_distributed()  # under torchrun: leave the process group cleanly, also after an error
    if int(os.environ.get("RANK", "0")) == 0:
        processes = f" ({env_world_size()} processes)" if env_world_size() > 1 else ""
        print(f"run folder: {result.output}{processes} (config.yaml, metrics.jsonl, checkpoints/, eval/)")
    return 0


def _single_process(command: str) -> None:
    """Refuses `command` under torchrun: only `train` coordinates several processes; the others would each write
    the same folder."""
    from scratchdet.distributed import env_world_size

    if env_world_size() > 1:
        raise ConfigError(
            f"`scratchdet {command}` runs in one process, but WORLD_SIZE={env_world_size()} (torchrun); "
            f"run it without torchrun (only `scratchdet train` trains on several processes)"
        )


def _cmd_pretrain(args) -> int:
    from scratchdet.pretrain.classify import pretrain
    from scratchdet.pretrain.config import load_pretrain_config

    _single_process("pretrain")
    result = pretrain(load_pretrain_config(args.config, args.overrides))
    print(f"run folder: {result.output}; fine-tune from it with init=pretrained weights={result.output}")
    return 0


def _cmd_study(args) -> int:
    if args.spec == "status":
        return _cmd_study_status(args)
    if args.spec == "job":
        return _cmd_study_job(args)
    from scratchdet.study.runner import dry_run, run_study

    if args.dry_run:
        print(dry_run(args.spec, args.overrides))
        return 0
    _single_process("study")
    study_dir = run_study(args.spec, args.overrides, replan=args.replan)
    print(f"study folder: {study_dir}; report: {study_dir}/report/report.html")
    return 0


def _cmd_study_status(args) -> int:
    from scratchdet.study.status import exit_code, format_status, status_json, study_status

    if len(args.overrides) != 1:
        raise ConfigError("usage: scratchdet study status STUDY_DIR [--json]")
    statuses = study_status(args.overrides[0])
    print(status_json(statuses) if args.json_output else format_status(statuses))
    return exit_code(statuses)


def _cmd_study_job(args) -> int:
    from scratchdet.study.jobs import run_and_print_job

    if len(args.overrides) != 2:
        raise ConfigError("usage: scratchdet study job STUDY_DIR JOB_ID")
    run_and_print_job(*args.overrides)
    return 0


def _cmd_report(args) -> int:
    from scratchdet.report.page import write_report

    print(f"report: {write_report(args.study_dir)}")
    return 0


def _cmd_eval(args) -> int:
    from scratchdet.distributed import shutdown_distributed
    from scratchdet.engine.run_eval import evaluate_run

    try:
        report = evaluate_run(args.run_dir, args.overrides)
    finally:
        shutdown_distributed()  # under torchrun (sharded evaluation)
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"wrote {report['path']}")
    return 0


def _cmd_model_info(args) -> int:
    from scratchdet.config import load_config
    from scratchdet.modeling.info import format_model_info, model_info

    # output= is required by the schema but unused here; a user's own output= still wins (it comes later).
    cfg = load_config(args.config, ["output=unused", *args.overrides])
    info = model_info(cfg, size=tuple(args.size))
    print(json.dumps(info, indent=2) if args.json else format_model_info(info, Path(args.config).stem))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="scratchdet", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    data = sub.add_parser("data", help="dataset tools").add_subparsers(dest="data_command", required=True)
    synth = data.add_parser("synth", help="write the synthetic COCO-format shapes dataset")
    synth.add_argument("--out", required=True)
    synth.add_argument(
        "--task",
        choices=("detect", "classify"),
        default="detect",
        help="detect: COCO-format shape scenes; classify: texture classes for pre-training",
    )
    synth.add_argument("--train-images", type=int, default=200)
    synth.add_argument("--val-images", type=int, default=50)
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--min-side", type=int, default=96)
    synth.add_argument("--max-side", type=int, default=192)
    synth.add_argument(
        "--format",
        choices=("coco", "voc"),
        default="coco",
        help="detect only: voc also writes the scenes in PASCAL VOC layout under OUT/VOC2007/",
    )
    synth.set_defaults(func=_cmd_data_synth)
    check = data.add_parser("check", help="validate a COCO json and print what cleaning would drop")
    check.add_argument("json")
    check.add_argument("--images", help="image folder (default: the json's folder)")
    check.add_argument("--no-files", action="store_true", help="do not check the image files")
    check.add_argument(
        "--decode",
        action="store_true",
        help="fully decode every image (finds truncated files a header read misses; slower)",
    )
    check.add_argument("--workers", type=int, default=None, help="threads for the image checks (default: CPUs, <= 8)")
    check.add_argument(
        "--against",
        metavar="OTHER_JSON",
        help="another split's COCO file: its categories must be the same (e.g. train vs val)",
    )
    check.add_argument(
        "--boxes-only",
        action="store_true",
        help="the file is used for boxes only (Faster R-CNN): do not require usable masks",
    )
    check.add_argument(
        "--masks",
        action="store_true",
        help="the file is used for Mask R-CNN: require usable masks (default: when any annotation has a segmentation)",
    )
    check.add_argument(
        "--gt-area",
        choices=("check", "file", "geometry"),
        default="check",
        help="data.gt_area: how a stored area that disagrees with the geometry is treated",
    )
    check.add_argument(
        "--keypoint-flip-map",
        metavar="JSON",
        help='data.keypoint_flip_map as JSON, e.g. \'[["lhip", "rhip"]]\', for keypoint names whose '
        "left/right pairing is not recognised",
    )
    check.add_argument(
        "--max-image-pixels",
        type=int,
        default=None,
        help="data.max_image_pixels: images with more pixels are refused (default: Pillow's limit, 178956970)",
    )
    check.add_argument(
        "--min-size-test", type=int, default=800, help="data.min_size_test, for the note on very elongated images"
    )
    check.add_argument(
        "--max-size-test", type=int, default=1333, help="data.max_size_test, for the note on very elongated images"
    )
    check.add_argument("--json", dest="json_output", action="store_true", help="print the report as JSON")
    check.set_defaults(func=_cmd_data_check)

    train = sub.add_parser("train", help="train a detector (from scratch or fine-tuned)")
    train.add_argument("config", help="YAML config, e.g. configs/mini/mask_rcnn_R18_FPN_GN_scratch.yaml")
    train.add_argument("overrides", nargs="*", help="key=value overrides, e.g. output=runs/a train.max_iters=100")
    train.set_defaults(func=_cmd_train)

    pre = sub.add_parser("pretrain", help="classification pre-training of a detector backbone")
    pre.add_argument("config", help="YAML config, e.g. configs/pretrain/mini_R18_GN_synth.yaml")
    pre.add_argument("overrides", nargs="*", help="key=value overrides, e.g. output=runs/pre train.max_iters=100")
    pre.set_defaults(func=_cmd_pretrain)

    study = sub.add_parser("study", help="run a scratch-vs-pre-trained grid (resumable) and write its report")
    study.add_argument(
        "spec", help="study spec YAML, e.g. configs/study/mini.yaml; or `status STUDY_DIR`, or `job STUDY_DIR JOB_ID`"
    )
    study.add_argument(
        "overrides",
        nargs="*",
        help="key=value overrides of the spec, e.g. output=runs/my-study launcher.name=slurm",
    )
    study.add_argument(
        "--dry-run", action="store_true", help="print the job graph (dependencies, iterations, device-hours) and stop"
    )
    study.add_argument(
        "--replan",
        action="store_true",
        help="set aside (into STUDY/discarded_<time>/) and train again the runs whose saved config differs from the "
        "spec's plan, instead of refusing",
    )
    study.add_argument("--json", dest="json_output", action="store_true", help="status: print JSON")
    study.set_defaults(func=_cmd_study)

    rep = sub.add_parser("report", help="(re)write a study's report: figures, tables, findings, report.html")
    rep.add_argument("study_dir")
    rep.set_defaults(func=_cmd_report)

    ev = sub.add_parser("eval", help="evaluate a run's latest (or a given) checkpoint with COCO AP")
    ev.add_argument("run_dir")
    ev.add_argument("overrides", nargs="*", help="checkpoint=PATH and key=value overrides, e.g. eval.max_images=50")
    ev.set_defaults(func=_cmd_eval)

    mi = sub.add_parser("model-info", help="parameters and FLOPs (backbone, FPN, heads) of a config's detector")
    mi.add_argument("config", help="YAML config, e.g. configs/paper/mask_rcnn_R50_FPN_GN_scratch_6x.yaml")
    mi.add_argument("overrides", nargs="*", help="key=value overrides, e.g. model.depth=101")
    mi.add_argument(
        "--size",
        type=int,
        nargs=2,
        default=[800, 1333],
        metavar=("H", "W"),
        help="input size after resizing (default 800 1333; padded to a multiple of 32)",
    )
    mi.add_argument("--json", action="store_true", help="print the counts as JSON instead of a table")
    mi.set_defaults(func=_cmd_model_info)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["study"]:  # argparse stops reading flags after a nargs="*" positional; allow them anywhere
        flags = [a for a in argv[1:] if a in ("--dry-run", "--json", "--replan")]
        argv = ["study", *flags, *(a for a in argv[1:] if a not in flags)]
    args = build_parser().parse_args(argv)
    return exit_status(args.func, args)


if __name__ == "__main__":
    sys.exit(main())
