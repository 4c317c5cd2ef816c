"""What a demo photo shows: annotated objects placed on a canvas, plus unannotated decor.

`tickets.py` plans a photo semantically (`PhotoPlan`: which objects, with which attributes);
`build_scene` places them in pixels. Attributes use the compressed desc vocabulary of
docs/taxonomy.md#questions-and-answers (`类别` plus keys such as `品牌`, `符合性`); `export.py` maps them to the raw
annotation answers. Geometry is in the displayed frame (what a viewer sees after EXIF
orientation); `render.py` draws it.

Layouts are deliberately simple (a rack stack, or horizontal strips of one kind each) so that
a tiny model can learn the attributes from big colour and shape cues.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np

Point = tuple[float, float]
Box = tuple[float, float, float, float]
Attrs = dict[str, str]
T = TypeVar("T")

BRANDS = ("华为", "中兴", "爱立信")
BRAND_WEIGHTS = (0.45, 0.35, 0.2)
SHIELD_BRANDS = ("华为", "中兴")  # Ericsson BBUs never get a shield (docs/missions.md#the-seven-missions)
PROTECTIONS = ("蛇形管", "铠装", "蛇形管+铠装")
BEND_OK = "半径合理"
BEND_BAD = "半径不合理<4cm或成环"
# Issues each connect-point subtype can show; fibre plugs can only be unseated.
ISSUES: dict[str, tuple[str, ...]] = {
    "BBU安装螺丝": ("未拧紧", "生锈"),
    "机柜处接地螺丝": ("未拧紧", "露铜", "复接", "生锈"),
    "地排处接地螺丝": ("未拧紧", "露铜", "复接", "生锈"),
    "ODF端光纤插头": ("未拧紧",),
    "BBU端光纤插头": ("未拧紧",),
}
SUBTYPES = tuple(ISSUES)
LABEL_TEXTS = ("BBU-01", "BBU-02", "GND-A1", "ODF-03", "PWR-12", "FIB-2B", "RACK-7", "5G-BBU1")

KIND_OF: dict[str, str] = {
    "BBU设备": "bbu",
    "挡风板": "bbu_shield",
    "光纤": "fiber",
    "电线": "wire",
    "标签": "label",
    **{subtype: "connect_point" for subtype in SUBTYPES},
}

GAP_RATIO = 0.75  # shield gap height relative to a BBU's height in a rack


def pick(rng: np.random.Generator, items: Sequence[T], weights: Sequence[float] | None = None) -> T:
    """One element of `items` (keeps Python types, unlike rng.choice on strings)."""
    if weights is None:
        return items[int(rng.integers(len(items)))]
    return items[int(rng.choice(len(items), p=np.asarray(weights) / sum(weights)))]


# --- attribute constructors (desc vocabulary) -------------------------------------------------


def bbu(brand: str, *, partial: bool = False, need: bool = False, equipped: bool = True) -> Attrs:
    """A BBU; `need` = a shield is required (a free gap below it), `equipped` = the shield is there."""
    attrs = {"类别": "BBU设备", "品牌": brand, "可见性": "部分" if partial else "完整"}
    attrs["挡风板需求"] = "空间充足需安装" if need else "免装"
    if need:
        attrs["挡风板符合性"] = "按要求配备" if equipped else "未按要求配备"
    return attrs


def shield(brand: str, *, correct: bool = True) -> Attrs:
    return {"类别": "挡风板", "品牌": brand, "可见性": "完整", "安装方向": "方向正确" if correct else "方向错误"}


def point(subtype: str, issues: Sequence[str] = ()) -> Attrs:
    attrs = {"类别": subtype, "可见性": "完整", "符合性": "不符合" if issues else "符合"}
    if issues:
        attrs["问题"] = "|".join(issues)
    return attrs


def fiber(protection: str | None, *, bend_ok: bool = True) -> Attrs:
    """`protection` is one of PROTECTIONS, or None for a bare fibre."""
    attrs = {"类别": "光纤", "保护措施": "有保护" if protection else "无保护"}
    if protection:
        attrs["保护细节"] = protection
    attrs["弯曲半径"] = BEND_OK if bend_ok else BEND_BAD
    return attrs


def wire(*, tidy: bool = True) -> Attrs:
    return {"类别": "电线", "捆扎": "整齐" if tidy else "散乱"}


def label(text: str | None) -> Attrs:
    """A label with readable `text`, or an unreadable (blurred) one when None."""
    return {"类别": "标签", "文本": text} if text else {"类别": "标签", "可读性": "不可读"}


def issues_of(attrs: Attrs) -> list[str]:
    return attrs["问题"].split("|") if attrs.get("问题") else []


# --- plans and scenes -------------------------------------------------------------------------


@dataclass
class Unit:
    """One BBU in a rack stack. A gap below it follows from `挡风板需求`; a shield fills the gap
    when it is 按要求配备. Up to two mounting screws sit on its ears; a label on its front."""

    bbu: Attrs
    shield: Attrs | None = None
    screws: list[Attrs] = field(default_factory=list)
    label: Attrs | None = None

    @property
    def gap(self) -> bool:
        return self.bbu["挡风板需求"] == "空间充足需安装"


@dataclass
class Strip:
    """A horizontal band of one kind: plate | busbar | ear | odf | ports | fiber | wire | label | shield."""

    kind: str
    objects: list[Attrs]


@dataclass
class PhotoPlan:
    view: str  # rack | strips | irrelevant
    units: list[Unit] = field(default_factory=list)
    strips: list[Strip] = field(default_factory=list)

    def objects(self) -> list[Attrs]:
        out: list[Attrs] = []
        for unit in self.units:
            out += [unit.bbu, *([unit.shield] if unit.shield else []), *unit.screws]
            out += [unit.label] if unit.label else []
        for strip in self.strips:
            out += strip.objects
        return out


@dataclass
class SceneObject:
    """An annotated object. `points`: quad = 4 corners clockwise, rect = 2 opposite corners,
    line = the annotation polyline. `draw` holds render-only detail (dense paths, full body)."""

    attrs: Attrs
    shape: str
    points: list[Point]
    draw: dict[str, Any] = field(default_factory=dict)
    extent: list[Point] | None = None  # the drawn footprint of a line (all strands, full width)

    @property
    def kind(self) -> str:
        return KIND_OF[self.attrs["类别"]]

    @property
    def footprint(self) -> list[Point]:
        """Points whose bounding box covers what is drawn (the legacy export's rectangle)."""
        return self.extent if self.extent is not None else self.points


@dataclass
class Decor:
    """Unannotated context: rails, filler equipment, ground plate, busbar, panels."""

    kind: str
    box: Box
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class Scene:
    width: int
    height: int
    view: str
    decor: list[Decor]
    objects: list[SceneObject]


Layout = tuple[list[Decor], list[SceneObject]]


def build_scene(plan: PhotoPlan, width: int, height: int, rng: np.random.Generator) -> Scene:
    builders = {"rack": _rack, "strips": _strips, "irrelevant": _irrelevant}
    decor, objects = builders[plan.view](plan, width, height, rng)
    return Scene(width, height, plan.view, decor, objects)


# --- geometry helpers -------------------------------------------------------------------------


def _quad(box: Box, rng: np.random.Generator, jitter: float) -> list[Point]:
    """Corners of `box` (clockwise from top-left), each nudged by up to `jitter` px: a slight perspective."""
    x0, y0, x1, y1 = box
    corners = [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]
    return [(x + rng.uniform(-jitter, jitter), y + rng.uniform(-jitter, jitter)) for x, y in corners]


def _clip_quad(quad: list[Point], width: int, height: int) -> list[Point]:
    return [(min(max(x, 0.0), width - 1.0), min(max(y, 0.0), height - 1.0)) for x, y in quad]


def _square(cx: float, cy: float, side: float) -> list[Point]:
    return [(cx - side / 2, cy - side / 2), (cx + side / 2, cy + side / 2)]


def _smooth(ctrl: Sequence[Point], per_segment: int = 12) -> list[Point]:
    """Catmull-Rom spline through the control points (a natural-looking cable path)."""
    pts = [ctrl[0], *ctrl, ctrl[-1]]
    out: list[Point] = []
    for i in range(1, len(pts) - 2):
        p0, p1, p2, p3 = (np.asarray(p) for p in pts[i - 1 : i + 3])
        for t in np.linspace(0, 1, per_segment, endpoint=False):
            q = 0.5 * (
                2 * p1 + (p2 - p0) * t + (2 * p0 - 5 * p1 + 4 * p2 - p3) * t**2 + (3 * p1 - p0 - 3 * p2 + p3) * t**3
            )
            out.append((float(q[0]), float(q[1])))
    out.append(ctrl[-1])
    return out


def _hull(paths: Sequence[Sequence[Point]], pad: float) -> list[Point]:
    """Corners of the bounding box of `paths`, grown by `pad` (half a line's width)."""
    xs = [x for path in paths for x, _ in path]
    ys = [y for path in paths for _, y in path]
    return [
        (min(xs) - pad, min(ys) - pad),
        (max(xs) + pad, min(ys) - pad),
        (max(xs) + pad, max(ys) + pad),
        (min(xs) - pad, max(ys) + pad),
    ]


def _thin(path: list[Point], n: int) -> list[Point]:
    """About `n` points of a dense path, endpoints kept, in drawing order."""
    idx = np.unique(np.linspace(0, len(path) - 1, n).round().astype(int))
    return [path[i] for i in idx]


# --- rack view --------------------------------------------------------------------------------


def _rack(plan: PhotoPlan, w: int, h: int, rng: np.random.Generator) -> Layout:
    units = plan.units
    if units[-1].gap:
        raise ValueError("a shield gap needs a BBU below it; the last BBU of a stack cannot have one")
    for unit in units:
        if (unit.shield is not None) != (unit.gap and unit.bbu["挡风板符合性"] == "按要求配备"):
            raise ValueError(f"a shield is drawn exactly when a BBU needs one and is 按要求配备: {unit}")
    n_gaps = sum(u.gap for u in units)
    u = min(0.2 * h, 0.78 * h / (len(units) + GAP_RATIO * n_gaps), 0.3 * w)
    g = GAP_RATIO * u
    total = len(units) * u + n_gaps * g
    y = rng.uniform(0.08 * h, max(0.08 * h, 0.92 * h - total))
    ear_x0, body_x0, body_x1, ear_x1 = 0.04 * w, 0.15 * w, 0.85 * w, 0.96 * w
    decor = [Decor("rail", (0.05 * w, 0, 0.13 * w, h)), Decor("rail", (0.87 * w, 0, 0.95 * w, h))]
    decor += _fillers(0.0, y - 0.05 * u, body_x0, body_x1, u, rng, upward=True)
    decor += _fillers(y + total + 0.05 * u, float(h), body_x0, body_x1, u, rng, upward=False)
    objects: list[SceneObject] = []
    side = min(0.6 * u, 0.1 * w)
    for unit in units:
        box = (body_x0, y, body_x1, y + u)
        objects.append(SceneObject(unit.bbu, "quad", _quad(box, rng, 0.025 * u)))
        decor += [
            Decor("ear", (ear_x0, y + 0.05 * u, body_x0, y + 0.95 * u)),
            Decor("ear", (body_x1, y + 0.05 * u, ear_x1, y + 0.95 * u)),
        ]
        for screw, cx in zip(unit.screws, ((ear_x0 + body_x0) / 2, (body_x1 + ear_x1) / 2)):
            objects.append(SceneObject(screw, "rect", _square(cx, y + u / 2, side)))
        if unit.label:
            objects.append(_label_obj(unit.label, 0.66 * w, y + u / 2, 0.42 * u, 0.3 * w))
        y += u
        if unit.gap:
            if unit.shield:
                objects.append(
                    SceneObject(
                        unit.shield, "quad", _quad((body_x0, y + 0.08 * g, body_x1, y + 0.92 * g), rng, 0.02 * g)
                    )
                )
            y += g
    return decor, objects


def _fillers(
    top: float, bottom: float, x0: float, x1: float, u: float, rng: np.random.Generator, *, upward: bool
) -> list[Decor]:
    """Other rack equipment filling the space beyond the BBU stack, separated by thin seams only,
    so that the only wide empty slots in a rack are shield gaps."""
    out = []
    edge = bottom if upward else top
    while (edge > top) if upward else (edge < bottom):
        size = rng.uniform(0.6, 1.3) * u
        box = (x0, edge - size, x1, edge) if upward else (x0, edge, x1, edge + size)
        out.append(Decor("filler", box, {"slits": int(rng.integers(6, 14))}))
        edge = edge - size - 0.04 * u if upward else edge + size + 0.04 * u
    return out


def _label_text(attrs: Attrs) -> str:
    return attrs.get("文本") or "XXXX-00"  # an unreadable label still carries (blurred) text


def _label_obj(attrs: Attrs, cx: float, cy: float, height: float, max_width: float) -> SceneObject:
    width = min(max_width, height * (0.62 * len(_label_text(attrs)) + 0.9))
    corners = [(cx - width / 2, cy - height / 2), (cx + width / 2, cy + height / 2)]
    return SceneObject(attrs, "rect", corners, {"text": _label_text(attrs)})


# --- strips view ------------------------------------------------------------------------------


def _strips(plan: PhotoPlan, w: int, h: int, rng: np.random.Generator) -> Layout:
    margin = 0.04 * min(w, h)
    band = (h - 2 * margin) / len(plan.strips)
    decor: list[Decor] = []
    objects: list[SceneObject] = []
    for i, strip in enumerate(plan.strips):
        pad = 0.07 * band
        box = (margin, margin + i * band + pad, w - margin, margin + (i + 1) * band - pad)
        d, o = STRIP_BUILDERS[strip.kind](strip.objects, box, (w, h), rng)
        decor += d
        objects += o
    return decor, objects


def _row(n: int, box: Box, side: float, rng: np.random.Generator) -> list[float]:
    """Centres of `n` items of width `side` spread along a box's width with some slack."""
    x0, _, x1, _ = box
    step = side * rng.uniform(1.5, 1.9)
    start = rng.uniform(x0 + side * 0.6, max(x0 + side * 0.6, x1 - side * 0.6 - step * (n - 1)))
    return [start + i * step for i in range(n)]


def _strip_mount(kind: str):
    """Ground plate / busbar / ODF panel / BBU port panel: a panel with a row of connect points
    on it. The panel (decor) is the context that tells the subtypes apart."""

    def build(objs: list[Attrs], box: Box, size: tuple[int, int], rng: np.random.Generator) -> Layout:
        x0, y0, x1, y1 = box
        slots = len(objs) + (kind == "plate")  # a ground plate also carries the ground symbol
        side = min(0.72 * (y1 - y0), (x1 - x0) / (slots * 1.9 + 1.6))
        cy = (y0 + y1) / 2
        xs = _row(slots, box, side, rng)
        centres = xs[slots - len(objs) :]
        params: dict[str, Any] = {}
        if kind == "plate":
            panel = (xs[0] - 0.8 * side, cy - 0.62 * side, xs[-1] + 0.8 * side, cy + 0.62 * side)
            params["symbol"] = (xs[0], cy, 0.8 * side)
        elif kind == "busbar":
            panel = (x0, cy - 0.3 * side, x1, cy + 0.3 * side)
        else:
            panel = (x0, cy - 0.62 * side, x1, cy + 0.62 * side)
            # Empty ports between the plugs: an unplugged port looks different from a plug.
            grid = np.arange(x0 + 0.7 * side, x1 - 0.4 * side, 1.25 * side)
            params["ports"] = [float(x) for x in grid if min(abs(x - c) for c in centres) > 0.9 * side]
            params["port"] = 0.5 * side
        objects = [SceneObject(a, "rect", _square(cx, cy, side)) for a, cx in zip(objs, centres)]
        return [Decor(kind, panel, params)], objects

    return build


def _strip_ear(objs: list[Attrs], box: Box, size: tuple[int, int], rng: np.random.Generator) -> Layout:
    """A close-up of a BBU's mounting ear with 1-2 screws; the BBU (when there) runs off the right edge."""
    x0, y0, x1, y1 = box
    bh = y1 - y0
    body = [a for a in objs if a["类别"] == "BBU设备"]
    screws = [a for a in objs if a["类别"] != "BBU设备"]
    ear_w = min(0.3 * (x1 - x0), 0.75 * bh)
    ex0 = x0 + rng.uniform(0, 0.15) * (x1 - x0)
    decor = [Decor("ear", (ex0, y0, ex0 + ear_w, y1))]
    objects = []
    if body:
        full = _quad((ex0 + ear_w, y0 + 0.04 * bh, size[0] + 0.1 * bh, y1 - 0.04 * bh), rng, 0.02 * bh)
        objects.append(SceneObject(body[0], "quad", _clip_quad(full, *size), {"body": full}))
    else:
        decor.append(Decor("rail", (ex0 + ear_w + 0.05 * bh, y0 - 0.05 * bh, ex0 + ear_w + 0.35 * bh, y1 + 0.05 * bh)))
    rows = (0.27, 0.73) if len(screws) > 1 else (0.5,)
    side = min(0.8 * ear_w, (0.42 if len(screws) > 1 else 0.7) * bh)
    for screw, row in zip(screws, rows):
        objects.append(SceneObject(screw, "rect", _square(ex0 + ear_w / 2, y0 + row * bh, side)))
    return decor, objects


def _strip_fiber(objs: list[Attrs], box: Box, size: tuple[int, int], rng: np.random.Generator) -> Layout:
    x0, y0, x1, y1 = box
    bh, cy = y1 - y0, (y0 + y1) / 2
    attrs = objs[0]
    scale = min(bh, 0.35 * (x1 - x0))
    width = (0.17 if attrs["保护措施"] == "有保护" else 0.045) * scale
    amp, freq, phase = rng.uniform(0.05, 0.18) * bh, rng.uniform(0.3, 1.0), rng.uniform(0, 2 * math.pi)
    path = [(x0 + t * (x1 - x0), cy + amp * math.sin(2 * math.pi * freq * t + phase)) for t in np.linspace(0, 1, 48)]
    n_points = 7
    if attrs["弯曲半径"] == BEND_BAD:
        path = _with_loop(path, int(rng.integers(14, 34)), 0.28 * scale, cy)
        n_points = 16  # enough to trace the loop in the annotation
    width = max(2.0, width)
    return [], [
        SceneObject(attrs, "line", _thin(path, n_points), {"path": path, "width": width}, _hull([path], width / 2))
    ]


def _with_loop(path: list[Point], at: int, radius: float, cy: float) -> list[Point]:
    """Insert a full tight loop at path[at], curling toward the band centre so it stays inside."""
    px, py = path[at]
    ox, oy = px, py + (radius if py < cy else -radius)
    start = math.atan2(py - oy, px - ox)
    loop = [
        (ox + radius * math.cos(start + a), oy + radius * math.sin(start + a))
        for a in np.linspace(0, 2 * math.pi, 26)[1:-1]
    ]
    return path[: at + 1] + loop + path[at:]


def _strip_wire(objs: list[Attrs], box: Box, size: tuple[int, int], rng: np.random.Generator) -> Layout:
    """Tidy = parallel strands with cable ties; loose = strands wandering and crossing."""
    x0, y0, x1, y1 = box
    bh, cy = y1 - y0, (y0 + y1) / 2
    attrs = objs[0]
    n = int(rng.integers(3, 5))
    width = max(3.0, 0.06 * min(bh, 0.35 * (x1 - x0)))
    if attrs["捆扎"] == "整齐":
        sway = rng.uniform(-0.1, 0.1) * bh
        centre = _smooth([(x0, cy - sway), ((x0 + x1) / 2, cy + sway), (x1, cy - sway)])
        strands = [[(x, y + (k - (n - 1) / 2) * width * 1.25) for x, y in centre] for k in range(n)]
        ties = centre[4:-3:5]
        draw = {"strands": strands, "ties": ties, "tie": (width * (1.25 * n + 1), width * 1.4)}
        line = _thin(centre, 5)
    else:
        strands = []
        for _ in range(n):
            mids = [(float(x), float(rng.uniform(y0, y1))) for x in np.sort(rng.uniform(x0, x1, 5))]
            strands.append(_smooth([(x0, rng.uniform(y0, y1)), *mids, (x1, rng.uniform(y0, y1))], 8))
        draw = {"strands": strands, "ties": [], "tie": (0.0, 0.0)}
        line = _thin(strands[0], 8)
    draw |= {"width": width, "colors": [int(c) for c in rng.permutation(4)[:n]]}
    return [], [SceneObject(attrs, "line", line, draw, _hull(strands, width / 2))]


def _strip_label(objs: list[Attrs], box: Box, size: tuple[int, int], rng: np.random.Generator) -> Layout:
    x0, y0, x1, y1 = box
    height = min(0.6 * (y1 - y0), 0.12 * (x1 - x0))
    width = min(0.6 * (x1 - x0), height * (0.62 * len(_label_text(objs[0])) + 0.9))
    cx = rng.uniform(x0 + width / 2, x1 - width / 2)
    return [], [_label_obj(objs[0], cx, (y0 + y1) / 2, height, width)]


def _strip_shield(objs: list[Attrs], box: Box, size: tuple[int, int], rng: np.random.Generator) -> Layout:
    x0, y0, x1, y1 = box
    height = min(0.75 * (y1 - y0), 0.3 * (x1 - x0))
    cy, inset = (y0 + y1) / 2, 0.05 * (x1 - x0)
    quad = _quad((x0 + inset, cy - height / 2, x1 - inset, cy + height / 2), rng, 0.03 * height)
    return [], [SceneObject(objs[0], "quad", quad)]


STRIP_BUILDERS = {
    "plate": _strip_mount("plate"),
    "busbar": _strip_mount("busbar"),
    "odf": _strip_mount("odf"),
    "ports": _strip_mount("ports"),
    "ear": _strip_ear,
    "fiber": _strip_fiber,
    "wire": _strip_wire,
    "label": _strip_label,
    "shield": _strip_shield,
}


# --- irrelevant view --------------------------------------------------------------------------


def _irrelevant(plan: PhotoPlan, w: int, h: int, rng: np.random.Generator) -> Layout:
    """Outdoor scenery (sky, ground, buildings): nothing to annotate."""
    horizon = rng.uniform(0.45, 0.75) * h
    decor = [Decor("ground", (0, horizon, w, h), {"color": [int(c) for c in rng.integers(60, 140, 3)]})]
    for _ in range(int(rng.integers(2, 6))):
        bw, bh = rng.uniform(0.1, 0.3) * w, rng.uniform(0.15, 0.5) * h
        bx = rng.uniform(0, w - bw)
        decor.append(
            Decor(
                "building", (bx, horizon - bh, bx + bw, horizon), {"color": [int(c) for c in rng.integers(90, 220, 3)]}
            )
        )
    return decor, []
