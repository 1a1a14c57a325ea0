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

Transparency: an image with an alpha channel (RGBA, LA, PA) or a transparent palette/colour entry (PNG tRNS) whose
pixels are not all fully opaque is composited over white, `TRANSPARENT_BACKGROUND`, the way a web page shows it (the
default page background is white, and web annotation tools draw images on such pages); dropping the alpha channel
instead, as Pillow's convert("RGB") does, would show whatever colour the exporter left under transparent pixels
(often black, so objects drawn only in alpha vanish). An image whose alpha is 255 everywhere is read as before.

Size: an image of more pixels than the limit (data.max_image_pixels; by default Pillow's own, 2 x
PIL.Image.MAX_IMAGE_PIXELS = 178,956,970 px, above which Pillow refuses a file as a possible decompression bomb) is
refused with `ImageTooLargeError`, which says what it is and which setting raises the limit; datasets check the sizes
in their annotation files against it when they open, before training.

Every reader of detection and classification images (data/coco.py, data/voc.py, data/classification.py) goes
through `read_image`, and `scratchdet data check` through `probe_image`, so the check refuses exactly what loading
would refuse.
"""

from __future__ import annotations

import threading
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
ALPHA_MODES = ("RGBA", "LA", "PA", "La", "RGBa")
# What transparent pixels are composited over (RGB): the white of a web page, where annotation tools show images.
TRANSPARENT_BACKGROUND = (255, 255, 255)
# Pillow's default refusal threshold: Image.open raises DecompressionBombError above 2 x MAX_IMAGE_PIXELS pixels,
# and MAX_IMAGE_PIXELS defaults to 1024 * 1024 * 1024 // 4 // 3 = 89,478,485 (PIL/Image.py).
DEFAULT_MAX_IMAGE_PIXELS = 2 * 89_478_485
_PILLOW_LIMIT_LOCK = threading.Lock()  # guards the temporary change of Image.MAX_IMAGE_PIXELS in _open


class ImageTooLargeError(DataError):
    """An image has more pixels than the configured limit (data.max_image_pixels); the file itself is fine."""


def pixel_limit(max_pixels: int | None) -> int:
    """The pixel limit in force: `max_pixels`, or DEFAULT_MAX_IMAGE_PIXELS (Pillow's) for None."""
    return DEFAULT_MAX_IMAGE_PIXELS if max_pixels is None else int(max_pixels)


def too_large_message(width: int, height: int, max_pixels: int | None, what: str) -> str | None:
    """The refusal for an image of width x height px above the limit (None when it is within it).

    `what` names the image ("image file X", "the annotated size").
    """
    limit, pixels = pixel_limit(max_pixels), width * height
    if pixels <= limit:
        return None
    default = " (Pillow's decompression-bomb limit, 2 x PIL.Image.MAX_IMAGE_PIXELS)" if max_pixels is None else ""
    return (
        f"{what} is {width}x{height} = {pixels:,} pixels, more than the limit of {limit:,}{default}. The file is "
        "not broken: the limit guards against decompression bombs and memory exhaustion (a float image this size "
        f"takes {12 * pixels / 2**30:.1f} GiB). If you trust the file, set data.max_image_pixels={pixels} or more "
        "(`scratchdet data check --max-image-pixels N`), or tile the image"
    )


def _open(path: Path, max_pixels: int | None, where: dict) -> Image.Image:
    """Image.open with scratchdet's pixel limit instead of Pillow's global one.

    Pillow refuses images above 2 x Image.MAX_IMAGE_PIXELS inside Image.open, before the size can be read; a raised
    data.max_image_pixels reopens such a file with Pillow's check off (under a lock: the setting is global) and
    applies its own limit. Normal images never touch the global.

    Raises:
        ImageTooLargeError: above the limit (field "width").
    """
    try:
        pil = Image.open(path)
    except Image.DecompressionBombError:
        with _PILLOW_LIMIT_LOCK:
            saved = Image.MAX_IMAGE_PIXELS
            Image.MAX_IMAGE_PIXELS = None
            try:
                pil = Image.open(path)
            finally:
                Image.MAX_IMAGE_PIXELS = saved
    message = too_large_message(pil.width, pil.height, max_pixels, f"image file {path}")
    if message:
        pil.close()
        raise ImageTooLargeError(message, field="width", **where)
    return pil


def has_alpha(pil: Image.Image) -> bool:
    """Whether the image can hold transparent pixels: an alpha channel, or a transparent palette/colour entry."""
    return pil.mode in ALPHA_MODES or "transparency" in pil.info


def _rgb_array(shown: Image.Image) -> tuple[np.ndarray, bool]:
    """[H, W, 3] uint8 RGB of an 8-bit image as displayed, and whether transparent pixels were composited."""
    if has_alpha(shown):
        rgba = shown.convert("RGBA")
        if rgba.getextrema()[3][0] < 255:  # some pixel is not fully opaque
            background = Image.new("RGBA", rgba.size, (*TRANSPARENT_BACKGROUND, 255))
            return np.array(Image.alpha_composite(background, rgba).convert("RGB"), dtype=np.uint8), True
    return np.array(shown.convert("RGB"), dtype=np.uint8), False  # a writable copy


@dataclass(frozen=True)
class ImageHeader:
    """What an image file's header says, read without decoding the pixels.

    Attributes:
        width, height: the displayed size in pixels (EXIF orientation applied).
        mode: Pillow's pixel mode of the stored image.
        orientation: the EXIF Orientation value (1 = none or absent).
        stored_width, stored_height: the size of the stored pixel array.
        alpha: the image has an alpha channel or a transparent palette entry (transparent pixels, if any, are
            composited over TRANSPARENT_BACKGROUND when decoded).
    """

    width: int
    height: int
    mode: str
    orientation: int
    stored_width: int
    stored_height: int
    alpha: bool = False

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


def probe_image(path: str | Path, *, where: dict | None = None, max_pixels: int | None = None) -> ImageHeader:
    """Reads an image file's header: displayed size, pixel mode, EXIF orientation, alpha. No pixel decoding.

    Args:
        path: the image file.
        where: DataError context naming the annotation file and id (`path=`, `image_id=`); default the image path.
        max_pixels: data.max_image_pixels (None: Pillow's limit, DEFAULT_MAX_IMAGE_PIXELS).

    Raises:
        DataError: field "file_name" when the file is missing or not a readable image, field "mode" when its pixel
            mode would be refused by `read_image`; ImageTooLargeError (field "width") above the pixel limit.
    """
    path = Path(path)
    where = where if where is not None else {"path": str(path)}
    try:
        with _open(path, max_pixels, where) as pil:
            mode, (stored_w, stored_h), orientation = pil.mode, pil.size, _orientation(pil)
            alpha = has_alpha(pil)
    except (OSError, SyntaxError, ValueError) as e:
        raise _bad_file(path, e, where) from None
    problem = _mode_problem(mode)
    if problem:
        raise DataError(f"image file {path}: {problem}", field="mode", **where)
    width, height = (stored_h, stored_w) if orientation in _TRANSPOSED else (stored_w, stored_h)
    return ImageHeader(width, height, mode, orientation, stored_w, stored_h, alpha)


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
    max_pixels: int | None = None,
) -> torch.Tensor:
    """Decodes an image file as displayed (EXIF orientation applied, transparency composited over white) into RGB.

    Args:
        path: the image file.
        where: DataError context naming the annotation file and id (`path=`, `image_id=`); default the image path.
        expected_size: (width, height) the annotation says; a different displayed size raises DataError.
        dtype: torch.float32 gives values in [0, 1]; torch.uint8 gives 0..255 (16-bit images rounded to 8 bits).
        max_pixels: data.max_image_pixels (None: Pillow's limit, DEFAULT_MAX_IMAGE_PIXELS).

    Returns:
        [3, H, W] RGB tensor of the displayed image.

    Raises:
        DataError: missing or corrupt file (field "file_name"), a refused pixel mode (field "mode"), or a displayed
            size other than `expected_size` (field "width"/"height"; the message names the EXIF orientation when the
            stored size would have matched). ImageTooLargeError (field "width"): more pixels than the limit.
    """
    return decode_image(path, where=where, expected_size=expected_size, dtype=dtype, max_pixels=max_pixels)[0]


def decode_image(
    path: str | Path,
    *,
    where: dict | None = None,
    expected_size: tuple[int, int] | None = None,
    dtype: torch.dtype = torch.float32,
    max_pixels: int | None = None,
) -> tuple[torch.Tensor, bool]:
    """`read_image`'s tensor, and whether transparent pixels were composited over TRANSPARENT_BACKGROUND (what
    `scratchdet data check --decode` counts). Same arguments and errors as `read_image`."""
    path = Path(path)
    where = where if where is not None else {"path": str(path)}
    composited = False
    try:
        with _open(path, max_pixels, where) as pil:
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
                array, composited = _rgb_array(shown)  # [H, W, 3] uint8
    except DataError:
        raise
    except (OSError, SyntaxError, ValueError) as e:
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
            return tensor.contiguous(), composited
        return tensor.mul(255.0).round_().to(torch.uint8).contiguous(), composited
    if tensor.dtype == torch.uint8:
        return tensor.float().div_(255.0), composited
    return tensor.contiguous(), composited
