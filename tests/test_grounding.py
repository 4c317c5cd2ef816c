"""Grounding metrics on fixed predictions with known answers (vlqc.evaluation.grounding)."""

from __future__ import annotations

import json

import pytest

from vlqc.errors import VlqcError
from vlqc.evaluation.grounding import (
    UNPARSED,
    Prediction,
    count,
    iou,
    line_distance,
    match,
    rasterise,
    read_prediction,
    score,
)
from vlqc.inference.answers import DenseObject

SCREW = "类别=BBU安装螺丝,可见性=完整,符合性=符合"
BBU = "类别=BBU设备,品牌=华为,可见性=完整"
FIBRE = "类别=光纤,保护措施=有保护,弯曲半径=半径合理"


def box(x1, y1, x2, y2, desc=SCREW):
    return DenseObject("bbox_2d", (x1, y1, x2, y2), desc)


def poly(*points, desc=SCREW):
    return DenseObject("poly", tuple(points), desc)


def line(*points, desc=FIBRE):
    return DenseObject("line", tuple(points), desc)


def clean(objects):
    return Prediction(tuple(objects), strict_ok=True, salvaged=False, rule=None, dropped=())


def at(doc, threshold=0.5):
    return next(entry for entry in doc["overall"] if entry["iou_threshold"] == threshold)


def category_at(doc, name, threshold=0.5):
    return next(entry for entry in doc["categories"][name]["at"] if entry["iou_threshold"] == threshold)


GT = [box(100, 100, 300, 300, BBU), box(400, 400, 450, 460), line(10, 900, 500, 880, 990, 950)]


# --- geometry --------------------------------------------------------------------------------------


def test_box_pixels_are_exact_and_iou_of_half_overlap():
    assert rasterise(box(0, 0, 10, 10)).pixels == 100
    assert iou(box(0, 0, 10, 10), box(5, 0, 15, 10)) == pytest.approx(50 / 150)
    assert iou(box(0, 0, 10, 10), box(20, 20, 30, 30)) == 0.0


def test_a_poly_and_a_box_of_the_same_square_match_with_iou_one():
    assert iou(box(100, 100, 200, 200), poly(100, 100, 200, 100, 200, 200, 100, 200)) == 1.0


def test_poly_area_counts_pixel_centres_inside():
    # A diamond of diagonals 200: area 20000; centres on its slanted edges decide a few pixels.
    diamond = poly(500, 400, 600, 500, 500, 600, 400, 500)
    assert rasterise(diamond).pixels == pytest.approx(20000, rel=0.01)
    # A non-convex L shape: the 100x100 square minus its 50x50 top-right corner.
    ell = poly(0, 0, 50, 0, 50, 50, 100, 50, 100, 100, 0, 100)
    assert rasterise(ell).pixels == 7500
    assert iou(ell, box(0, 0, 100, 100)) == pytest.approx(0.75)


def test_line_distance_is_symmetric_and_blind_to_direction():
    a, b = line(0, 0, 100, 0), line(100, 10, 0, 10)
    assert line_distance(a, b) == pytest.approx(10.0)
    assert line_distance(b, a) == pytest.approx(10.0)
    # The same path drawn with an extra vertex is the same line.
    assert line_distance(a, line(0, 0, 50, 0, 100, 0)) == pytest.approx(0.0, abs=1e-9)


def test_iou_of_a_line_is_an_error():
    with pytest.raises(VlqcError, match="only bbox_2d and poly"):
        iou(line(0, 0, 10, 10), box(0, 0, 10, 10))


# --- matching ----------------------------------------------------------------------------------------


def test_a_perfect_answer_gives_f1_one():
    doc = score([(clean(GT), GT)], [0.5, 0.75], line_threshold=25)
    for threshold in (0.5, 0.75):
        entry = at(doc, threshold)
        assert (entry["tp"], entry["fp"], entry["fn"]) == (3, 0, 0)
        assert entry["precision"] == entry["recall"] == entry["f1"] == 1.0
        assert entry["mean_iou"] == 1.0 and entry["mean_line_distance"] == 0.0
        assert entry["desc_exact"] == 1.0
        assert all(a["accuracy"] == 1.0 for a in entry["attributes"].values())
    assert doc["parse"]["parse_failure_rate"] == 0.0 and doc["parse"]["salvage_rate"] == 0.0


