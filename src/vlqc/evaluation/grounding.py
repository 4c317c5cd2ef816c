"""Grounding metrics: predicted dense objects matched to the ground truth of a photo, and scored
(docs/evaluation.md#grounding).

Contract:
- Objects are `vlqc.inference.answers.DenseObject`s in norm1000 coordinates (docs/answers.md): the
  prediction from the model's answer, the ground truth from the canonical record.
- Kinds: `bbox_2d` and `poly` are areas and may match each other, by IoU; a `line` matches only a
  line, by a distance. IoU is counted on the norm1000 pixel grid: a pixel (i, j) belongs to an
  object when its centre (i + ½, j + ½) lies inside it (even-odd rule, so a self-intersecting
  polygon is well defined). With integer coordinates that is exact for boxes, off by at most the
  pixels along a slanted edge for polygons, and the same on every machine; an exact clipper for
  non-convex polygons would be far more code (and a dependency) for a difference of a few edge pixels.
- Line distance: both polylines resampled to `LINE_SAMPLES` points evenly spaced along their length;
  the mean distance of one's points to the other polyline, averaged over both directions (symmetric,
  blind to drawing direction), in norm1000 units. A pair of lines can match when that is at most
  `line_threshold`; a pair of areas when the IoU is at least `iou_threshold`.
- Matching (per photo and threshold): among the pairs that can match, the largest set of one-to-one
  pairs, and among those the one of largest total similarity (IoU, or 1 − distance/line_threshold),
  by scipy's Hungarian solver. So the count of true positives is the most any assignment gets,
  which a greedy best-first pairing does not guarantee. Deterministic: the same objects give the same pairs.
- Counts: a matched pair is a true positive, an unmatched prediction a false positive, an unmatched
  ground-truth object a false negative. Matching ignores descs; what a matched pair's desc gets
  right is scored apart: exact desc, and per attribute key (docs/taxonomy.md#desc-keyvalue-form) of
  either desc, right when both descs give the key the same values.
- Categories (the desc's `类别`): a true positive and a false negative count under the ground
  truth's category, a false positive under its own (`UNPARSED` when its desc does not parse).
- Answers: a photo's answer is parsed strictly first; when that fails (a parse failure), in salvage
  mode, and it is salvaged when that recovers at least one object. What salvage recovers is scored.
- Aggregates are micro: counts summed over photos, then divided.
- A checkpoint's answers (rule eval_grounding): `eval.grounding.images` val photos with a domain, drawn
  with `eval.grounding.seed` and kept in record order, asked `prompts.dense_messages(domain)` in the run's prompts with
  their image fitted to the run's pixel cap, greedy, `batch_size` at a time: the same checkpoint,
  val split and settings give the same files.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy.optimize import linear_sum_assignment
from tqdm import tqdm

from vlqc.data.desc import parse_desc
from vlqc.errors import SampleError, VlqcError
from vlqc.inference.answers import AnswerError, DenseObject, Dropped, parse_dense
from vlqc.inference.prompts import dense_messages, dense_objects
from vlqc.inference.sampling import Sampling

AREA_KINDS = ("bbox_2d", "poly")
LINE_KIND = "line"
GRID = 1000  # norm1000: coordinates 0..1000, pixels 0..999
LINE_SAMPLES = 64
CATEGORY_KEY = "类别"
UNPARSED = "(desc unparsed)"  # category of a prediction whose desc does not parse


# --- geometry ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Area:
    """An area object rasterised on the norm1000 grid: its mask over its bounding pixels."""

    x0: int
    y0: int
    mask: np.ndarray  # bool, shape (rows, columns) from (y0, x0)

    @property
    def pixels(self) -> int:
        return int(self.mask.sum())


def _vertices(obj: DenseObject) -> np.ndarray:
    points = np.asarray(obj.points, dtype=np.float64).reshape(-1, 2)
    if obj.kind == "bbox_2d":
        (x1, y1), (x2, y2) = points
        points = np.array([[x1, y1], [x2, y1], [x2, y2], [x1, y2]])
    return points


def rasterise(obj: DenseObject) -> _Area:
    """The pixels of an area object whose centres lie inside it (even-odd rule)."""
    vertices = _vertices(obj)
    low = np.clip(np.floor(vertices.min(axis=0)).astype(int), 0, GRID)
    high = np.clip(np.ceil(vertices.max(axis=0)).astype(int), 0, GRID)
    x0, y0 = int(low[0]), int(low[1])
    xs = np.arange(x0, high[0]) + 0.5
    ys = (np.arange(y0, high[1]) + 0.5)[:, None]
    inside = np.zeros((len(ys), len(xs)), dtype=bool)
    for (xa, ya), (xb, yb) in zip(vertices, np.roll(vertices, -1, axis=0)):
        if ya == yb:
            continue  # a horizontal edge crosses no pixel-centre row (centres are at half-integers)
        crosses = (ya > ys) != (yb > ys)
        x_at = xa + (ys - ya) * (xb - xa) / (yb - ya)
        inside ^= crosses & (xs < x_at)
    return _Area(x0, y0, inside)


def area_iou(a: _Area, b: _Area) -> float:
    """Intersection over union of two rasterised areas (0 when both are empty)."""
    x0, y0 = max(a.x0, b.x0), max(a.y0, b.y0)
    x1 = min(a.x0 + a.mask.shape[1], b.x0 + b.mask.shape[1])
    y1 = min(a.y0 + a.mask.shape[0], b.y0 + b.mask.shape[0])
    inter = 0
    if x1 > x0 and y1 > y0:
        sa = a.mask[y0 - a.y0 : y1 - a.y0, x0 - a.x0 : x1 - a.x0]
        sb = b.mask[y0 - b.y0 : y1 - b.y0, x0 - b.x0 : x1 - b.x0]
        inter = int(np.count_nonzero(sa & sb))
    union = a.pixels + b.pixels - inter
    return inter / union if union else 0.0


def iou(a: DenseObject, b: DenseObject) -> float:
    """IoU of two area objects (bbox_2d or poly) on the norm1000 grid."""
    for obj in (a, b):
        if obj.kind not in AREA_KINDS:
            raise VlqcError(f"IoU of a {obj.kind!r} object: only {' and '.join(AREA_KINDS)} have an area")
    return area_iou(rasterise(a), rasterise(b))


def resample(points: Sequence[int], count: int = LINE_SAMPLES) -> np.ndarray:
    """`count` points evenly spaced along a polyline (flat [x1, y1, ...]), both ends included."""
    vertices = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    lengths = np.hypot(*np.diff(vertices, axis=0).T)
    along = np.concatenate([[0.0], np.cumsum(lengths)])
    if along[-1] == 0:
        return np.repeat(vertices[:1], count, axis=0)
    at = np.linspace(0.0, along[-1], count)
    return np.stack([np.interp(at, along, vertices[:, 0]), np.interp(at, along, vertices[:, 1])], axis=1)


def _to_polyline(samples: np.ndarray, points: Sequence[int]) -> np.ndarray:
    """Distance of each sample to the nearest point of a polyline."""
    vertices = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    start, end = vertices[:-1], vertices[1:]
    if len(start) == 0:
        start = end = vertices
    seg = end - start
    length2 = (seg**2).sum(axis=1)
    rel = samples[:, None, :] - start[None, :, :]
    t = np.where(length2 > 0, (rel * seg).sum(axis=2) / np.where(length2 > 0, length2, 1.0), 0.0)
    nearest = start[None] + np.clip(t, 0.0, 1.0)[..., None] * seg[None]
    return np.hypot(*(samples[:, None, :] - nearest).transpose(2, 0, 1)).min(axis=1)


def line_distance(a: DenseObject, b: DenseObject) -> float:
    """Symmetric mean distance of two lines, in norm1000 units."""
    for obj in (a, b):
        if obj.kind != LINE_KIND:
            raise VlqcError(f"line distance of a {obj.kind!r} object")
    there = _to_polyline(resample(a.points), b.points).mean()
    back = _to_polyline(resample(b.points), a.points).mean()
    # Rounded: float noise of the projection (1e-14 for identical lines) is not a distance.
    return round(float((there + back) / 2), 6)


# --- matching ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pair:
    pred: int  # index into the predictions
    gt: int  # index into the ground truth
    iou: float | None  # areas
    distance: float | None  # lines


@dataclass(frozen=True)
class Matching:
    pairs: tuple[Pair, ...]  # in ground-truth order
    unmatched_pred: tuple[int, ...]
    unmatched_gt: tuple[int, ...]


@dataclass(frozen=True)
class Similarities:
    """Every prediction × ground-truth measure of one photo: IoU of two areas, distance of two lines
    (NaN where kinds cannot match). Computed once, matched at each threshold."""

    iou: np.ndarray
    distance: np.ndarray


def similarities(pred: Sequence[DenseObject], gt: Sequence[DenseObject]) -> Similarities:
    for obj in (*pred, *gt):
        if obj.kind not in (*AREA_KINDS, LINE_KIND):
            raise VlqcError(f"unknown object kind {obj.kind!r}")
    ious = np.full((len(pred), len(gt)), np.nan)
    distances = np.full((len(pred), len(gt)), np.nan)
    areas = {("p", i): rasterise(o) for i, o in enumerate(pred) if o.kind in AREA_KINDS}
    areas |= {("g", j): rasterise(o) for j, o in enumerate(gt) if o.kind in AREA_KINDS}
    for i, p in enumerate(pred):
        for j, g in enumerate(gt):
            if p.kind in AREA_KINDS and g.kind in AREA_KINDS:
                ious[i, j] = area_iou(areas["p", i], areas["g", j])
            elif p.kind == LINE_KIND and g.kind == LINE_KIND:
                distances[i, j] = line_distance(p, g)
    return Similarities(ious, distances)


def match(
    pred: Sequence[DenseObject],
    gt: Sequence[DenseObject],
    *,
    iou_threshold: float,
    line_threshold: float,
    measured: Similarities | None = None,
) -> Matching:
    """The one-to-one matching of the module docstring; `measured` reuses `similarities(pred, gt)`."""
    if not 0 < iou_threshold <= 1:
        raise VlqcError(f"iou_threshold must be in (0, 1], not {iou_threshold}")
    if line_threshold <= 0:
        raise VlqcError(f"line_threshold must be positive, not {line_threshold}")
    measured = measured or similarities(pred, gt)
    with np.errstate(invalid="ignore"):
        area_ok = measured.iou >= iou_threshold
        line_ok = measured.distance <= line_threshold
    similarity = np.where(area_ok, measured.iou, np.where(line_ok, 1.0 - measured.distance / line_threshold, 0.0))
    allowed = area_ok | line_ok
    # Each allowed pair weighs more than any total of similarities (each at most 1): the most pairs
    # first, then the largest total similarity among those.
    weight = np.where(allowed, (1 + min(len(pred), len(gt))) + similarity, 0.0)
    pairs = []
    if allowed.any():
        rows, cols = linear_sum_assignment(weight, maximize=True)
        for i, j in zip(rows.tolist(), cols.tolist()):
            if allowed[i, j]:
                area = bool(area_ok[i, j])
                value_iou = float(measured.iou[i, j]) if area else None
                value_distance = None if area else float(measured.distance[i, j])
                pairs.append(Pair(i, j, value_iou, value_distance))
    pairs.sort(key=lambda pair: pair.gt)
    matched_pred = {pair.pred for pair in pairs}
    matched_gt = {pair.gt for pair in pairs}
    return Matching(
        tuple(pairs),
        tuple(i for i in range(len(pred)) if i not in matched_pred),
        tuple(j for j in range(len(gt)) if j not in matched_gt),
    )


# --- descs ------------------------------------------------------------------------------------------


def desc_fields(desc: str) -> dict[str, list[str]] | None:
    """`parse_desc` of a desc, None when it does not parse."""
    try:
        return parse_desc(desc)
    except SampleError:
        return None


def category(desc: str) -> str:
    fields = desc_fields(desc)
    if not fields or CATEGORY_KEY not in fields:
        return UNPARSED
    return "|".join(fields[CATEGORY_KEY])


def attribute_agreement(pred_desc: str, gt_desc: str) -> dict[str, bool]:
    """Per attribute key of either desc: whether both give it the same values (in any order). An
    unparseable predicted desc gets every ground-truth key wrong."""
    truth = desc_fields(gt_desc)
    if truth is None:
        raise VlqcError(f"ground-truth desc does not parse: {gt_desc!r}")
    guess = desc_fields(pred_desc) or {}
    return {key: sorted(truth.get(key, ())) == sorted(guess.get(key, ())) for key in sorted({*truth, *guess})}


# --- per-photo outcome and counts --------------------------------------------------------------------


@dataclass(frozen=True)
class Prediction:
    """A photo's answer as read: the objects scored and how the parse went."""

    objects: tuple[DenseObject, ...]
    strict_ok: bool
    salvaged: bool  # strict failed and salvage recovered at least one object
    rule: str | None  # the strict rule that broke (AnswerError.rule)
    dropped: tuple[Dropped, ...]


