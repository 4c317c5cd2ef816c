"""What every plot shares: headless matplotlib, a font for the Chinese mission names, atomic saves."""

from __future__ import annotations

import html
import logging
import math
import os
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # jobs have no display

import matplotlib.pyplot as plt  # noqa: E402
from matplotlib import font_manager  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from vlqc.jsonl import atomic_open  # noqa: E402

log = logging.getLogger(__name__)

# Fonts with the Han characters of mission names, most common first (Debian: fonts-noto-cjk, fonts-wqy-*).
CJK_FAMILIES = (
    "Noto Sans CJK SC",
    "Noto Sans CJK JP",
    "Source Han Sans SC",
    "WenQuanYi Micro Hei",
    "WenQuanYi Zen Hei",
    "Droid Sans Fallback",
    "SimHei",
    "Microsoft YaHei",
    "PingFang SC",
)
# File names of those fonts, for a font installed after matplotlib built its font cache.
_CJK_FILES = ("notosanscjk", "sourcehansans", "wqy-", "droidsansfallback", "simhei", "msyh", "pingfang")
_fonts_ready = False


def _cjk_fonts() -> list[str]:
    names = {font.name for font in font_manager.fontManager.ttflist}
    if not names & set(CJK_FAMILIES):
        for path in font_manager.findSystemFonts():
            if any(key in Path(path).name.lower() for key in _CJK_FILES):
                font_manager.fontManager.addfont(path)
        names = {font.name for font in font_manager.fontManager.ttflist}
    return [family for family in CJK_FAMILIES if family in names]


def setup() -> None:
    """Fonts once per process: DejaVu Sans, falling back glyph by glyph to a CJK font when one is installed."""
    global _fonts_ready
    if _fonts_ready:
        return
    cjk = _cjk_fonts()
    if not cjk:
        log.warning("no CJK font installed (e.g. Debian's fonts-wqy-microhei): mission names show as boxes")
        warnings.filterwarnings("ignore", message=r"Glyph \d+ .*missing from font")
    plt.rcParams.update({"font.family": ["DejaVu Sans", *cjk], "figure.dpi": 100, "axes.grid": True})
    _fonts_ready = True


def new(ncols: int = 1, width: float = 6.4, height: float = 4.0, **kw) -> tuple[Figure, Sequence]:
    """A figure with `ncols` axes side by side (always a sequence of axes)."""
    setup()
    fig, axes = plt.subplots(1, ncols, figsize=(width * ncols, height), squeeze=False, **kw)
    return fig, list(axes[0])


def save(fig: Figure, path: str | os.PathLike) -> None:
    """Write the figure as PNG, atomically; close it."""
    fig.tight_layout()
    with atomic_open(path, "wb") as fh:
        fig.savefig(fh, format="png")
    plt.close(fig)


def empty(ax, text: str) -> None:
    """An axes that says why it has nothing to show."""
    ax.set_axis_off()
    ax.text(0.5, 0.5, text, ha="center", va="center", wrap=True, transform=ax.transAxes)


def ink(image, value: float | None) -> str:
    """Text colour on a cell of an imshow `image`: black on light cells, white on dark ones."""
    if value is None:
        return "black"
    red, green, blue, _ = image.cmap(image.norm(value))
    return "black" if 0.299 * red + 0.587 * green + 0.114 * blue > 0.5 else "white"


def number(value: float | None, digits: int = 4) -> str:
    """A number for a table: `digits` significant digits; n/a for None or NaN."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, bool) or isinstance(value, int):
        return str(value)
    return f"{value:.{digits}g}"


def loss(value: float | None) -> str:
    """A loss for a table: four decimals (the tiny model's differences sit there); n/a for None."""
    return "n/a" if value is None else f"{value:.4f}"


def percent(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f} %"


def html_table(header: Sequence[str], rows: Iterable[Sequence[object]], marked: Iterable[int] = ()) -> str:
    """An HTML table of already formatted cells (escaped here); rows whose index is in `marked` are bold."""
    marked = set(marked)
    head = "".join(f"<th>{html.escape(str(cell))}</th>" for cell in header)
    body = []
    for i, row in enumerate(rows):
        cls = ' class="marked"' if i in marked else ""
        body.append(f"<tr{cls}>" + "".join(f"<td>{html.escape(str(cell))}</td>" for cell in row) + "</tr>")
    return f"<table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n" + "\n".join(body) + "\n</tbody>\n</table>"


STYLE = """
body { font-family: "DejaVu Sans", "Noto Sans CJK SC", "WenQuanYi Micro Hei", sans-serif; margin: 1em;
       background: #fff; color: #111; font-size: 14px; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 1.2em; }
table { border-collapse: collapse; margin: 0.5em 0 1em; font-size: 13px; }
th, td { border: 1px solid #bbb; padding: 0.2em 0.45em; text-align: right; }
th { background: #eee; } td:first-child, th:first-child { text-align: left; }
tr.marked td { font-weight: bold; background: #f4f8ff; }
.fail { color: #b00; font-weight: bold; } .pass { color: #070; font-weight: bold; }
"""


def write_html(path: str | os.PathLike, title: str, body: str) -> None:
    """A standalone HTML page (the report shows it in a frame), written atomically."""
    page = (
        f'<!doctype html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>{html.escape(title)}</title>\n'
        f"<style>{STYLE}</style>\n</head>\n<body>\n<h1>{html.escape(title)}</h1>\n{body}\n</body>\n</html>\n"
    )
    with atomic_open(path) as fh:
        fh.write(page)
