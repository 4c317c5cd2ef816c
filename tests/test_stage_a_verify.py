"""verify_inputs on the tiny model's processor: one row per photo, problems per photo."""

from __future__ import annotations

from PIL import Image
from test_stage_a_infer import make_groups

from vlqc.inference.generation import load_processor
from vlqc.schemas import validate
from vlqc.stage_a.verify import verify
from vlqc.train.base_model import build_tiny_base


def test_each_photo_is_checked_and_bad_ones_fail_alone(tmp_path):
    build_tiny_base(tmp_path / "tiny", sizes=None, seed=3)
    processor = load_processor(tmp_path / "tiny", max_pixels=16384)
    groups = make_groups(tmp_path, [3])
    groups[0].images[1].write_bytes(b"")
    Image.new("RGB", (2100, 10)).save(groups[0].images[2])  # aspect ratio over 200
    rows = list(verify(groups, processor))
    for row in rows:
        validate(row, "stage_a_verify")
    assert [r["ok"] for r in rows] == [True, False, False]
    assert [r["error"]["code"] for r in rows[1:]] == ["empty_file", "unprocessable_image"]
    assert rows[0]["match"] and rows[0]["expected_tokens"] == rows[0]["actual_tokens"] > 0
    assert str(groups[0].images[2]) in rows[2]["error"]["message"]
