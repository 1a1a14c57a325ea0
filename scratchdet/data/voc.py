"""PASCAL VOC detection data: parse VOC XML annotations, serve samples like `CocoDetection`, write synthetic VOC.

Layout read (the devkit's): ROOT/VOC<year>/Annotations/<name>.xml, ROOT/VOC<year>/JPEGImages/<name>.jpg and
ROOT/VOC<year>/ImageSets/Main/<split>.txt. A dataset is a list of (year, split) sets, e.g. [(2007, "trainval"),
(2012, "train")] for the paper's training set and [(2012, "val")] for its evaluation set (docs/PAPER.md, "PASCAL VOC").

Box convention: VOC XML gives 1-based, inclusive pixel coordinates (xmin=1 is the first column, xmax the last
covered column). We convert to our 0-based XYXY with x2/y2 exclusive: (xmin - 1, ymin - 1, xmax, ymax), the same
shift torchvision's and Detectron's VOC readers apply; the box width in pixels (xmax - xmin + 1) is preserved.
`evaluation/voc.py` converts back (+1 on x1/y1) so the devkit's inclusive-area IoU is computed exactly.

Difficult objects (<difficult>1</difficult>) are excluded from training targets (as in the devkit's training
lists and Detectron) and kept for evaluation, where they are neither true nor false positives: evaluation targets
carry a bool "difficult" [N] alongside "boxes" and "labels".

Structural problems (unreadable XML, missing or non-numeric fields, unknown class names, inverted boxes, missing
split lists or image files) raise `DataError` naming the file, the image and the field.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from scratchdet.data.coco import load_coco_json
from scratchdet.data.detection import DetectionDataset, SummaryCounts, Transform, is_int
from scratchdet.errors import ConfigError, DataError

# The 20 VOC classes in the devkit's order; label k (1..20) is VOC_CLASSES[k - 1], 0 is background.
VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "diningtable", "dog",
    "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip

# Synthetic objects smaller than this many box pixels are written as difficult (write_voc_layout), so the
# difficult path (excluded from training, ignored by the evaluator) is exercised on synthetic data.
SYNTH_DIFFICULT_MAX_AREA = 150.0


@dataclass
class VocSummary(SummaryCounts):
    """What loading a VOC dataset kept and dropped (the VOC counterpart of coco.DatasetSummary).

    Each object is counted once in `annotations_total`; dropped ones in exactly one of difficult_excluded (training
    only) and degenerate_boxes_dropped. `boxes_clipped` counts kept boxes clipped to the image.
    """

    difficult_total: int = 0
    difficult_excluded: int = 0


@dataclass
class _VocImage:
    name: str  # "<year>/<image name>", unique over all sets
    xml: Path
    jpeg: Path
    width: int
    height: int
    boxes: np.ndarray  # float32 [N, 4] 0-based XYXY, clipped to the image
    labels: np.ndarray  # int64 [N] 1..20
    difficult: np.ndarray  # bool [N]


def _text(node: ET.Element, tag: str, xml: Path, name: str, field: str) -> str:
    child = node.find(tag)
    if child is None or child.text is None or not child.text.strip():
        raise DataError(
            f"VOC annotation has no <{tag}>; the XML is malformed, fix it", path=str(xml), image_id=name, field=field
        )
    return child.text.strip()


def _number(node: ET.Element, tag: str, xml: Path, name: str, field: str) -> float:
    text = _text(node, tag, xml, name, field)
    try:
        value = float(text)
    except ValueError:
        raise DataError(f"<{tag}> must be a number, got {text!r}", path=str(xml), image_id=name, field=field) from None
    if not np.isfinite(value):
        raise DataError(f"<{tag}> must be finite, got {text!r}", path=str(xml), image_id=name, field=field)
    return value


def parse_voc_xml(xml: str | Path, name: str | None = None) -> dict:
    """Reads one VOC annotation file.

    Returns:
        {"width", "height", "objects": [{"name", "bbox": (xmin, ymin, xmax, ymax) as written (1-based, inclusive),
        "difficult": bool}]}.

    Raises:
        DataError: unreadable XML, a missing/non-numeric size or box field, a bad <difficult> or an inverted box.
    """
    xml = Path(xml)
    name = name or xml.stem
    try:
        root = ET.parse(xml).getroot()
    except FileNotFoundError:
        raise DataError(
            "VOC annotation file not found; check data.voc_root and the ImageSets list", path=str(xml), image_id=name
        ) from None
    except ET.ParseError as e:
        raise DataError(f"not well-formed XML ({e}); re-export the annotation", path=str(xml), image_id=name) from None
    size = root.find("size")
    if size is None:
        raise DataError("VOC annotation has no <size>", path=str(xml), image_id=name, field="size")
    width = _number(size, "width", xml, name, "size/width")
    height = _number(size, "height", xml, name, "size/height")
    if width <= 0 or height <= 0 or width != int(width) or height != int(height):
        raise DataError(
            f"image size {width}x{height} must be positive integers", path=str(xml), image_id=name, field="size"
        )
    objects = []
    for k, obj in enumerate(root.findall("object")):
        cls = _text(obj, "name", xml, name, f"object[{k}]/name")
        box = obj.find("bndbox")
        if box is None:
            raise DataError("object has no <bndbox>", path=str(xml), image_id=name, field=f"object[{k}]/bndbox")
        coords = tuple(_number(box, t, xml, name, f"object[{k}]/bndbox/{t}") for t in ("xmin", "ymin", "xmax", "ymax"))
        if coords[2] < coords[0] or coords[3] < coords[1]:
            raise DataError(
                f"inverted box (xmin, ymin, xmax, ymax) = {coords}; xmax >= xmin and ymax >= ymin",
                path=str(xml),
                image_id=name,
                field=f"object[{k}]/bndbox",
            )
        diff_node = obj.find("difficult")
        diff_text = (diff_node.text or "0").strip() if diff_node is not None else "0"
        if diff_text not in ("0", "1"):
            raise DataError(
                f"<difficult> must be 0 or 1, got {diff_text!r}",
                path=str(xml),
                image_id=name,
                field=f"object[{k}]/difficult",
            )
        objects.append({"name": cls, "bbox": coords, "difficult": diff_text == "1"})
    return {"width": int(width), "height": int(height), "objects": objects}


def normalize_sets(sets: Any) -> list[tuple[int, str]]:
    """["2007_trainval", ...] or [[2007, "trainval"], ...] -> [(2007, "trainval"), ...].

    Raises:
        ConfigError: an entry of another shape, or no sets at all.
    """
    out = []
    for entry in sets or ():
        if isinstance(entry, str):
            year, _, split = entry.partition("_")
            entry = (int(year), split) if year.isdigit() and split else entry
        if (
            not isinstance(entry, (list, tuple))
            or len(entry) != 2
            or not is_int(entry[0])
            or not isinstance(entry[1], str)
        ):
            raise ConfigError(f"VOC set {entry!r} must be YEAR_SPLIT or [year, split], e.g. 2007_trainval")
        out.append((int(entry[0]), entry[1]))
    if not out:
        raise ConfigError("no VOC sets given; e.g. data.voc_train_sets=[2007_trainval,2012_train]")
    return out


class VocDetection(DetectionDataset):
    """Images and box targets from PASCAL VOC sets; the interface of `CocoDetection` (no masks).

    Samples are `(image, target)`: image float32 [3, H, W] RGB in [0, 1]; target has "boxes" float32 [N, 4] (XYXY,
    0-based absolute pixels), "labels" int64 [N] (1..20), "difficult" bool [N] (evaluation only; training targets
    hold no difficult objects), "image_id" int (position in the concatenated set lists), "orig_size" (H, W) and
    "file" (the JPEG path). Index with an int or `(index, sample_seed)`.

    Attributes:
        image_ids: the images this dataset yields (ints; `image_names[i]` is "<year>/<name>").
        cat_id_to_label / label_to_cat_id: identity maps over 1..20 (VOC has no separate category ids).
        class_names: "__background__" then the 20 VOC classes.
        num_classes: 21.
        summary: counts of what loading kept and dropped.
        json_path: a description of the sets (what error messages and SkipUnreadableImages name).
    """

    def __init__(
        self,
        root: str | Path,
        sets: list,
        *,
        train: bool,
        subset: int | None = None,
        subset_seed: int = 0,
        transform: Transform | None = None,
        check_files: bool = True,
        max_image_pixels: int | None = None,
    ):
        """Reads and validates every listed annotation.

        Args:
            root: folder holding VOC<year>/ subfolders (VOCdevkit).
            sets: "YEAR_SPLIT" names or (year, split) pairs; images are concatenated in list then file order.
            train: True drops difficult objects and skips images left without objects; False keeps all.
            subset: use this many images, drawn with a seeded permutation (nested subsets, as CocoDetection).
            transform: called as `transform(image, target, rng)`.
            check_files: check that every yielded JPEG exists.
            max_image_pixels: data.max_image_pixels; images whose <size> is larger are refused now (None: Pillow's
                limit, data/images.py).

        Raises:
            DataError: missing set list, malformed XML, unknown class name, missing image file, an image listed
                twice (field "ImageSets": one picture under two ids), an image above the pixel limit.
            ConfigError: malformed `sets`, subset < 1.
        """
        self.root = Path(root)
        self.sets = normalize_sets(sets)
        self.train = train
        self.transform = transform
        self.max_image_pixels = max_image_pixels
        self.json_path = f"{self.root} sets {[f'{y}_{s}' for y, s in self.sets]}"
        self.class_names = ["__background__", *VOC_CLASSES]
        self.num_classes = len(self.class_names)
        self.cat_id_to_label = {k: k for k in range(1, self.num_classes)}
        self.label_to_cat_id = dict(self.cat_id_to_label)
        label_of = {name: k for k, name in enumerate(VOC_CLASSES, start=1)}

        summary = VocSummary(self.json_path)
        self._images: dict[int, _VocImage] = {}
        candidates: list[int] = []
        listed: dict[tuple[int, str], Path] = {}  # (year, name) -> the ImageSets file that listed it first
        for year, split in self.sets:
            base = self.root / f"VOC{year}"
            listing = base / "ImageSets" / "Main" / f"{split}.txt"
            if not listing.is_file():
                raise DataError(
                    f"VOC split list not found: {listing}; check data.voc_root and the (year, split) sets",
                    path=str(listing),
                )
            names = [line.split()[0] for line in listing.read_text().splitlines() if line.strip()]
            for name in names:
                if (year, name) in listed:
                    # One picture under two ids: evaluation would score each copy's detections against the other
                    # copy's objects too, and training would weigh it twice (the COCO rule, data/validate.py).
                    raise DataError(
                        f"image {year}/{name} is listed twice (in {listed[(year, name)]} and {listing}); list each "
                        "image once (check data.voc_train_sets / data.voc_val_sets and the ImageSets files)",
                        path=str(listing),
                        image_id=f"{year}/{name}",
                        field="ImageSets",
                    )
                listed[(year, name)] = listing
                image_id = summary.images_total
                summary.images_total += 1
                image = self._load(base, year, name, label_of, summary)
                if len(image.labels) == 0:
                    summary.images_without_annotations += 1
                    if train:
                        continue
                self._images[image_id] = image
                candidates.append(image_id)
        if train and not candidates:  # stop before a run folder exists, as for COCO files
            raise DataError(
                f"no usable training images: {summary.images_total} images, {summary.annotations_total} objects, "
                f"none left after cleaning ({summary.difficult_excluded} difficult objects excluded, "
                f"{summary.degenerate_boxes_dropped} boxes under 1 px dropped); training needs at least one image "
                "with a non-difficult object",
                path=self.json_path,
            )
        self.image_ids = self.select_subset(candidates, subset, subset_seed)
        self.image_names = {i: self._images[i].name for i in self.image_ids}
        self.check_pixel_limit()
        if check_files:
            self.check_files("check data.voc_root")
        summary.images_used, summary.subset = len(self.image_ids), subset
        summary.annotations_used = sum(len(self._images[i].labels) for i in self.image_ids)
        self.summary = summary

    def _load(self, base: Path, year: int, name: str, label_of: dict[str, int], summary: VocSummary) -> _VocImage:
        xml = base / "Annotations" / f"{name}.xml"
        ann = parse_voc_xml(xml, f"{year}/{name}")
        width, height = ann["width"], ann["height"]
        boxes, labels, difficult = [], [], []
        for k, obj in enumerate(ann["objects"]):
            summary.annotations_total += 1
            summary.difficult_total += obj["difficult"]
            if obj["name"] not in label_of:
                raise DataError(
                    f"unknown VOC class {obj['name']!r}; the 20 classes are {list(VOC_CLASSES)}",
                    path=str(xml),
                    image_id=f"{year}/{name}",
                    field=f"object[{k}]/name",
                )
            if obj["difficult"] and self.train:
                summary.difficult_excluded += 1
                continue
            xmin, ymin, xmax, ymax = obj["bbox"]
            box = (xmin - 1.0, ymin - 1.0, xmax, ymax)  # 1-based inclusive -> 0-based XYXY (module docstring)
            clipped = (max(box[0], 0.0), max(box[1], 0.0), min(box[2], float(width)), min(box[3], float(height)))
            if clipped[2] - clipped[0] < 1 or clipped[3] - clipped[1] < 1:
                summary.degenerate_boxes_dropped += 1
                continue
            summary.boxes_clipped += clipped != box
            boxes.append(clipped)
            labels.append(label_of[obj["name"]])
            difficult.append(obj["difficult"])
        return _VocImage(
            name=f"{year}/{name}",
            xml=xml,
            jpeg=base / "JPEGImages" / f"{name}.jpg",
            width=width,
            height=height,
            boxes=np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
            labels=np.asarray(labels, dtype=np.int64),
            difficult=np.asarray(difficult, dtype=bool),
        )

    def image_file(self, image_id: int) -> Path:
        return self._images[image_id].jpeg

    def annotated_size(self, image_id: int) -> tuple[int, int]:
        info = self._images[image_id]
        return info.width, info.height

    def image_where(self, image_id: int) -> dict:
        info = self._images[image_id]
        return {"path": str(info.xml), "image_id": info.name}

    def ground_truth(self, image_id: int) -> dict[str, np.ndarray]:
        """Evaluation ground truth of one image: "boxes" [N, 4] 0-based XYXY, "labels" [N], "difficult" [N]."""
        info = self._images[image_id]
        return {"boxes": info.boxes, "labels": info.labels, "difficult": info.difficult}

    def _target(self, image_id: int, image: torch.Tensor) -> dict:
        info = self._images[image_id]
        target: dict[str, Any] = {
            "boxes": torch.from_numpy(info.boxes.copy()),
            "labels": torch.from_numpy(info.labels.copy()),
            "image_id": image_id,
            "orig_size": (info.height, info.width),
            "file": str(info.jpeg),
        }
        if not self.train:
            target["difficult"] = torch.from_numpy(info.difficult.copy())
        return target


def _xml_text(name: str, width: int, height: int, objects: list[tuple[str, tuple[int, ...], bool]]) -> str:
    root = ET.Element("annotation")
    ET.SubElement(root, "filename").text = f"{name}.jpg"
    size = ET.SubElement(root, "size")
    for tag, value in (("width", width), ("height", height), ("depth", 3)):
        ET.SubElement(size, tag).text = str(value)
    for cls, box, difficult in objects:
        obj = ET.SubElement(root, "object")
        ET.SubElement(obj, "name").text = cls
        ET.SubElement(obj, "difficult").text = str(int(difficult))
        bnd = ET.SubElement(obj, "bndbox")
        for tag, value in zip(("xmin", "ymin", "xmax", "ymax"), box, strict=True):
            ET.SubElement(bnd, tag).text = str(value)
    ET.indent(root)
    return ET.tostring(root, encoding="unicode") + "\n"


def write_voc_layout(coco_dir: str | Path, out_root: str | Path, *, year: int = 2007) -> dict:
    """Converts a `scratchdet data synth` folder into VOC layout under out_root/VOC<year>/.

    COCO split "train" becomes ImageSets/Main/trainval.txt and "val" becomes val.txt. Images are re-encoded as
    JPEG (quality 95). The i-th COCO category (by sorted id) is written as the i-th VOC class name, since VOC XML
    only knows those 20 names. Crowd regions are skipped. COCO XYWH boxes are rounded outward to whole pixels and
    written 1-based inclusive (xmin = floor(x) + 1, xmax = ceil(x + w)). Objects whose box area is below
    SYNTH_DIFFICULT_MAX_AREA pixels are marked difficult (deterministic, so the difficult path is tested).

    Returns:
        {"trainval": {"images", "objects", "difficult"}, "val": {...}, "root": out_root}.
    """
    coco_dir, out_root = Path(coco_dir), Path(out_root)
    base = out_root / f"VOC{year}"
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    summary: dict[str, Any] = {"root": str(out_root)}
    for coco_split, voc_split in (("train", "trainval"), ("val", "val")):
        json_path = coco_dir / f"instances_{coco_split}.json"
        data = load_coco_json(json_path)
        cat_ids = sorted(c["id"] for c in data["categories"])
        if len(cat_ids) > len(VOC_CLASSES):
            raise DataError(
                f"{len(cat_ids)} categories do not fit VOC's 20 classes", path=str(json_path), field="categories"
            )
        cls_of = {cid: VOC_CLASSES[k] for k, cid in enumerate(cat_ids)}
        anns_of: dict[int, list[dict]] = {}
        for ann in data["annotations"]:
            anns_of.setdefault(ann["image_id"], []).append(ann)
        names, n_obj, n_diff = [], 0, 0
        for img in sorted(data["images"], key=lambda i: i["id"]):
            name = f"{year}_{coco_split}_{img['id']:06d}"
            w, h = img["width"], img["height"]
            objects = []
            for ann in anns_of.get(img["id"], []):
                if ann.get("iscrowd", 0):
                    continue
                x, y, bw, bh = ann["bbox"]
                x1, y1 = max(int(np.floor(x)), 0), max(int(np.floor(y)), 0)
                x2, y2 = min(int(np.ceil(x + bw)), w), min(int(np.ceil(y + bh)), h)
                if x2 - x1 < 1 or y2 - y1 < 1:
                    continue
                difficult = (x2 - x1) * (y2 - y1) < SYNTH_DIFFICULT_MAX_AREA
                objects.append((cls_of[ann["category_id"]], (x1 + 1, y1 + 1, x2, y2), difficult))
                n_obj, n_diff = n_obj + 1, n_diff + difficult
            with Image.open(coco_dir / coco_split / img["file_name"]) as pil:
                pil.convert("RGB").save(base / "JPEGImages" / f"{name}.jpg", quality=95)
            (base / "Annotations" / f"{name}.xml").write_text(_xml_text(name, w, h, objects))
            names.append(name)
        (base / "ImageSets" / "Main" / f"{voc_split}.txt").write_text("".join(f"{n}\n" for n in names))
        summary[voc_split] = {"images": len(names), "objects": n_obj, "difficult": n_diff}
    (base / "synthetic_source.json").write_text(json.dumps({"coco_dir": str(coco_dir)}) + "\n")
    return summary
