"""Convert one dataset of annotation exports into canonical records.

Per photo: read the export, open the image beside it, map every object from the
export frame to the rewritten image (rescale → EXIF orientation → ×factor
resize under the pixel budget → clamp and round), canonicalise and sort the
geometry, build `desc` strings and the per-image `summary`, and write the image.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from multiprocessing import Pool
from pathlib import Path
from typing import Any

from PIL import Image, ImageOps, UnidentifiedImageError
from tqdm import tqdm

from vlqc.data import geometry as geo
from vlqc.data.desc import build_desc, build_legacy_desc
from vlqc.data.export import ParsedExport, load_export, parse_export
from vlqc.data.summary import build_legacy_summary, build_summary
from vlqc.data.taxonomy import domain_of
from vlqc.errors import SampleError
from vlqc.jsonl import atomic_open
from vlqc.schemas import defaults, section
from vlqc.tickets import LABEL_DIRS, group_id_from

IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png", ".JPEG", ".JPG", ".PNG")
# Export sizes whose aspect ratio is this close to the image's are rescaled; others are errors.
ASPECT_TOLERANCE = 0.02
# The config schema's `convert` section is the one home of these defaults.
DEFAULTS = defaults("config", "convert")


@dataclass(frozen=True)
class ConvertSettings:
    root: Path
    out_dir: Path
    max_pixels: int = DEFAULTS["max_pixels"]
    factor: int = DEFAULTS["factor"]
    summary_format: str = DEFAULTS["summary_format"]
    jpeg_quality: int = DEFAULTS["jpeg_quality"]
    mission_domains: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_config(
        cls,
        convert: Mapping[str, Any],
        root: Path,
        out_dir: Path,
        mission_domains: Mapping[str, str],
        where: str = "convert settings",
    ) -> ConvertSettings:
        """From a `convert` config section (checked here; a missing key takes the schema default)."""
        convert = section("config", "convert", convert, where)
        return cls(
            root=root,
            out_dir=out_dir,
            max_pixels=convert["max_pixels"],
            factor=convert["factor"],
            summary_format=convert["summary_format"],
            jpeg_quality=convert["jpeg_quality"],
            mission_domains=dict(mission_domains),
        )


@dataclass
class SampleResult:
    source: str
    record: dict | None = None
    error: SampleError | None = None
    dropped: list[tuple[int, SampleError]] = field(default_factory=list)
    flags: Counter = field(default_factory=Counter)


def find_exports(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*.json") if p.is_file())


def convert_sample(json_path: Path, settings: ConvertSettings) -> SampleResult:
    source = json_path.relative_to(settings.root).as_posix()
    result = SampleResult(source)
    try:
        result.record = _convert(json_path, source, settings, result)
    except SampleError as exc:
        result.error = exc if exc.path else SampleError(exc.code, exc.message, source)
    return result


def _convert(json_path: Path, source: str, settings: ConvertSettings, result: SampleResult) -> dict:
    parsed = parse_export(load_export(json_path))
    result.dropped = parsed.dropped
    result.flags[f"variant:{parsed.variant}"] += 1
    image_path = _image_beside(json_path)
    image = _open_image(image_path)
    orientation = geo.exif_orientation(image)
    raw_w, raw_h = image.size
    width, height = geo.oriented_size(raw_w, raw_h, orientation)
    if max(width, height) / min(width, height) > geo.MAX_ASPECT_RATIO:  # smart_resize refuses these
        raise SampleError("extreme_aspect_ratio", f"{width}x{height} is longer than {geo.MAX_ASPECT_RATIO}:1")
    new_w, new_h = geo.smart_resize(width, height, settings.factor, settings.max_pixels)
    to_displayed = _frame_mapper(parsed, raw_w, raw_h, orientation, result)
    sx, sy = new_w / width, new_h / height

    objects, domains, groups = [], set(), Counter()
    for index, obj in parsed.objects:
        try:
            points = geo.scale_points(to_displayed(obj.points), sx, sy)
            entry = geometry_entry(obj.geometry, geo.clamp_round(points, new_w, new_h))
            entry["desc"] = build_desc(obj)
            legacy_desc = build_legacy_desc(obj) if settings.summary_format == "legacy" else ""
        except SampleError as exc:
            result.dropped.append((index, exc))
            continue
        objects.append((entry, legacy_desc))
        domains.add(domain_of(obj.type_key) if obj.type_key else "BBU")
        groups.update(obj.groups)
    if parsed.total_objects and not objects:
        raise SampleError("no_valid_objects", f"all {parsed.total_objects} objects were dropped")
    singletons = sorted(g for g, n in groups.items() if n == 1)
    if singletons:
        raise SampleError("group_singleton", f"group(s) {', '.join(singletons)} have a single member")
    if len(domains) > 1:
        raise SampleError("mixed_domain", f"objects of both domains {sorted(domains)}")

    objects.sort(key=lambda pair: _sort_key(pair[0]))
    ticket = _ticket_of(source, image_path.stem)
    domain = domains.pop() if domains else _mission_domain(ticket, settings)
    if settings.summary_format == "legacy":
        summary = build_legacy_summary([legacy for _, legacy in objects], domain or "BBU")
    else:
        summary = build_summary([entry["desc"] for entry, _ in objects], domain or "BBU")

    sample_id = source.removesuffix(".json")
    rel_image = f"images/{sample_id}.jpg"
    _write_image(image, orientation, (new_w, new_h), settings.out_dir / rel_image, settings.jpeg_quality)
    result.flags["exif_oriented"] += orientation != 1
    result.flags["resized"] += (new_w, new_h) != (width, height)
    result.flags["irrelevant"] += not objects
    record = {
        "sample_id": sample_id,
        "images": [rel_image],
        "width": new_w,
        "height": new_h,
        "domain": domain,
        "objects": [entry for entry, _ in objects],
        "summary": summary,
        "source": source,
    }
    if ticket:
        record["ticket"] = ticket
    return record


def _image_beside(json_path: Path) -> Path:
    for suffix in IMAGE_SUFFIXES:
        candidate = json_path.with_suffix(suffix)
        if candidate.is_file():
            return candidate
    raise SampleError("missing_image", f"no image {json_path.stem}.jpg/.jpeg/.png beside the export")


def _open_image(path: Path) -> Image.Image:
    try:
        image = Image.open(path)
        image.load()
    except (UnidentifiedImageError, OSError, SyntaxError, Image.DecompressionBombError) as exc:
        raise SampleError("image_decode_error", f"{path.name} does not decode: {exc}") from exc
    return image


def _frame_mapper(parsed: ParsedExport, raw_w: int, raw_h: int, orientation: int, result: SampleResult):
    """Return a function taking export coordinates to the displayed (EXIF-applied) frame.

    Exports are taken to be in the stored-pixel frame. Only when the orientation
    swaps the axes and the export size equals the *displayed* size do we take the
    coordinates as already displayed. Any other size difference is a rescale if
    the aspect ratio agrees, and an error otherwise.
    """
    ew, eh = parsed.width, parsed.height
    disp_w, disp_h = geo.oriented_size(raw_w, raw_h, orientation)
    swapped = (disp_w, disp_h) != (raw_w, raw_h)
    if (ew, eh) == (raw_w, raw_h):
        return lambda pts: geo.orient_points(pts, orientation, raw_w, raw_h)
    if swapped and (ew, eh) == (disp_w, disp_h):
        return lambda pts: pts
    if _aspect_close(ew, eh, raw_w, raw_h):
        result.flags["rescaled"] += 1
        sx, sy = raw_w / ew, raw_h / eh
        return lambda pts: geo.orient_points(geo.scale_points(pts, sx, sy), orientation, raw_w, raw_h)
    if swapped and _aspect_close(ew, eh, disp_w, disp_h):
        result.flags["rescaled"] += 1
        sx, sy = disp_w / ew, disp_h / eh
        return lambda pts: geo.scale_points(pts, sx, sy)
    raise SampleError(
        "size_mismatch",
        f"export size {ew}x{eh} does not match image size {raw_w}x{raw_h} (aspect ratios differ)",
    )


def _aspect_close(w1: int, h1: int, w2: int, h2: int) -> bool:
    return abs((w1 / h1) / (w2 / h2) - 1.0) <= ASPECT_TOLERANCE


def geometry_entry(kind: str, points: list[tuple[int, int]]) -> dict:
    if kind == "poly":
        points = geo.canonical_polygon(points)
        # Rounding can merge vertices; a polygon needs 4 distinct ones (origin rule).
        if len(points) < 4:
            kind = "bbox_2d"
    if kind == "bbox_2d":
        x1, y1, x2, y2 = geo.bbox_of(points)
        if x2 <= x1 or y2 <= y1:
            raise SampleError("zero_area", "box collapses to zero area after resizing")
        return {"bbox_2d": [x1, y1, x2, y2]}
    if kind == "line":
        points = geo.canonical_line(points)
        if len(points) < 2:
            raise SampleError("degenerate_line", "line collapses to a point after resizing")
    return {kind: [int(v) for point in points for v in point]}


def _sort_key(entry: dict) -> tuple:
    kind = next(k for k in entry if k != "desc")
    return geo.sort_key(kind, entry[kind])


def _ticket_of(source: str, image_stem: str) -> dict | None:
    parts = source.split("/")
    if len(parts) < 4 or parts[-3] not in LABEL_DIRS:
        return None
    return {
        "mission": parts[-4],
        "label": LABEL_DIRS[parts[-3]],
        "group_id": group_id_from(image_stem, parts[-2]),
    }


def _mission_domain(ticket: dict | None, settings: ConvertSettings) -> str | None:
    domain = settings.mission_domains.get(ticket["mission"]) if ticket else None
    return domain.upper() if domain else None


def _write_image(image: Image.Image, orientation: int, size: tuple[int, int], path: Path, quality: int) -> None:
    displayed = ImageOps.exif_transpose(image) if orientation != 1 else image
    rgb = displayed.convert("RGB")
    if rgb.size != size:
        rgb = rgb.resize(size, Image.Resampling.BICUBIC)
    with atomic_open(path, "wb") as fh:
        rgb.save(fh, format="JPEG", quality=quality)


def convert_all(exports: list[Path], settings: ConvertSettings, workers: int) -> Iterator[SampleResult]:
    """Convert exports in order, `workers` processes at a time, with a progress bar."""
    progress = tqdm(total=len(exports), desc="convert", unit="img", mininterval=2.0)
    with progress:
        if workers <= 1:
            for path in exports:
                yield convert_sample(path, settings)
                progress.update()
            return
        with Pool(workers, initializer=_worker_init, initargs=(settings,)) as pool:
            for result in pool.imap(_worker_convert, exports, chunksize=4):
                yield result
                progress.update()


_SETTINGS: ConvertSettings | None = None


def _worker_init(settings: ConvertSettings) -> None:
    global _SETTINGS
    _SETTINGS = settings
    # One thread per worker: the pool already spreads the work over the cores.
    os.environ["OMP_NUM_THREADS"] = "1"


def _worker_convert(path: Path) -> SampleResult:
    assert _SETTINGS is not None
    return convert_sample(path, _SETTINGS)