def read_prediction(text: str) -> Prediction:
    """Strict parse of a dense answer, else its salvage (docs/answers.md)."""
    try:
        answer = parse_dense(text, strict=True)
    except AnswerError as exc:
        salvage = parse_dense(text, strict=False)
        return Prediction(salvage.objects, False, bool(salvage.objects), exc.rule, salvage.dropped)
    return Prediction(answer.objects, True, False, None, answer.dropped)


@dataclass
class Counts:
    """Summable counts of one photo, or of many (micro aggregation)."""

    tp: int = 0
    fp: int = 0
    fn: int = 0
    iou_sum: float = 0.0
    area_matches: int = 0
    distance_sum: float = 0.0
    line_matches: int = 0
    desc_exact: int = 0
    attributes: dict[str, list[int]] = field(default_factory=dict)  # key → [right, scored]

    def add(self, other: Counts) -> None:
        for name in ("tp", "fp", "fn", "iou_sum", "area_matches", "distance_sum", "line_matches", "desc_exact"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        for key, (right, scored) in other.attributes.items():
            tally = self.attributes.setdefault(key, [0, 0])
            tally[0] += right
            tally[1] += scored

    def summary(self) -> dict[str, Any]:
        """Counts and rates (schema eval_grounding, `$defs/scores`); a rate without a denominator is null."""

        def ratio(a: float, b: float) -> float | None:
            return a / b if b else None

        precision, recall = ratio(self.tp, self.tp + self.fp), ratio(self.tp, self.tp + self.fn)
        f1 = ratio(2 * self.tp, 2 * self.tp + self.fp + self.fn)
        return {
            "tp": self.tp,
            "fp": self.fp,
            "fn": self.fn,
            "precision": precision,
            "recall": recall,
            "f1": f1,
            "mean_iou": ratio(self.iou_sum, self.area_matches),
            "mean_line_distance": ratio(self.distance_sum, self.line_matches),
            "desc_exact": ratio(self.desc_exact, self.tp),
            "attributes": {
                key: {"right": right, "scored": scored, "accuracy": ratio(right, scored)}
                for key, (right, scored) in sorted(self.attributes.items())
            },
        }


def count(
    pred: Sequence[DenseObject], gt: Sequence[DenseObject], matching: Matching
) -> tuple[Counts, dict[str, Counts]]:
    """Overall counts of one photo's matching, and counts per category."""
    overall, per = Counts(), {}

    def at(name: str) -> Counts:
        return per.setdefault(name, Counts())

    for pair in matching.pairs:
        p, g = pred[pair.pred], gt[pair.gt]
        one = Counts(tp=1, desc_exact=int(p.desc == g.desc))
        if pair.iou is not None:
            one.iou_sum, one.area_matches = pair.iou, 1
        else:
            one.distance_sum, one.line_matches = pair.distance, 1
        one.attributes = {key: [int(ok), 1] for key, ok in attribute_agreement(p.desc, g.desc).items()}
        overall.add(one)
        at(category(g.desc)).add(one)
    for i in matching.unmatched_pred:
        overall.fp += 1
        at(category(pred[i].desc)).fp += 1
    for j in matching.unmatched_gt:
        overall.fn += 1
        at(category(gt[j].desc)).fn += 1
    return overall, per


# --- a set of photos ---------------------------------------------------------------------------------


@dataclass
class Tally:
    """Counts of many photos at each threshold, overall and per category, and their parse outcomes."""

    thresholds: tuple[float, ...]
    line_threshold: float
    overall: dict[float, Counts] = field(default_factory=dict)
    categories: dict[str, dict[float, Counts]] = field(default_factory=dict)
    images: int = 0
    strict_failed: int = 0
    salvaged: int = 0
    pred_objects: int = 0
    gt_objects: int = 0
    gt_per_category: dict[str, int] = field(default_factory=dict)
    failed_rules: dict[str, int] = field(default_factory=dict)
    dropped: dict[str, int] = field(default_factory=dict)

    def __post_init__(self):
        if not self.thresholds:
            raise VlqcError("at least one IoU threshold is needed")
        self.overall = {t: Counts() for t in self.thresholds}

    def add(self, prediction: Prediction, gt: Sequence[DenseObject]) -> dict[float, Matching]:
        """Score one photo; its matching at each threshold."""
        pred = prediction.objects
        self.images += 1
        self.strict_failed += not prediction.strict_ok
        self.salvaged += prediction.salvaged
        if prediction.rule is not None:
            self.failed_rules[prediction.rule] = self.failed_rules.get(prediction.rule, 0) + 1
        for dropped in prediction.dropped:
            self.dropped[dropped.reason] = self.dropped.get(dropped.reason, 0) + 1
        self.pred_objects += len(pred)
        self.gt_objects += len(gt)
        for obj in gt:
            name = category(obj.desc)
            self.gt_per_category[name] = self.gt_per_category.get(name, 0) + 1
        measured = similarities(pred, gt)
        matchings = {}
        for threshold in self.thresholds:
            matching = match(pred, gt, iou_threshold=threshold, line_threshold=self.line_threshold, measured=measured)
            overall, per = count(pred, gt, matching)
            self.overall[threshold].add(overall)
            for name, counts in per.items():
                self.categories.setdefault(name, {t: Counts() for t in self.thresholds})[threshold].add(counts)
            matchings[threshold] = matching
        return matchings

    def summary(self) -> dict[str, Any]:
        """The metric keys of schema eval_grounding."""

        def ratio(a: int, b: int) -> float | None:
            return a / b if b else None

        def at_thresholds(counts: Mapping[float, Counts]) -> list[dict[str, Any]]:
            return [{"iou_threshold": t, **counts[t].summary()} for t in self.thresholds]

        return {
            "iou_thresholds": list(self.thresholds),
            "line_threshold": self.line_threshold,
            "images": self.images,
            "gt_objects": self.gt_objects,
            "pred_objects": self.pred_objects,
            "parse": {
                "strict_failed": self.strict_failed,
                "salvaged": self.salvaged,
                "parse_failure_rate": ratio(self.strict_failed, self.images),
                "salvage_rate": ratio(self.salvaged, self.images),
                "failed_rules": dict(sorted(self.failed_rules.items())),
                "dropped": dict(sorted(self.dropped.items())),
            },
            "overall": at_thresholds(self.overall),
            "categories": {
                name: {"gt_objects": self.gt_per_category.get(name, 0), "at": at_thresholds(counts)}
                for name, counts in sorted(self.categories.items())
            },
        }


def score(
    pairs: Iterable[tuple[Prediction, Sequence[DenseObject]]], thresholds: Sequence[float], line_threshold: float
) -> dict[str, Any]:
    """Metrics of (prediction, ground truth) photos, summed over photos."""
    tally = Tally(tuple(thresholds), line_threshold)
    for prediction, gt in pairs:
        tally.add(prediction, gt)
    return tally.summary()


# --- a checkpoint's answers ---------------------------------------------------------------------------


def select_photos(
    records: Sequence[Mapping[str, Any]], missions: Mapping[str, Mapping[str, Any]], n: int, seed: int, where: str
) -> tuple[list[tuple[Mapping[str, Any], str]], int]:
    """`n` val records drawn with `seed` (all if fewer), each with the domain its prompt names, in
    record order; and how many could be drawn from (those with a domain: their own or their mission's)."""
    from vlqc.train.sft_data import record_domain

    eligible = [(record, domain) for record in records if (domain := record_domain(record, missions))]
    if not eligible:
        raise VlqcError(f"{where}: no val photo with a domain (its own or its mission's) to ask for its objects")
    chosen = sorted(random.Random(seed).sample(range(len(eligible)), min(n, len(eligible))))
    return [eligible[k] for k in chosen], len(eligible)


def answer_photos(
    generate: Callable[[list[Any], Sampling], list[str]],
    request: Callable[[Mapping[str, Any], str], Any],
    photos: Sequence[tuple[Mapping[str, Any], str]],
    settings: Mapping[str, Any],
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Ask each photo for its objects (`request(record, domain)` builds the request, `generate(requests,
    sampling)` answers a batch: vlqc.inference.generation.Generator.generate), greedy, `batch_size` photos
    at a time in the given order; score the answers. The metrics (Tally.summary) and one row per photo
    (schema eval_grounding_row)."""
    tally = Tally(tuple(settings["iou_thresholds"]), settings["line_threshold"])
    sampling = Sampling(max_new_tokens=settings["max_new_tokens"], temperature=0.0)
    size, rows = settings["batch_size"], []
    with tqdm(total=len(photos), desc="grounding", unit="photo", mininterval=5) as progress:
        for start in range(0, len(photos), size):
            batch = photos[start : start + size]
            texts = generate([request(record, domain) for record, domain in batch], sampling)
            for (record, domain), text in zip(batch, texts, strict=True):
                prediction, gt = read_prediction(text), dense_objects(record)
                matchings = tally.add(prediction, gt)
                rows.append(
                    {
                        "sample_id": record["sample_id"],
                        "images": list(record["images"]),
                        "domain": domain,
                        "pred_text": text,
                        "strict_ok": prediction.strict_ok,
                        "salvaged": prediction.salvaged,
                        "rule": prediction.rule,
                        "dropped": [asdict(dropped) for dropped in prediction.dropped],
                        "pred_objects": len(prediction.objects),
                        "gt_objects": len(gt),
                        "at": [
                            {
                                "iou_threshold": threshold,
                                "tp": len(matching.pairs),
                                "fp": len(matching.unmatched_pred),
                                "fn": len(matching.unmatched_gt),
                            }
                            for threshold, matching in matchings.items()
                        ],
                    }
                )
            progress.update(len(batch))
    return tally.summary(), rows


def evaluate_checkpoint(
    step_dir: Path,
    base: Path,
    train_cfg: Mapping[str, Any],
    photos: Sequence[tuple[Mapping[str, Any], str]],
    images_root: Path,
    settings: Mapping[str, Any],
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """`answer_photos` with one saved step (a full model, or a LoRA adapter on `base`), loaded and fed as
    the golden dump does: float32, the base model's processor, images fitted to the run's pixel cap, the run's
    prompts."""
    from vlqc.evaluation.loss import load_checkpoint, load_row_images
    from vlqc.inference.generation import Generator, Request
    from vlqc.train.config import prompt_config
    from vlqc.train.sft_data import data_config

    data = data_config(train_cfg)
    prompts = prompt_config(train_cfg)  # asked in the words the run was trained with (docs/prompts.md)
    model = load_checkpoint(step_dir, base, "float32")
    generator = Generator(base, device=model.device.type, max_pixels=data.max_pixels, model=model)

    def request(record: Mapping[str, Any], domain: str) -> Request:
        row = {"id": record["sample_id"], "images": record["images"]}
        return Request(
            *dense_messages(domain, prompts=prompts),
            load_row_images([row], images_root, data.max_pixels, data.factor)[0],
        )

    return answer_photos(generator.generate, request, photos, settings)
