"""The report's grounding plot on small files in the documented format (docs/evaluation.md#grounding)."""

from __future__ import annotations

from PIL import Image

from vlqc.evaluation.grounding import Prediction, score
from vlqc.inference.answers import DenseObject
from vlqc.jsonl import write_json
from vlqc.report.grounding import plot_grounding

SCREW = "类别=BBU安装螺丝,可见性=完整,符合性=符合"
BBU = "类别=BBU设备,品牌=华为"


def grounding_doc(pairs) -> dict:
    metrics = score(pairs, [0.5, 0.75], line_threshold=25)
    return {
        "step": 3,
        "checkpoint": "results/train/sft/demo/steps/step_3",
        "val": "results/data/demo/val.jsonl",
        "seed": 31,
        "images_requested": 64,
        "images_eligible": len(pairs),
        "max_new_tokens": 64,
        **metrics,
    }


def test_plot_shows_overall_and_every_category(tmp_path):
    truth = [DenseObject("bbox_2d", (10, 10, 100, 100), BBU), DenseObject("bbox_2d", (300, 300, 340, 340), SCREW)]
    found = Prediction((truth[0],), strict_ok=True, salvaged=False, rule=None, dropped=())
    path = tmp_path / "step_3.json"
    write_json(path, grounding_doc([(found, truth)]), schema="eval_grounding")
    out = tmp_path / "grounding.png"
    summary = plot_grounding(path, out, "demo")
    assert summary == {"step": 3, "f1": 2 / 3, "categories": 2}
    with Image.open(out) as image:
        assert image.format == "PNG" and image.size[0] > 600


def test_plot_of_no_photo_says_so(tmp_path):
    path = tmp_path / "step_3.json"
    write_json(path, grounding_doc([]), schema="eval_grounding")
    summary = plot_grounding(path, tmp_path / "grounding.png", "demo")
    assert summary == {"step": 3, "f1": None, "categories": 0}
