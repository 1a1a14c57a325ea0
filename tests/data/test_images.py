"""Image files to pixels: EXIF orientation, 16-bit and refused modes (scratchdet/data/images.py), through datasets."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from scratchdet.data.coco import CocoDetection
from scratchdet.data.images import probe_image, read_image
from scratchdet.errors import DataError

# Displayed scene of the orientation tests: 40 wide, 24 tall, a red block at x 4..13, y 2..9 on black.
SHOWN_W, SHOWN_H = 40, 24
BLOCK = (4, 2, 14, 10)  # XYXY


def _shown() -> np.ndarray:
    pixels = np.zeros((SHOWN_H, SHOWN_W, 3), dtype=np.uint8)
    x1, y1, x2, y2 = BLOCK
    pixels[y1:y2, x1:x2, 0] = 255
    return pixels


# Stored pixels whose EXIF orientation turns them into _shown(): the inverse of each orientation's transform.
_STORED = {
    1: lambda a: a,
    3: lambda a: np.rot90(a, 2),  # shown = stored rotated 180
    6: lambda a: np.rot90(a, 1),  # shown = stored rotated 90 clockwise, so stored = shown rotated 90 counter-clockwise
    8: lambda a: np.rot90(a, -1),
}


def _write_jpeg(path, orientation: int) -> None:
    stored = np.ascontiguousarray(_STORED[orientation](_shown()))
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(stored).save(path, quality=100, subsampling=0, exif=exif.tobytes())


@pytest.mark.parametrize("orientation", [1, 3, 6, 8])
def test_exif_orientation_is_applied_so_boxes_drawn_on_the_displayed_image_fit(tmp_path, orientation):
    path = tmp_path / f"o{orientation}.jpg"
    _write_jpeg(path, orientation)
    header = probe_image(path)
    assert (header.width, header.height, header.orientation) == (SHOWN_W, SHOWN_H, orientation)
    image = read_image(path, expected_size=(SHOWN_W, SHOWN_H))
    assert image.shape == (3, SHOWN_H, SHOWN_W)
    x1, y1, x2, y2 = BLOCK
    assert image[0, y1:y2, x1:x2].mean() > 0.9  # the annotated block is red, as displayed
    assert image[0, y2 + 2 :, x2 + 2 :].mean() < 0.1


def test_size_mismatch_from_a_quarter_turn_names_the_exif_orientation(tmp_path):
    path = tmp_path / "o6.jpg"
    _write_jpeg(path, 6)
    with pytest.raises(DataError, match="EXIF orientation 6") as info:
        read_image(path, where={"path": "x.json", "image_id": 4}, expected_size=(SHOWN_H, SHOWN_W))  # stored size
    assert info.value.image_id == 4 and info.value.field in ("width", "height")


def test_sixteen_bit_grayscale_is_scaled_from_its_full_range(tmp_path):
    values = np.full((8, 10), 20000, np.uint16)
    values[2:5, 3:7] = 60000
    path = tmp_path / "i16.png"
    Image.fromarray(values).save(path)
    assert Image.open(path).mode.startswith("I;16")
    image = read_image(path)
    assert image.shape == (3, 8, 10) and image.dtype == torch.float32
    torch.testing.assert_close(image[:, 3, 4], torch.full((3,), 60000 / 65535))
    torch.testing.assert_close(image[:, 0, 0], torch.full((3,), 20000 / 65535))
    as_bytes = read_image(path, dtype=torch.uint8)  # the classification reader's form
    assert as_bytes[0, 3, 4].item() == round(60000 / 65535 * 255) and as_bytes[0, 0, 0].item() == 78


@pytest.mark.parametrize(
    ("mode", "array"), [("F", np.full((6, 6), 0.5, np.float32)), ("I", np.full((6, 6), 100000, np.int32))]
)
def test_modes_without_a_display_range_are_refused_naming_file_and_mode(tmp_path, mode, array):
    path = tmp_path / f"{mode}.tif"
    Image.fromarray(array, mode).save(path)
    for call in (probe_image, read_image):
        with pytest.raises(DataError, match=f"mode '{mode}'") as info:
            call(path, where={"path": "ann.json", "image_id": 9})
        assert str(path) in str(info.value) and info.value.field == "mode" and info.value.image_id == 9


def test_eight_bit_modes_read_the_same_scene(tmp_path):
    gray = np.full((6, 8), 77, np.uint8)
    gray[1:3, 2:5] = 233
    expected = read_image(_save(tmp_path / "l.png", Image.fromarray(gray, "L")))
    for name, pil in (
        ("rgba.png", Image.fromarray(gray, "L").convert("RGBA")),
        ("p.png", Image.fromarray(gray, "L").convert("P")),
        ("la.png", Image.fromarray(gray, "L").convert("LA")),
    ):
        torch.testing.assert_close(read_image(_save(tmp_path / name, pil)), expected)
    assert expected[0, 1, 2].item() == pytest.approx(233 / 255)


def _save(path, pil):
    pil.save(path)
    return path


def test_coco_dataset_reads_exif_rotated_and_16_bit_images_as_annotated(tmp_path):
    _write_jpeg(tmp_path / "rot.jpg", 3)
    values = np.full((SHOWN_H, SHOWN_W), 1000, np.uint16)
    x1, y1, x2, y2 = BLOCK
    values[y1:y2, x1:x2] = 65535
    Image.fromarray(values).save(tmp_path / "deep.png")
    box = [x1, y1, x2 - x1, y2 - y1]
    spec = {
        "categories": [{"id": 1, "name": "block"}],
        "images": [
            {"id": i, "file_name": name, "width": SHOWN_W, "height": SHOWN_H}
            for i, name in ((1, "rot.jpg"), (2, "deep.png"))
        ],
        "annotations": [{"id": i, "image_id": i, "category_id": 1, "bbox": box, "iscrowd": 0} for i in (1, 2)],
    }
    (tmp_path / "a.json").write_text(__import__("json").dumps(spec))
    ds = CocoDetection(tmp_path / "a.json", tmp_path, train=True, load_masks=False)
    for index in range(2):
        image, target = ds[index]
        bx1, by1, bx2, by2 = target["boxes"][0].int().tolist()
        assert image[0, by1:by2, bx1:bx2].mean() > 0.9, ds.image_ids[index]
        assert image[0, by2 + 2 :, bx2 + 2 :].mean() < 0.1
