"""Stage-A image loading: reason codes for bad files, RGB conversion (transparency on white,
palette, grayscale, CMYK), EXIF orientation, extreme sizes, and image_info."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from PIL import Image

from vlqc.errors import SampleError
from vlqc.stage_a.images import image_info, load_image

WHITE, RED, BLUE = (255, 255, 255), (255, 0, 0), (0, 0, 255)


def _noisy_jpeg(path: Path, size: tuple[int, int] = (256, 256)) -> None:
    # Noise compresses badly, so the file is long enough to cut in half meaningfully.
    Image.effect_noise(size, 64).convert("RGB").save(path, format="JPEG", quality=95)


def _truncated_jpeg(path: Path) -> None:
    _noisy_jpeg(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize(
    ("make", "code"),
    [
        (lambda p: None, "missing_file"),
        (lambda p: p.write_bytes(b""), "empty_file"),
        (lambda p: p.write_bytes(b"this is not an image at all" * 10), "decode_error"),
        (_truncated_jpeg, "decode_error"),
    ],
    ids=["missing", "zero_bytes", "garbage", "truncated_jpeg"],
)
@pytest.mark.parametrize("reader", [load_image, image_info], ids=["load_image", "image_info"])
def test_bad_input_gives_code_and_names_file(tmp_path, make, code, reader):
    path = tmp_path / "坏图_1.jpg"
    make(path)
    with pytest.raises(SampleError) as info:
        reader(path)
    assert info.value.code == code
    assert info.value.path == str(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("size", [(10, 10), (6000, 4000)])
def test_extreme_sizes_load_unresized(tmp_path, size):
    path = tmp_path / "photo.jpg"
    Image.new("RGB", size, RED).save(path, quality=50)
    image = load_image(path)
    assert image.mode == "RGB"
    assert image.size == size


def test_palette_png_becomes_rgb(tmp_path):
    path = tmp_path / "palette.png"
    image = Image.new("P", (4, 4), 1)
    image.putpalette([*WHITE, *BLUE, *RED])
    image.putpixel((0, 0), 2)
    image.save(path)
    loaded = load_image(path)
    assert loaded.mode == "RGB"
    assert loaded.getpixel((0, 0)) == RED
    assert loaded.getpixel((3, 3)) == BLUE


def test_palette_png_transparency_on_white(tmp_path):
    path = tmp_path / "palette_t.png"
    image = Image.new("P", (4, 4), 0)
    image.putpalette([0, 0, 0, *RED])
    image.putpixel((0, 0), 1)
    image.save(path, transparency=0)  # black index is transparent
    loaded = load_image(path)
    assert loaded.mode == "RGB"
    assert loaded.getpixel((3, 3)) == WHITE
    assert loaded.getpixel((0, 0)) == RED


def test_rgba_png_transparent_pixel_becomes_white(tmp_path):
    path = tmp_path / "rgba.png"
    image = Image.new("RGBA", (4, 4), (0, 0, 255, 255))
    image.putpixel((0, 0), (0, 0, 0, 0))  # fully transparent black
    image.putpixel((1, 0), (255, 0, 0, 128))  # half-transparent red over white
    image.save(path)
    loaded = load_image(path)
    assert loaded.mode == "RGB"
    assert loaded.getpixel((0, 0)) == WHITE
    assert loaded.getpixel((3, 3)) == BLUE
    r, g, b = loaded.getpixel((1, 0))
    assert r == 255 and 120 <= g <= 135 and g == b


def test_la_png_transparent_pixel_becomes_white(tmp_path):
    path = tmp_path / "la.png"
    image = Image.new("LA", (2, 2), (0, 255))
    image.putpixel((0, 0), (0, 0))
    image.save(path)
    loaded = load_image(path)
    assert loaded.getpixel((0, 0)) == WHITE
    assert loaded.getpixel((1, 1)) == (0, 0, 0)


def test_grayscale_jpeg_becomes_rgb(tmp_path):
    path = tmp_path / "gray.jpg"
    Image.new("L", (16, 8), 200).save(path)
    loaded = load_image(path)
    assert loaded.mode == "RGB"
    assert loaded.size == (16, 8)
    r, g, b = loaded.getpixel((5, 5))
    assert r == g == b and abs(r - 200) <= 2


def test_cmyk_jpeg_becomes_rgb(tmp_path):
    path = tmp_path / "cmyk.jpg"
    Image.new("RGB", (8, 8), RED).convert("CMYK").save(path, quality=95)
    loaded = load_image(path)
    assert loaded.mode == "RGB"
    r, g, b = loaded.getpixel((4, 4))
    assert r > 240 and g < 15 and b < 15


def _rotated_jpeg(path: Path) -> None:
    """Stored 40x20, left half red and right half blue, EXIF orientation 6 (display: turn 90° clockwise)."""
    image = Image.new("RGB", (40, 20), RED)
    image.paste(BLUE, (20, 0, 40, 20))
    exif = Image.Exif()
    exif[0x0112] = 6
    image.save(path, quality=95, exif=exif.tobytes())


def test_exif_orientation_applied(tmp_path):
    path = tmp_path / "rotated.jpg"
    _rotated_jpeg(path)
    loaded = load_image(path)
    assert loaded.mode == "RGB"
    assert loaded.size == (20, 40)
    # Turned clockwise, the stored left (red) half is on top and the right (blue) half below.
    assert loaded.getpixel((10, 5))[0] > 200
    assert loaded.getpixel((10, 35))[2] > 200


def test_image_info_displayed_size_and_sha256(tmp_path):
    rotated, plain = tmp_path / "rotated.jpg", tmp_path / "plain.png"
    _rotated_jpeg(rotated)
    Image.new("RGB", (30, 10), RED).save(plain)
    for path, size in ((rotated, (20, 40)), (plain, (30, 10))):
        info = image_info(path)
        assert (info["width"], info["height"]) == size == load_image(path).size
        assert info["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
