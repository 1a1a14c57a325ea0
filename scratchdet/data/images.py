"""The one place image files become pixels, and the rules for what those pixels mean.

Convention: pixels **as displayed**. A JPEG's EXIF Orientation tag is applied (the image is rotated/mirrored the
way viewers and annotation tools show it), so boxes drawn on the displayed image land on the same pixels here;
detectron2 does the same (`detectron2.data.detection_utils.read_image`). Width and height in an annotation file are
compared with the displayed size.

Pixel modes: 8-bit images of any common mode (1, L, P, RGB, RGBA, LA, PA, CMYK, YCbCr) are converted to RGB by
Pillow. 16-bit grayscale (I;16, I;16B, ...) is mapped linearly from its full range 0..65535 to [0, 1] and repeated
over three channels; Pillow's own convert("RGB") clips it to 255 and gives a white image. Modes without a standard
display range (32-bit integer I, float F) and colour spaces Pillow cannot convert faithfully (LAB, HSV) are refused
with the file and the mode named: convert those images to 8- or 16-bit first.

Every reader of detection and classification images (data/coco.py, data/voc.py, data/classification.py) goes
through `read_image`, and `scratchdet data check` through `probe_image`, so the check refuses exactly what loading
would refuse.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from scratchdet.errors import DataError

_EXIF_ORIENTATION = 0x0112  # EXIF tag 274
# Orientation values 5-8 include a 90-degree turn: the displayed width is the stored height.
_TRANSPOSED = (5, 6, 7, 8)
_ORIENTATION_NAMES = {
    2: "mirrored",
    3: "rotated 180",
    4: "flipped vertically",
    5: "mirrored + rotated 270",
    6: "rotated 90",
    7: "mirrored + rotated 90",
    8: "rotated 270",
}
EIGHT_BIT_MODES = ("1", "L", "P", "RGB", "RGBA", "RGBX", "LA", "PA", "La", "RGBa", "CMYK", "YCbCr")
SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")


@dataclass(frozen=True)
class ImageHeader:
    """What an image file's header says, read without decoding the pixels.

    Attributes:
        width, height: the displayed size in pixels (EXIF orientation applied).
        mode: Pillow's pixel mode of the stored image.
        orientation: the EXIF Orientation value (1 = none or absent).
        stored_width, stored_height: the size of the stored pixel array.
    """

    width: int
    height: int
    mode: str
    orientation: int
    stored_width: int
    stored_height: int

    @property
    def oriented(self) -> bool:
        return self.orientation in _ORIENTATION_NAMES


def _orientation(pil: Image.Image) -> int:
    try:
        value = pil.getexif().get(_EXIF_ORIENTATION, 1)
    except (OSError, SyntaxError, ValueError, TypeError):  # a broken EXIF block: Pillow then shows raw pixels too
        return 1
    return value if isinstance(value, int) and value in _ORIENTATION_NAMES else 1


def _mode_problem(mode: str) -> str | None:
    if mode in EIGHT_BIT_MODES or mode in SIXTEEN_BIT_MODES:
        return None
    return (
        f"pixel mode {mode!r} cannot be read faithfully (no standard display range or colour conversion); "
        "convert the image to 8-bit RGB/grayscale or 16-bit grayscale"
    )


def _bad_file(path: Path, error: Exception, where: dict) -> DataError:
    if isinstance(error, FileNotFoundError):
        return DataError(f"image file not found: {path}", field="file_name", **where)
    # Pillow reports truncated/corrupt files as OSError, some broken PNG chunks as SyntaxError.
    return DataError(
        f"cannot decode image file {path}: {error}; the file is corrupt or truncated, replace it",
        field="file_name",
        **where,
    )


def probe_image(path: str | Path, *, where: dict | None = None) -> ImageHeader:
    """Reads an image file's header: displayed size, pixel mode and EXIF orientation. No pixel decoding.

    Args:
        path: the image file.
        where: DataError context naming the annotation file and id (`path=`, `image_id=`); default the image path.

    Raises:
        DataError: field "file_name" when the file is missing or not a readable image, field "mode" when its pixel
            mode would be refused by `read_image`.
    """
    path = Path(path)
    where = where if where is not None else {"path": str(path)}
    try:
        with Image.open(path) as pil:
            mode, (stored_w, stored_h), orientation = pil.mode, pil.size, _orientation(pil)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise _bad_file(path, e, where) from None
    problem = _mode_problem(mode)
    if problem:
        raise DataError(f"image file {path}: {problem}", field="mode", **where)
    width, height = (stored_h, stored_w) if orientation in _TRANSPOSED else (stored_w, stored_h)
    return ImageHeader(width, height, mode, orientation, stored_w, stored_h)


def describe_orientation(header: ImageHeader) -> str:
    """'EXIF orientation 6 (rotated 90)' for messages; '' when the image has no orientation tag."""
    if not header.oriented:
        return ""
    return f"EXIF orientation {header.orientation} ({_ORIENTATION_NAMES[header.orientation]})"


def read_image(
    path: str | Path,
    *,
    where: dict | None = None,
    expected_size: tuple[int, int] | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Decodes an image file as displayed (EXIF orientation applied) into RGB.

    Args:
        path: the image file.
        where: DataError context naming the annotation file and id (`path=`, `image_id=`); default the image path.
        expected_size: (width, height) the annotation says; a different displayed size raises DataError.
        dtype: torch.float32 gives values in [0, 1]; torch.uint8 gives 0..255 (16-bit images rounded to 8 bits).

    Returns:
        [3, H, W] RGB tensor of the displayed image.

    Raises:
        DataError: missing or corrupt file (field "file_name"), a refused pixel mode (field "mode"), or a displayed
            size other than `expected_size` (field "width"/"height"; the message names the EXIF orientation when the
            stored size would have matched).
    """
    path = Path(path)
    where = where if where is not None else {"path": str(path)}
    try:
        with Image.open(path) as pil:
            mode, orientation = pil.mode, _orientation(pil)
            problem = _mode_problem(mode)
            if problem:
                raise DataError(f"image file {path}: {problem}", field="mode", **where)
            pil.load()  # forces the full decode, so truncation surfaces here
            shown = ImageOps.exif_transpose(pil) if orientation != 1 else pil
            if mode in SIXTEEN_BIT_MODES:
                values = np.asarray(shown, dtype=np.float32) / 65535.0  # [H, W], full 16-bit range -> [0, 1]
                array = np.repeat(values[:, :, None], 3, axis=2)
            else:
                array = np.array(shown.convert("RGB"), dtype=np.uint8)  # [H, W, 3], a writable copy
    except DataError:
        raise
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise _bad_file(path, e, where) from None
    height, width = array.shape[:2]
    if expected_size is not None and (width, height) != tuple(expected_size):
        exp_w, exp_h = expected_size
        hint = "fix the JSON or the image"
        if orientation in _TRANSPOSED and (height, width) == (exp_w, exp_h):
            hint = (
                f"the file's EXIF orientation {orientation} ({_ORIENTATION_NAMES[orientation]}) turns it; "
                "scratchdet reads images as displayed, as annotation tools show them, so the annotation's size "
                "(and boxes) look made on the raw pixels: re-export the annotations on the displayed images, "
                "or save the images with their pixels rotated and the tag removed"
            )
        raise DataError(
            f"image file {path} is {width}x{height} (WxH, as displayed) but the annotation says "
            f"{exp_w}x{exp_h}; {hint}",
            field="width" if width != exp_w else "height",
            **where,
        )
    tensor = torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1)
    if dtype == torch.uint8:
        if tensor.dtype == torch.uint8:
            return tensor.contiguous()
        return tensor.mul(255.0).round_().to(torch.uint8).contiguous()
    if tensor.dtype == torch.uint8:
        return tensor.float().div_(255.0)
    return tensor.contiguous()