def test_a_box_shifted_below_the_threshold_is_a_false_positive_and_a_false_negative():
    truth = [box(100, 100, 200, 200)]
    shifted = [box(150, 100, 250, 200)]  # IoU 50/150 = 0.33
    doc = score([(clean(shifted), truth)], [0.3, 0.5], line_threshold=25)
    assert (at(doc, 0.5)["tp"], at(doc, 0.5)["fp"], at(doc, 0.5)["fn"]) == (0, 1, 1)
    assert at(doc, 0.5)["f1"] == 0.0 and at(doc, 0.5)["mean_iou"] is None
    # A looser threshold takes it.
    assert (at(doc, 0.3)["tp"], at(doc, 0.3)["mean_iou"]) == (1, pytest.approx(1 / 3))


def test_an_extra_prediction_is_a_false_positive():
    extra = [*GT, box(700, 100, 800, 200)]
    entry = at(score([(clean(extra), GT)], [0.5], line_threshold=25))
    assert (entry["tp"], entry["fp"], entry["fn"]) == (3, 1, 0)
    assert entry["precision"] == 0.75 and entry["recall"] == 1.0


def test_hungarian_finds_the_assignment_a_greedy_best_first_pairing_misses():
    x, y = box(100, 0, 200, 100), box(110, 0, 210, 100)
    a, b = box(103, 0, 203, 100), box(70, 0, 170, 100)
    # Greedy would take a–x first (0.94, the best pair), leaving b with y at 0.43: one match.
    assert iou(a, x) > iou(a, y) > iou(b, x) >= 0.5 > iou(b, y)
    matching = match([a, b], [x, y], iou_threshold=0.5, line_threshold=25)
    assert [(p.pred, p.gt) for p in matching.pairs] == [(1, 0), (0, 1)]
    assert matching.unmatched_pred == matching.unmatched_gt == ()


def test_among_as_many_pairs_the_larger_total_iou_wins():
    truth = [box(0, 0, 100, 100), box(300, 0, 400, 100)]
    pred = [box(300, 0, 400, 100), box(5, 0, 105, 100)]
    matching = match(pred, truth, iou_threshold=0.5, line_threshold=25)
    assert [(p.pred, p.gt) for p in matching.pairs] == [(1, 0), (0, 1)]
    assert matching.pairs[1].iou == 1.0


def test_lines_never_match_areas_and_match_lines_within_the_distance():
    truth = [line(0, 500, 1000, 500), box(0, 480, 1000, 520)]
    pred = [box(0, 490, 1000, 510), line(1000, 510, 0, 510), line(0, 800, 1000, 800)]
    matching = match(pred, truth, iou_threshold=0.5, line_threshold=25)
    assert [(p.pred, p.gt) for p in matching.pairs] == [(1, 0), (0, 1)]
    assert matching.pairs[0].distance == pytest.approx(10.0) and matching.pairs[0].iou is None
    assert matching.pairs[1].iou == pytest.approx(0.5) and matching.pairs[1].distance is None
    assert matching.unmatched_pred == (2,)  # 300 units away
    assert match(pred[1:2], truth[:1], iou_threshold=0.5, line_threshold=5).pairs == ()


def test_bad_thresholds_are_errors():
    with pytest.raises(VlqcError, match="iou_threshold"):
        match([], [], iou_threshold=0, line_threshold=25)
    with pytest.raises(VlqcError, match="line_threshold"):
        match([], [], iou_threshold=0.5, line_threshold=0)


# --- descs and categories ------------------------------------------------------------------------


def test_attribute_accuracy_counts_a_wrong_attribute_and_an_extra_key():
    truth = [box(100, 100, 200, 200, SCREW)]
    pred = [box(100, 100, 200, 200, "类别=BBU安装螺丝,可见性=部分,符合性=符合,备注=无")]
    entry = at(score([(clean(pred), truth)], [0.5], line_threshold=25))
    assert entry["tp"] == 1 and entry["desc_exact"] == 0.0
    attributes = {key: (a["right"], a["scored"]) for key, a in entry["attributes"].items()}
    assert attributes == {"类别": (1, 1), "可见性": (0, 1), "符合性": (1, 1), "备注": (0, 1)}


def test_an_unparseable_predicted_desc_gets_every_attribute_wrong_and_its_own_category():
    truth = [box(100, 100, 200, 200, SCREW)]
    pred = [box(100, 100, 200, 200, "类别="), box(600, 600, 700, 700, "类别=")]
    doc = score([(clean(pred), truth)], [0.5], line_threshold=25)
    assert all(a["right"] == 0 for a in at(doc)["attributes"].values())
    assert category_at(doc, "BBU安装螺丝")["tp"] == 1
    assert category_at(doc, UNPARSED)["fp"] == 1


