"""docs/RELIABILITY.md, promise 10: malformed COCO JSON ends in success or our own error, never a library traceback.

Hypothesis mutates a small valid COCO dict (deletions, type changes, duplicated entries, out-of-range values) or
writes random bytes, then hands the file to `CocoDetection` (constructed for training and for evaluation, every sample
read, masks decoded) and to `scratchdet data check`. Every case must end in success or a `ScratchdetError` with a
message. The images are two 8x8 PNGs, so a case costs milliseconds.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from pycocotools import mask as mask_utils

from scratchdet.cli import main
from scratchdet.data.coco import CocoDetection
from scratchdet.errors import DataError, ScratchdetError

SIZE = 8
FUZZ = settings(
    max_examples=200,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def _rect(x1: int, y1: int, x2: int, y2: int) -> np.ndarray:
    mask = np.zeros((SIZE, SIZE), dtype=np.uint8)
    mask[y1:y2, x1:x2] = 1
    return mask


def _compressed(mask: np.ndarray) -> dict:
    rle = mask_utils.encode(np.asfortranarray(mask))
    return {"size": [SIZE, SIZE], "counts": rle["counts"].decode("ascii")}


def _uncompressed(mask: np.ndarray) -> dict:
    counts, current, run = [], 0, 0
    for value in mask.flatten(order="F"):  # COCO runs go down columns and start with zeros
        if value == current:
            run += 1
        else:
            counts.append(run)
            current, run = value, 1
    return {"size": [SIZE, SIZE], "counts": [*counts, run]}


def base_coco() -> dict:
    """Two 8x8 images, two categories, polygon / compressed RLE / uncompressed RLE / crowd annotations."""
    return {
        "info": {"description": "fuzz base"},
        "images": [
            {"id": 1, "width": SIZE, "height": SIZE, "file_name": "a.png"},
            {"id": 2, "width": SIZE, "height": SIZE, "file_name": "b.png"},
        ],
        "categories": [{"id": 1, "name": "square"}, {"id": 5, "name": "disk"}],
        "annotations": [
            {
                "id": 10,
                "image_id": 1,
                "category_id": 1,
                "bbox": [1, 1, 4, 4],
                "area": 16.0,
                "iscrowd": 0,
                "segmentation": [[1, 1, 5, 1, 5, 5, 1, 5]],
            },
            {
                "id": 11,
                "image_id": 1,
                "category_id": 5,
                "bbox": [4, 4, 3, 3],
                "area": 9.0,
                "iscrowd": 0,
                "segmentation": _compressed(_rect(4, 4, 7, 7)),
            },
            {
                "id": 12,
                "image_id": 2,
                "category_id": 1,
                "bbox": [0, 0, 2, 2],
                "area": 4.0,
                "iscrowd": 0,
                "segmentation": _uncompressed(_rect(0, 0, 2, 2)),
            },
            {
                "id": 13,
                "image_id": 2,
                "category_id": 5,
                "bbox": [2, 2, 6, 6],
                "area": 36.0,
                "iscrowd": 1,
                "segmentation": _uncompressed(_rect(2, 2, 8, 8)),
            },
        ],
    }


def test_base_dataset_is_valid(fuzz_dir):
    """The unmutated dict loads: mutations start from a valid file, so failures come from the mutation."""
    json_path, image_dir = fuzz_dir
    json_path.write_text(json.dumps(base_coco()))
    dataset = CocoDetection(json_path, image_dir, train=True)
    assert len(dataset) == 2 and dataset[0][1]["masks"].shape == (2, SIZE, SIZE)


# Replacement values: wrong types, empty containers, out-of-range and non-finite numbers, odd strings.
EXTREMES = [
    0,
    -1,
    1,
    2**31,
    2**63,
    10**400,
    -(10**400),
    1e308,
    1e12,
    -1e12,
    1e7,
    0.5,
    -0.0,
    float("nan"),
    float("inf"),
    True,
    None,
    "1",
    [],
    [1, 2],
]
ODD_VALUES = st.one_of(
    st.sampled_from(EXTREMES),
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=6),
    st.sampled_from(["", "\x00", "../a.png"]),
    st.just({}),
    st.lists(st.integers(-10, 20), max_size=5),
    st.lists(st.floats(allow_nan=True, allow_infinity=True), max_size=5),
    st.dictionaries(st.sampled_from(["size", "counts", "id"]), st.integers(-3, 70), max_size=2),
)


def _locations(node, path=()):
    """Every path to a value inside `node`, the root excluded."""
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, value in items:
        yield (*path, key)
        yield from _locations(value, (*path, key))


def _get(doc, path):
    for key in path:
        doc = doc[key]
    return doc


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@st.composite
def malformed_coco(draw) -> bytes:
    """A mutated base_coco() serialized as JSON, or random bytes, or a truncated valid file."""
    kind = draw(st.sampled_from(["mutate"] * 8 + ["bytes", "truncate"]))
    if kind == "bytes":
        return draw(st.binary(max_size=300))
    if kind == "truncate":
        text = json.dumps(base_coco()).encode()
        return text[: draw(st.integers(0, len(text) - 1))]
    doc = base_coco()
    for _ in range(draw(st.integers(1, 4))):
        locations = list(_locations(doc))
        op = draw(st.sampled_from(["delete", "replace", "number", "number", "duplicate", "copy_sibling"]))
        if op == "number":  # most checks are about numbers: ids, sizes, boxes, coordinates, run lengths
            locations = [p for p in locations if _is_number(_get(doc, p))]
        if not locations:
            continue
        path = draw(st.sampled_from(locations))
        parent, key = _get(doc, path[:-1]), path[-1]
        if op == "delete":
            del parent[key]
        elif op in ("replace", "number"):
            # A copy: later mutations must not edit EXTREMES' shared lists (nor build cycles through them).
            parent[key] = copy.deepcopy(draw(ODD_VALUES if op == "replace" else st.sampled_from(EXTREMES)))
        elif op == "duplicate" and isinstance(parent, list):
            parent.insert(key, copy.deepcopy(parent[key]))  # e.g. a repeated image, annotation or category id
        elif op == "copy_sibling" and len(parent) > 1:
            keys = list(parent) if isinstance(parent, dict) else list(range(len(parent)))
            parent[key] = copy.deepcopy(parent[draw(st.sampled_from(keys))])  # same id twice, swapped fields
    return json.dumps(doc).encode()


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory) -> tuple[Path, Path]:
    """(json path to overwrite per case, folder with a.png and b.png, 8x8)."""
    root = tmp_path_factory.mktemp("fuzz")
    rng = np.random.default_rng(0)
    for name in ("a.png", "b.png"):
        Image.fromarray(rng.integers(0, 255, (SIZE, SIZE, 3), dtype=np.uint8)).save(root / name)
    return root / "instances.json", root


def _assert_own_error(error: BaseException) -> None:
    assert isinstance(error, ScratchdetError), f"{type(error).__name__} escaped: {error}"
    assert str(error).strip(), "our errors always carry a message"


@FUZZ
@given(content=malformed_coco())
def test_loader_ends_in_success_or_our_error(fuzz_dir, content):
    json_path, image_dir = fuzz_dir
    json_path.write_bytes(content)
    for train in (True, False):
        try:
            dataset = CocoDetection(json_path, image_dir, train=train, load_masks=True, check_files=True)
            for index in range(len(dataset)):
                image, target = dataset[index]
                assert image.shape[0] == 3 and target["boxes"].shape[-1] == 4
        except Exception as e:  # noqa: BLE001 - the point: which types arrive here
            _assert_own_error(e)


@FUZZ
@given(content=malformed_coco())
def test_data_check_ends_in_success_or_our_error(fuzz_dir, content):
    json_path, image_dir = fuzz_dir
    json_path.write_bytes(content)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["data", "check", str(json_path), "--images", str(image_dir)])  # anything else raises
    if code == 0:
        assert "as a training split" in out.getvalue()
    else:
        assert code == 2 and err.getvalue().startswith("error: ") and len(err.getvalue().strip()) > len("error: ")


# Crashes the fuzzer found, kept as plain regression tests (each was another exception type, or a segfault).
def _set_bbox(doc):
    doc["annotations"][0]["bbox"] = [1, 1, 10**400, 4]  # OverflowError in math.isfinite


def _set_far_polygon(doc):
    doc["annotations"][0]["segmentation"] = [[0, 0, 1e12, 0, 1e12, 1e12]]  # segfault inside pycocotools


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (_set_bbox, r"bbox must be 4 finite numbers .*annotation id 10, field 'bbox'"),
        (_set_far_polygon, r"polygon 0 has points far outside the 8x8 image .*annotation id 10, field 'segmentation'"),
    ],
)
def test_found_cases_are_data_errors(fuzz_dir, mutate, message):
    json_path, image_dir = fuzz_dir
    doc = base_coco()
    mutate(doc)
    json_path.write_text(json.dumps(doc))
    with pytest.raises(DataError, match=message):
        CocoDetection(json_path, image_dir, train=True)


@pytest.mark.parametrize(
    "text", ['{"images": [' * 100_000, '{"images": ' + "7" * 5000 + "}"], ids=["nested_too_deep", "int_of_5000_digits"]
)
def test_unparsable_json_is_a_data_error(fuzz_dir, text):
    json_path, image_dir = fuzz_dir
    json_path.write_text(text)
    with pytest.raises(DataError, match="not a readable JSON file"):
        CocoDetection(json_path, image_dir, train=True)
