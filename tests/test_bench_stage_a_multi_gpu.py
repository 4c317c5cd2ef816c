"""bench/stage_a_multi_gpu.py on CPU ranks: skewed groups, both sharding modes, 1 and 2 ranks (tiny model)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from vlqc.train.base_model import build_tiny_base

REPO = Path(__file__).resolve().parents[1]
# Whole benchmark runs under torchrun (four of them, ~1 min on 2 cores): end to end, not a unit test.
pytestmark = pytest.mark.e2e


def test_runs_both_modes_on_one_and_two_ranks_and_compares_them(tmp_path):
    checkpoint = tmp_path / "tiny"
    build_tiny_base(checkpoint, sizes=None, seed=3)
    out = tmp_path / "report.json"
    command = [
        sys.executable,
        str(REPO / "bench/stage_a_multi_gpu.py"),
        "--checkpoint",
        str(checkpoint),
        "--device",
        "cpu",
        "--images",
        "9",
        "--group-sizes",
        "1,4",
        "--new-tokens",
        "2",
        "--batch-size",
        "4",
        "--max-pixels",
        "16384",
        "--work",
        str(tmp_path / "work"),
        "--out",
        str(out),
    ]
    subprocess.run(command, check=True, capture_output=True, text=True)
    report = json.loads(out.read_text(encoding="utf-8"))
    assert report["groups"] == 4  # sizes 1, 4, 1 and the cut 3
    runs = {(r["mode"], r["ranks"]): r for r in report["runs"]}
    assert set(runs) == {(mode, ranks) for mode in ("per_group", "per_image") for ranks in (1, 2)}
    assert all(r["images"] == r["generated"] == 9 and r["images_per_s"] > 0 for r in runs.values())
    assert sum(runs["per_image", 2]["rank_images"]) == 9 and len(runs["per_image", 2]["rank_generate_s"]) == 2
    assert max(runs["per_image", 2]["rank_images"]) == 5  # dealt out one by one
    assert set(report["comparisons"]) == {
        "per_group_speedup_2_over_1",
        "per_image_speedup_2_over_1",
        "per_image_over_per_group_at_2",
    }