def test_per_category_counts_follow_the_ground_truth_for_matches_and_misses_the_prediction_for_extras():
    truth = [box(100, 100, 200, 200, BBU), box(400, 400, 450, 450, SCREW)]
    # The BBU found but called a screw; the screw missed; a screw where nothing is.
    pred = [box(100, 100, 200, 200, SCREW), box(800, 800, 850, 850, SCREW)]
    doc = score([(clean(pred), truth)], [0.5], line_threshold=25)
    bbu, screw = category_at(doc, "BBU设备"), category_at(doc, "BBU安装螺丝")
    assert (bbu["tp"], bbu["fp"], bbu["fn"]) == (1, 0, 0)
    assert bbu["attributes"]["类别"]["accuracy"] == 0.0
    assert (screw["tp"], screw["fp"], screw["fn"]) == (0, 1, 1)
    assert doc["categories"]["BBU安装螺丝"]["gt_objects"] == 1


def test_aggregation_sums_counts_over_images():
    one = [box(100, 100, 200, 200)]
    four = [box(100 * i, 500, 100 * i + 50, 550) for i in range(1, 5)]
    doc = score([(clean(one), one), (clean([]), four)], [0.5], line_threshold=25)
    entry = at(doc)
    # Micro: 1 of 5 objects found (an image-wise mean would say 0.5).
    assert (entry["tp"], entry["fn"], entry["recall"], entry["precision"]) == (1, 4, 0.2, 1.0)
    assert doc["images"] == 2 and doc["gt_objects"] == 5 and doc["pred_objects"] == 1


def test_counts_of_one_image_per_category_sum_to_the_overall():
    pred = [*GT[:2], box(700, 100, 800, 200, BBU)]
    matching = match(pred, GT, iou_threshold=0.5, line_threshold=25)
    overall, per = count(pred, GT, matching)
    assert (overall.tp, overall.fp, overall.fn) == (2, 1, 1)
    assert sum(c.tp for c in per.values()) == 2 and sum(c.fp for c in per.values()) == 1
    assert sum(c.fn for c in per.values()) == 1


# --- answers ----------------------------------------------------------------------------------------


def answer(objects, cut: int | None = None) -> str:
    body = {
        f"object_{n}": {
            o.kind: list(o.points),
            **({f"{o.kind}_points": len(o.points) // 2} if o.kind != "bbox_2d" else {}),
            "desc": o.desc,
        }
        for n, o in enumerate(objects, 1)
    }
    text = "<DOMAIN=BBU>, <TASK=DETECTION>\n" + json.dumps(body, ensure_ascii=False, separators=(", ", ": "))
    return text[:cut] if cut else text


def test_a_clean_answer_parses_strictly():
    prediction = read_prediction(answer(GT))
    assert prediction.strict_ok and not prediction.salvaged and prediction.rule is None
    assert prediction.objects == tuple(GT)


def test_a_truncated_answer_is_salvaged_to_its_complete_objects():
    text = answer(GT)
    cut = text.index('"object_3"') + 20  # inside the third object
    prediction = read_prediction(text[:cut])
    assert not prediction.strict_ok and prediction.salvaged and prediction.rule
    assert prediction.objects == tuple(GT[:2])
    doc = score([(prediction, GT), (read_prediction(text), GT)], [0.5], line_threshold=25)
    assert doc["parse"]["strict_failed"] == 1 and doc["parse"]["salvaged"] == 1
    assert doc["parse"]["parse_failure_rate"] == 0.5 and doc["parse"]["salvage_rate"] == 0.5
    assert (at(doc)["tp"], at(doc)["fn"]) == (5, 1)


def test_an_answer_with_nothing_to_salvage_fails_and_scores_as_no_objects():
    prediction = read_prediction('<DOMAIN=BBU>, <TASK=DETECTION>\n{"object_1": {"bbox_2d": [1, 2')
    assert not prediction.strict_ok and not prediction.salvaged and prediction.objects == ()
    doc = score([(prediction, GT)], [0.5], line_threshold=25)
    assert doc["parse"]["parse_failure_rate"] == 1.0 and doc["parse"]["salvage_rate"] == 0.0
    assert (at(doc)["tp"], at(doc)["fn"], at(doc)["precision"]) == (0, 3, None)
