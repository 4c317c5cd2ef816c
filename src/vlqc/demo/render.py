"""Draw a `Scene` with Pillow, add lighting and noise, and store it the way a phone would.

Attribute differences are drawn with big colour and shape cues (rust-brown heads, copper
strands, offset heads, a yellow arrow's direction, a thick corrugated sleeve vs a thin yellow
fibre, a loop, parallel vs tangled strands, sharp vs blurred text) so that a tiny model can
learn them at well under one megapixel.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from vlqc.demo.scene import Decor, Point, Scene, SceneObject, issues_of

RGB = tuple[int, int, int]

BRAND_BODY: dict[str, RGB] = {"华为": (55, 57, 62), "中兴": (35, 85, 165), "爱立信": (228, 228, 222)}
BRAND_ACCENT: dict[str, RGB] = {"华为": (205, 30, 40), "中兴": (240, 240, 245), "爱立信": (20, 40, 115)}
BRAND_TEXT = {"华为": "HUAWEI", "中兴": "ZTE", "爱立信": "ERICSSON"}
SILVER: RGB = (185, 187, 192)
RUST: RGB = (140, 68, 28)
COPPER: RGB = (225, 120, 40)
ARROW: RGB = (245, 200, 0)
BARE_FIBRE: RGB = (250, 205, 0)
WIRE_COLORS: tuple[RGB, ...] = ((25, 25, 28), (40, 70, 165), (170, 40, 40), (215, 215, 210))
GROUND_GREEN: RGB = (120, 175, 40)
Z_ORDER = {"bbu": 0, "bbu_shield": 1, "connect_point": 2, "fiber": 3, "wire": 3, "label": 4}

# EXIF orientation o: PIL's exif_transpose applies DISPLAY_TRANSPOSE[o] to the stored pixels.
DISPLAY_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_INVERSE = {
    Image.Transpose.ROTATE_90: Image.Transpose.ROTATE_270,
    Image.Transpose.ROTATE_270: Image.Transpose.ROTATE_90,
}
EXIF_ORIENTATION_TAG = 0x0112


def stored_transpose(orientation: int) -> Image.Transpose:
    """The transform that turns the displayed scene into the stored pixels (the inverse of the display one)."""
    method = DISPLAY_TRANSPOSE[orientation]
    return _INVERSE.get(method, method)


def transpose_points(points: Sequence[Point], method: Image.Transpose, size: tuple[int, int]) -> list[Point]:
    """Map continuous pixel coordinates through `Image.transpose(method)` of an image of `size`."""
    w, h = size
    T = Image.Transpose
    maps = {
        T.FLIP_LEFT_RIGHT: lambda x, y: (w - x, y),
        T.FLIP_TOP_BOTTOM: lambda x, y: (x, h - y),
        T.ROTATE_180: lambda x, y: (w - x, h - y),
        T.ROTATE_90: lambda x, y: (y, w - x),
        T.ROTATE_270: lambda x, y: (h - y, x),
        T.TRANSPOSE: lambda x, y: (y, x),
        T.TRANSVERSE: lambda x, y: (h - y, w - x),
    }
    return [maps[method](x, y) for x, y in points]


@lru_cache(maxsize=64)
def _font(size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=max(8, size))


def render(scene: Scene, rng: np.random.Generator) -> Image.Image:
    """The photo as displayed (before any EXIF storage transform)."""
    img = Image.new("RGB", (scene.width, scene.height))
    draw = ImageDraw.Draw(img)
    _background(draw, scene, rng)
    for decor in scene.decor:
        DECOR[decor.kind](draw, decor, rng)
    for obj in sorted(scene.objects, key=lambda o: Z_ORDER[o.kind]):
        OBJECTS[obj.kind](img, draw, obj, rng)
    return _camera(img, rng)


def _camera(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """A colour cast, uneven lighting, sensor noise and sometimes slight defocus.
    Integer maths and a lookup table: this touches every pixel and dominates generation time."""
    w, h = img.size
    gain = rng.uniform(0.9, 1.1, 3)
    img = img.point([min(255, round(v * g)) for g in gain for v in range(256)])
    gx = np.linspace(-0.5, 0.5, w, dtype=np.float32)[None, :]
    gy = np.linspace(-0.5, 0.5, h, dtype=np.float32)[:, None]
    light = rng.uniform(0.8, 1.12) * (1 + rng.uniform(-0.3, 0.3) * gx + rng.uniform(-0.3, 0.3) * gy)
    arr = np.asarray(img).astype(np.uint16)
    arr *= (128 * light).astype(np.uint16)[..., None]  # at most 255 * 1.46 * 128: fits in uint16
    arr >>= 7
    noisy = arr.astype(np.int16)
    k = int(rng.integers(3, 13))
    noisy += rng.integers(-k, k + 1, (h, w, 3), dtype=np.int16)
    np.clip(noisy, 0, 255, out=noisy)
    out = Image.fromarray(noisy.astype(np.uint8))
    if rng.random() < 0.2:
        out = out.filter(ImageFilter.BoxBlur(1 if max(w, h) < 1400 else 2))
    return out


def _jitter(color: RGB, rng: np.random.Generator, amount: int = 12) -> RGB:
    return tuple(int(np.clip(c + rng.integers(-amount, amount + 1), 0, 255)) for c in color)  # type: ignore[return-value]


def _shade(color: RGB, factor: float) -> RGB:
    return tuple(int(np.clip(c * factor, 0, 255)) for c in color)  # type: ignore[return-value]


# --- backgrounds and decor --------------------------------------------------------------------


def _background(draw: ImageDraw.ImageDraw, scene: Scene, rng: np.random.Generator) -> None:
    w, h = scene.width, scene.height
    if scene.view == "rack":
        draw.rectangle((0, 0, w, h), fill=_jitter((38, 40, 44), rng, 8))
        side = _jitter((78, 80, 86), rng, 10)
        draw.rectangle((0, 0, 0.035 * w, h), fill=side)
        draw.rectangle((0.965 * w, 0, w, h), fill=side)
    elif scene.view == "strips":
        wall = _pick_color(rng, ((198, 200, 202), (212, 205, 190), (186, 193, 202), (176, 176, 170)))
        draw.rectangle((0, 0, w, h), fill=_jitter(wall, rng, 8))
    else:
        sky = _jitter((150, 190, 230), rng, 20)
        draw.rectangle((0, 0, w, h), fill=sky)


def _pick_color(rng: np.random.Generator, colors: Sequence[RGB]) -> RGB:
    return colors[int(rng.integers(len(colors)))]


def _rail(draw: ImageDraw.ImageDraw, d: Decor, rng: np.random.Generator) -> None:
    x0, y0, x1, y1 = d.box
    draw.rectangle(d.box, fill=(150, 152, 156), outline=(95, 95, 100))
    hole = 0.3 * (x1 - x0)
    y = y0 + hole
    while y < y1:
        cx = (x0 + x1) / 2
        draw.rectangle((cx - hole / 2, y, cx + hole / 2, y + hole), fill=(30, 30, 34))
        y += 2.4 * hole


def _filler(draw: ImageDraw.ImageDraw, d: Decor, rng: np.random.Generator) -> None:
    x0, y0, x1, y1 = d.box
    draw.rectangle(d.box, fill=_jitter((140, 140, 135), rng, 10), outline=(90, 90, 90))
    n = d.params["slits"]
    for i in range(n):
        x = x0 + (x1 - x0) * (0.3 + 0.6 * i / n)
        draw.rectangle((x, y0 + 0.25 * (y1 - y0), x + 0.012 * (x1 - x0), y1 - 0.25 * (y1 - y0)), fill=(70, 70, 70))


def _ear(draw: ImageDraw.ImageDraw, d: Decor, rng: np.random.Generator) -> None:
    draw.rectangle(d.box, fill=_jitter((95, 96, 102), rng, 6), outline=(50, 50, 55), width=2)


def _plate(draw: ImageDraw.ImageDraw, d: Decor, rng: np.random.Generator) -> None:
    """Cabinet ground point: a grey plate with a yellow warning triangle and the ground symbol."""
    draw.rounded_rectangle(
        d.box, radius=0.1 * (d.box[3] - d.box[1]), fill=_jitter((165, 168, 172), rng, 6), outline=(90, 90, 95), width=3
    )
    cx, cy, s = d.params["symbol"]
    draw.polygon(
        [(cx, cy - 0.5 * s), (cx + 0.5 * s, cy + 0.4 * s), (cx - 0.5 * s, cy + 0.4 * s)],
        fill=(245, 205, 20),
        outline=(20, 20, 20),
    )
    lw = max(2, int(0.06 * s))
    draw.line([(cx, cy - 0.25 * s), (cx, cy + 0.08 * s)], fill=(20, 20, 20), width=lw)
    for k, half in enumerate((0.22, 0.14, 0.06)):
        y = cy + 0.08 * s + k * 0.09 * s
        draw.line([(cx - half * s, y), (cx + half * s, y)], fill=(20, 20, 20), width=lw)


def _busbar(draw: ImageDraw.ImageDraw, d: Decor, rng: np.random.Generator) -> None:
    """Ground busbar: a long tinned bar with yellow-green striped ends."""
    x0, y0, x1, y1 = d.box
    draw.rectangle(d.box, fill=_jitter((210, 208, 200), rng, 6), outline=(120, 120, 115), width=2)
    stripe = min(y1 - y0, 0.04 * (x1 - x0))
    for end in (x0, x1 - 3 * stripe):
        for k in range(3):
            draw.rectangle((end + k * stripe, y0, end + (k + 0.5) * stripe, y1), fill=GROUND_GREEN)
            draw.rectangle((end + (k + 0.5) * stripe, y0, end + (k + 1) * stripe, y1), fill=(240, 215, 30))


def _panel(dark: bool):
    """ODF panel (light, empty ports are dark squares) or BBU port board (dark, silver cages)."""

    def draw_panel(draw: ImageDraw.ImageDraw, d: Decor, rng: np.random.Generator) -> None:
        fill = (35, 36, 40) if dark else (228, 228, 224)
        draw.rectangle(d.box, fill=_jitter(fill, rng, 6), outline=(80, 80, 85), width=3)
        half = d.params["port"] / 2
        cy = (d.box[1] + d.box[3]) / 2
        for x in d.params["ports"]:
            if dark:
                draw.rectangle(
                    (x - half * 1.2, cy - half, x + half * 1.2, cy + half), fill=SILVER, outline=(60, 60, 60)
                )
            draw.rectangle((x - half * 0.7, cy - half * 0.6, x + half * 0.7, cy + half * 0.6), fill=(15, 15, 18))

    return draw_panel


def _ground(draw: ImageDraw.ImageDraw, d: Decor, rng: np.random.Generator) -> None:
    draw.rectangle(d.box, fill=tuple(d.params["color"]))


def _building(draw: ImageDraw.ImageDraw, d: Decor, rng: np.random.Generator) -> None:
    x0, y0, x1, y1 = d.box
    draw.rectangle(d.box, fill=tuple(d.params["color"]))
    for y in np.arange(y0 + 0.1 * (y1 - y0), y1 - 0.1 * (y1 - y0), 0.15 * (y1 - y0)):
        for x in np.arange(x0 + 0.1 * (x1 - x0), x1 - 0.15 * (x1 - x0), 0.25 * (x1 - x0)):
            draw.rectangle((x, y, x + 0.12 * (x1 - x0), y + 0.07 * (y1 - y0)), fill=(70, 90, 120))


DECOR = {
    "rail": _rail,
    "filler": _filler,
    "ear": _ear,
    "plate": _plate,
    "busbar": _busbar,
    "odf": _panel(dark=False),
    "ports": _panel(dark=True),
    "ground": _ground,
    "building": _building,
}


# --- annotated objects ------------------------------------------------------------------------


def _bbu(img: Image.Image, draw: ImageDraw.ImageDraw, obj: SceneObject, rng: np.random.Generator) -> None:
    """Brand by body colour and logo: Huawei dark + red fan, ZTE blue + white ZTE, Ericsson white + blue stripes."""
    quad = obj.draw.get("body", obj.points)
    brand = obj.attrs["品牌"]
    draw.polygon(quad, fill=_jitter(BRAND_BODY[brand], rng, 6), outline=_shade(BRAND_BODY[brand], 0.6), width=3)
    xs, ys = [p[0] for p in quad], [p[1] for p in quad]
    x0, y0, x1, y1 = max(xs[0], xs[3]), max(ys[0], ys[1]), min(xs[1], xs[2]), min(ys[2], ys[3])
    u = y1 - y0
    lx, cy = x0 + 0.12 * u, (y0 + y1) / 2
    accent = BRAND_ACCENT[brand]
    font = _font(int(0.3 * u))
    if brand == "华为":
        for k in range(-2, 3):  # a red fan of petals
            a = math.radians(90 + 22 * k)
            tip = (lx + 0.35 * u + 0.32 * u * math.cos(a), cy - 0.32 * u * math.sin(a))
            base = (lx + 0.35 * u, cy + 0.12 * u)
            side = (0.05 * u * math.sin(a), 0.05 * u * math.cos(a))
            draw.polygon(
                [base, (tip[0] + side[0], tip[1] + side[1]), (tip[0] - side[0], tip[1] - side[1])], fill=accent
            )
        draw.text((lx + 0.75 * u, cy), "HUAWEI", font=font, fill=(235, 235, 235), anchor="lm")
        logo_end = lx + 0.75 * u + font.getlength("HUAWEI")
    elif brand == "中兴":
        big = _font(int(0.55 * u))
        draw.text(
            (lx, cy), "ZTE", font=big, fill=accent, anchor="lm", stroke_width=max(1, int(0.03 * u)), stroke_fill=accent
        )
        logo_end = lx + big.getlength("ZTE")
    else:
        for k in range(3):  # three slanted stripes
            sx = lx + k * 0.16 * u
            draw.polygon(
                [
                    (sx + 0.1 * u, cy - 0.28 * u),
                    (sx + 0.18 * u, cy - 0.28 * u),
                    (sx + 0.08 * u, cy + 0.28 * u),
                    (sx, cy + 0.28 * u),
                ],
                fill=accent,
            )
        draw.text((lx + 0.6 * u, cy), "ERICSSON", font=font, fill=accent, anchor="lm")
        logo_end = lx + 0.6 * u + font.getlength("ERICSSON")
    port = 0.16 * u
    px = max(x0 + 0.42 * (x1 - x0), logo_end + 0.3 * u)
    while px < min(x1, x0 + 0.9 * (x1 - x0)) - port:
        draw.rectangle((px, cy - port / 2, px + port * 1.3, cy + port / 2), fill=(18, 18, 20))
        px += port * 2
    for k in range(3):
        draw.ellipse(
            (
                x0 + 0.3 * (x1 - x0) + k * 0.14 * u,
                y1 - 0.22 * u,
                x0 + 0.3 * (x1 - x0) + k * 0.14 * u + 0.08 * u,
                y1 - 0.14 * u,
            ),
            fill=(60, 220, 90),
        )


def _shield(img: Image.Image, draw: ImageDraw.ImageDraw, obj: SceneObject, rng: np.random.Generator) -> None:
    """A vented panel with a brand stripe and a big yellow arrow: right = correct, left = wrong."""
    quad = obj.points
    draw.polygon(quad, fill=_jitter((176, 180, 186), rng, 6), outline=(100, 100, 108), width=3)
    x0, y0 = max(quad[0][0], quad[3][0]), max(quad[0][1], quad[1][1])
    x1, y1 = min(quad[1][0], quad[2][0]), min(quad[2][1], quad[3][1])
    h, w = y1 - y0, x1 - x0
    for k in range(1, 5):
        y = y0 + h * k / 5
        draw.line([(x0 + 0.18 * w, y), (x0 + 0.3 * w, y)], fill=(90, 92, 98), width=max(2, int(0.05 * h)))
        draw.line([(x1 - 0.25 * w, y), (x1 - 0.05 * w, y)], fill=(90, 92, 98), width=max(2, int(0.05 * h)))
    brand = obj.attrs["品牌"]
    stripe = (205, 30, 40) if brand == "华为" else (35, 85, 165)
    draw.rectangle((x0 + 0.02 * w, y0 + 0.08 * h, x0 + 0.14 * w, y1 - 0.08 * h), fill=stripe)
    draw.text(
        (x0 + 0.08 * w, (y0 + y1) / 2),
        BRAND_TEXT[brand][:3],
        font=_font(int(min(0.3 * h, 0.035 * w))),
        fill=(245, 245, 245),
        anchor="mm",
    )
    sign = 1 if obj.attrs["安装方向"] == "方向正确" else -1
    cx, cy, length, thick = x0 + 0.57 * w, (y0 + y1) / 2, min(0.36 * w, 2.6 * h), 0.26 * h
    tail, head_base, tip = cx - sign * length / 2, cx + sign * length / 6, cx + sign * length / 2
    arrow = [
        (tail, cy - thick / 2), (head_base, cy - thick / 2), (head_base, cy - 0.4 * h), (tip, cy),
        (head_base, cy + 0.4 * h), (head_base, cy + thick / 2), (tail, cy + thick / 2),
    ]  # fmt: skip
    draw.polygon(arrow, fill=ARROW, outline=(40, 40, 40), width=2)


def _disc(draw: ImageDraw.ImageDraw, c: Point, r: float, **kw) -> None:
    draw.ellipse((c[0] - r, c[1] - r, c[0] + r, c[1] + r), **kw)


def _hexagon(c: Point, r: float) -> list[Point]:
    return [(c[0] + r * math.cos(math.pi / 3 * k), c[1] + r * math.sin(math.pi / 3 * k)) for k in range(6)]


def _rotate(points: Sequence[Point], c: Point, degrees: float) -> list[Point]:
    a = math.radians(degrees)
    ca, sa = math.cos(a), math.sin(a)
    return [(c[0] + (x - c[0]) * ca - (y - c[1]) * sa, c[1] + (x - c[0]) * sa + (y - c[1]) * ca) for x, y in points]


def _point(img: Image.Image, draw: ImageDraw.ImageDraw, obj: SceneObject, rng: np.random.Generator) -> None:
    (x0, y0), (x1, y1) = obj.points
    s, c = x1 - x0, ((x0 + x1) / 2, (y0 + y1) / 2)
    subtype, issues = obj.attrs["类别"], issues_of(obj.attrs)
    if subtype.endswith("光纤插头"):
        _plug(draw, c, s, subtype, "未拧紧" in issues)
    else:
        _screw(draw, c, s, subtype, issues, rng)


def _screw(
    draw: ImageDraw.ImageDraw, c: Point, s: float, subtype: str, issues: list[str], rng: np.random.Generator
) -> None:
    rusty = "生锈" in issues
    metal = RUST if rusty else SILVER
    if subtype != "BBU安装螺丝":
        # A ring lug under the head with its cable; cabinet lugs hang down, busbar lugs point up.
        d = 1 if subtype == "机柜处接地螺丝" else -1
        # 复接: a second lug with a red cable fans out under the same head.
        lugs = [(0.0, GROUND_GREEN)] + (
            [(50.0 * (1 if rng.random() < 0.5 else -1), (190, 30, 30))] if "复接" in issues else []
        )
        for angle, cable in reversed(lugs):
            tongue = [
                (c[0] - 0.22 * s, c[1]),
                (c[0] + 0.22 * s, c[1]),
                (c[0] + 0.15 * s, c[1] + d * 0.36 * s),
                (c[0] - 0.15 * s, c[1] + d * 0.36 * s),
            ]
            barrel = [
                (c[0] - 0.14 * s, c[1] + d * 0.36 * s),
                (c[0] + 0.14 * s, c[1] + d * 0.36 * s),
                (c[0] + 0.14 * s, c[1] + d * 0.44 * s),
                (c[0] - 0.14 * s, c[1] + d * 0.44 * s),
            ]
            stub = [
                (c[0] - 0.12 * s, c[1] + d * 0.44 * s),
                (c[0] + 0.12 * s, c[1] + d * 0.44 * s),
                (c[0] + 0.12 * s, c[1] + d * 0.5 * s),
                (c[0] - 0.12 * s, c[1] + d * 0.5 * s),
            ]
            copper = "露铜" in issues
            draw.polygon(_rotate(stub, c, angle), fill=COPPER if copper else cable)
            draw.polygon(_rotate(barrel, c, angle), fill=COPPER if copper else _shade(metal, 0.95))
            draw.polygon(_rotate(tongue, c, angle), fill=metal, outline=(70, 70, 70))
            if copper:  # bare copper strands fanning out of the crimp
                for k in (-2, -1, 0, 1, 2):
                    end = (c[0] + k * 0.1 * s, c[1] + d * 0.5 * s)
                    draw.line(
                        _rotate([(c[0] + k * 0.03 * s, c[1] + d * 0.36 * s), end], c, angle),
                        fill=COPPER,
                        width=max(2, int(0.05 * s)),
                    )
    head = c
    if "未拧紧" in issues:
        # The head stands off its seat: a dark seat ring and thread show beside the shifted head.
        head = (c[0] + 0.13 * s, c[1] - 0.13 * s)
        _disc(draw, c, 0.3 * s, fill=(25, 25, 25))
        for k in range(4):
            t = 0.25 + 0.18 * k
            p = (c[0] + (head[0] - c[0]) * t, c[1] + (head[1] - c[1]) * t)
            _disc(draw, p, 0.2 * s, outline=(230, 230, 230), width=max(1, int(0.025 * s)))
    if subtype == "BBU安装螺丝":
        if "未拧紧" not in issues:
            _disc(draw, c, 0.42 * s, fill=_shade(metal, 1.1), outline=(60, 60, 60))
        _disc(draw, head, 0.3 * s, fill=metal, outline=(50, 50, 50), width=2)
        arm, lw = 0.17 * s, max(2, int(0.06 * s))
        draw.line([(head[0] - arm, head[1]), (head[0] + arm, head[1])], fill=(40, 40, 40), width=lw)
        draw.line([(head[0], head[1] - arm), (head[0], head[1] + arm)], fill=(40, 40, 40), width=lw)
    else:
        if "露铜" in issues:  # a copper halo where the conductor shows around the head
            _disc(draw, head, 0.36 * s, fill=COPPER)
        draw.polygon(_hexagon(head, 0.28 * s), fill=metal, outline=(50, 50, 50))
        _disc(draw, head, 0.12 * s, fill=_shade(metal, 0.8))
    if rusty:
        for _ in range(6):
            p = (head[0] + rng.uniform(-0.18, 0.18) * s, head[1] + rng.uniform(-0.18, 0.18) * s)
            _disc(draw, p, rng.uniform(0.03, 0.06) * s, fill=(80, 35, 12))


def _plug(draw: ImageDraw.ImageDraw, c: Point, s: float, subtype: str, loose: bool) -> None:
    """ODF end: a blue SC plug; BBU end: a beige LC duplex plug. Unseated = pulled out, ferrule showing."""
    odf = subtype == "ODF端光纤插头"
    body_color, boot_color, cord = (
        ((45, 95, 205), (110, 150, 230), (250, 205, 0)) if odf else ((232, 222, 196), (70, 70, 75), (60, 200, 210))
    )
    pull = 0.2 * s if loose else 0.0
    top = c[1] - 0.32 * s
    draw.rectangle((c[0] - 0.3 * s, top, c[0] + 0.3 * s, top + 0.12 * s), fill=(12, 12, 14))  # the port mouth
    if loose:
        draw.rectangle((c[0] - 0.06 * s, top + 0.1 * s, c[0] + 0.06 * s, top + 0.1 * s + pull), fill=(250, 250, 250))
    by = top + 0.08 * s + pull
    if odf:
        draw.rectangle((c[0] - 0.25 * s, by, c[0] + 0.25 * s, by + 0.36 * s), fill=body_color, outline=(20, 20, 40))
    else:
        for dx in (-0.14, 0.14):
            draw.rectangle(
                (c[0] + (dx - 0.11) * s, by, c[0] + (dx + 0.11) * s, by + 0.3 * s),
                fill=body_color,
                outline=(60, 60, 50),
            )
        draw.rectangle((c[0] - 0.25 * s, by + 0.05 * s, c[0] + 0.25 * s, by + 0.1 * s), fill=(20, 20, 20))
    bot = by + 0.36 * s
    draw.polygon(
        [
            (c[0] - 0.17 * s, bot),
            (c[0] + 0.17 * s, bot),
            (c[0] + 0.08 * s, bot + 0.12 * s),
            (c[0] - 0.08 * s, bot + 0.12 * s),
        ],
        fill=boot_color,
    )
    draw.line([(c[0], bot + 0.12 * s), (c[0], c[1] + 0.5 * s)], fill=cord, width=max(2, int(0.05 * s)))


def _normals(path: Sequence[Point]) -> list[Point]:
    out = []
    for i in range(len(path)):
        a, b = path[max(0, i - 1)], path[min(len(path) - 1, i + 1)]
        dx, dy = b[0] - a[0], b[1] - a[1]
        n = math.hypot(dx, dy) or 1.0
        out.append((-dy / n, dx / n))
    return out


def _sleeve(draw: ImageDraw.ImageDraw, path: Sequence[Point], width: float, body: RGB, ridge: RGB, every: int) -> None:
    """A thick tube with cross ridges every few path points (a corrugated sleeve or armour)."""
    draw.line(path, fill=body, width=int(width), joint="curve")
    normals = _normals(path)
    for i in range(0, len(path), every):
        (x, y), (nx, ny) = path[i], normals[i]
        draw.line(
            [(x - nx * width / 2, y - ny * width / 2), (x + nx * width / 2, y + ny * width / 2)],
            fill=ridge,
            width=max(2, int(width / 6)),
        )


def _fiber(img: Image.Image, draw: ImageDraw.ImageDraw, obj: SceneObject, rng: np.random.Generator) -> None:
    path, width = _dense(obj.draw["path"], obj.draw["width"] / 3), obj.draw["width"]
    detail = obj.attrs.get("保护细节")
    if detail is None:
        draw.line(path, fill=BARE_FIBRE, width=int(width), joint="curve")
        return
    half = len(path) // 2
    corrugated, armoured = {"蛇形管": (path, []), "铠装": ([], path), "蛇形管+铠装": (path[: half + 1], path[half:])}[
        detail
    ]
    if corrugated:
        _sleeve(draw, corrugated, width, (25, 25, 25), (110, 110, 110), 2)
    if armoured:
        _sleeve(draw, armoured, width * 0.9, (178, 180, 186), (70, 72, 80), 3)


def _dense(path: Sequence[Point], step: float) -> list[Point]:
    """Resample a path at about `step` px so ridges are evenly spaced."""
    out = [path[0]]
    for a, b in zip(path, path[1:]):
        n = max(1, int(math.hypot(b[0] - a[0], b[1] - a[1]) / max(step, 1.0)))
        out += [(a[0] + (b[0] - a[0]) * k / n, a[1] + (b[1] - a[1]) * k / n) for k in range(1, n + 1)]
    return out


def _wire(img: Image.Image, draw: ImageDraw.ImageDraw, obj: SceneObject, rng: np.random.Generator) -> None:
    width = obj.draw["width"]
    for strand, color in zip(obj.draw["strands"], obj.draw["colors"]):
        draw.line(strand, fill=WIRE_COLORS[color], width=int(width), joint="curve")
    tw, th = obj.draw["tie"]
    for x, y in obj.draw["ties"]:
        draw.rectangle((x - th / 2, y - tw / 2, x + th / 2, y + tw / 2), fill=(245, 245, 240), outline=(150, 150, 150))


def _label(img: Image.Image, draw: ImageDraw.ImageDraw, obj: SceneObject, rng: np.random.Generator) -> None:
    """White label with black text; an unreadable one is heavily blurred."""
    (x0, y0), (x1, y1) = obj.points
    h = y1 - y0
    draw.rectangle((x0, y0, x1, y1), fill=_jitter((242, 242, 236), rng, 6), outline=(120, 120, 120), width=2)
    draw.text(
        ((x0 + x1) / 2, (y0 + y1) / 2), obj.draw["text"], font=_font(int(0.6 * h)), fill=(15, 15, 15), anchor="mm"
    )
    if obj.attrs.get("可读性") == "不可读":
        box = tuple(int(round(v)) for v in (x0, y0, x1, y1))
        img.paste(img.crop(box).filter(ImageFilter.GaussianBlur(0.22 * h)), box[:2])


OBJECTS = {"bbu": _bbu, "bbu_shield": _shield, "connect_point": _point, "fiber": _fiber, "wire": _wire, "label": _label}
