"""Load ticket photos for generation, and describe them for input verification.

Every failure is a `SampleError` naming the file, with a stable code for the failure file:
`missing_file` (no such file), `empty_file` (zero bytes), `decode_error` (not an image, corrupt
or truncated). Truncated images are errors: PIL's LOAD_TRUNCATED_IMAGES stays off, so a
half-written photo is never summarised as if it were whole.

Nothing is resized here: the processor resizes to its pixel budget.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from PIL import ExifTags, Image, ImageOps

from vlqc.errors import SampleError

# What PIL raises on bad data: UnidentifiedImageError and "image file is truncated" are
# OSErrors; corrupt PNG chunks raise SyntaxError; short reads EOFError; unsupported modes
# ValueError; absurd dimensions DecompressionBombError.
_DECODE_ERRORS = (OSError, SyntaxError, EOFError, ValueError, Image.DecompressionBombError)

# EXIF orientations whose display transpose swaps width and height (see ImageOps.exif_transpose).
_SWAPS_AXES = frozenset({5, 6, 7, 8})


def load_image(path: Path) -> Image.Image:
    """The photo as displayed (EXIF orientation applied), RGB, pixels fully decoded."""
    path = Path(path)
    data = _read(path)
    with _decoding(path):
        image = _open(data)
        ImageOps.exif_transpose(image, in_place=True)
        return _to_rgb(image)


def image_info(path: Path) -> dict[str, Any]:
    """Displayed width and height and the sha256 of the stored file; decodes fully to catch bad data."""
    path = Path(path)
    data = _read(path)
    with _decoding(path):
        image = _open(data)
        orientation = image.getexif().get(ExifTags.Base.Orientation, 1)
    width, height = image.size
    if orientation in _SWAPS_AXES:
        width, height = height, width
    return {"width": width, "height": height, "sha256": hashlib.sha256(data).hexdigest()}


def _read(path: Path) -> bytes:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise SampleError("missing_file", "image file does not exist", str(path)) from None
    except OSError as exc:  # a folder or an unreadable file: there is nothing to decode
        raise SampleError("decode_error", f"cannot read image file: {exc}", str(path)) from exc
    if not data:
        raise SampleError("empty_file", "image file is empty (0 bytes)", str(path))
    return data


@contextmanager
def _decoding(path: Path) -> Iterator[None]:
    """Turn PIL's errors on bad data into a `decode_error` naming the file."""
    try:
        yield
    except _DECODE_ERRORS as exc:
        raise SampleError("decode_error", f"cannot decode image: {exc}", str(path)) from exc


def _open(data: bytes) -> Image.Image:
    # load() decodes every pixel now, so corrupt or truncated data fails here, not in the processor.
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def _to_rgb(image: Image.Image) -> Image.Image:
    """RGB; transparent areas become white (a plain convert would turn them black)."""
    if image.has_transparency_data:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image if image.mode == "RGB" else image.convert("RGB")
