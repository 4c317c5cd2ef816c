"""Stage-A discovery and sampling: scan order, image selection and order, group ids, skipped
and empty folders, missing input, and the reproducible per-label sample."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from vlqc.errors import VlqcError
from vlqc.stage_a.discover import Group, discover, sample_groups
from vlqc.tickets import natural_key

MISSION = "挡风板安装检查"


def _image(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), "gray").save(path, format="PNG" if path.suffix.lower() == ".png" else "JPEG")


def _tree(root: Path, groups: dict[tuple[str, str], list[str]], mission: str = MISSION) -> Path:
    """Build `<root>/<mission>/<label dir>/<group>/<file>`; returns root."""
    for (label_dir, group), files in groups.items():
        folder = root / mission / label_dir / group
        folder.mkdir(parents=True, exist_ok=True)
        for name in files:
            _image(folder / name)
    return root


def test_natural_key_orders_digit_runs_by_value():
    assert sorted(["x_10.jpg", "x_2.jpg", "x_1.jpg"], key=natural_key) == ["x_1.jpg", "x_2.jpg", "x_10.jpg"]


def test_discovery_order_fail_first_groups_by_name_images_natural(tmp_path):
    root = _tree(
        tmp_path,
        {
            ("审核通过", "g_b"): ["x_10.jpg", "x_2.jpg", "x_1.JPG"],
            ("审核通过", "g_a"): ["only.Png"],
            ("审核不通过", "g_z"): ["b.jpeg", "a.jpg"],
            ("审核不通过", "g_c"): ["c.png"],
        },
    )
    groups = discover(root, MISSION)
    assert [(g.label, g.folder.name) for g in groups] == [
        ("fail", "g_c"),
        ("fail", "g_z"),
        ("pass", "g_a"),
        ("pass", "g_b"),
    ]
    assert [g.seq for g in groups] == [0, 1, 2, 3]
    assert all(g.mission == MISSION for g in groups)
    assert [p.name for p in groups[3].images] == ["x_1.JPG", "x_2.jpg", "x_10.jpg"]
    assert [p.name for p in groups[1].images] == ["a.jpg", "b.jpeg"]
    assert [p.name for p in groups[2].images] == ["only.Png"]
    assert groups[3].folder == root / MISSION / "审核通过" / "g_b"
    assert all(p.parent == groups[3].folder for p in groups[3].images)


def test_non_image_files_ignored(tmp_path):
    root = _tree(tmp_path, {("审核通过", "g"): ["a.jpg"]})
    folder = root / MISSION / "审核通过" / "g"
    (folder / "notes.txt").write_text("x")
    (folder / "a.jpg.bak").write_text("x")
    (folder / "Thumbs.db").write_bytes(b"\0")
    (folder / "sub.jpg").mkdir()  # a folder with an image suffix is not an image
    (groups,) = discover(root, MISSION)
    assert [p.name for p in groups.images] == ["a.jpg"]


def test_unknown_entries_skipped_with_warning(tmp_path, caplog):
    root = _tree(tmp_path, {("审核通过", "g"): ["a.jpg"], ("待审核", "h"): ["b.jpg"]})
    (root / MISSION / "readme.txt").write_text("x")
    (root / MISSION / "审核通过" / "stray.jpg").write_bytes(b"x")
    with caplog.at_level(logging.WARNING, logger="vlqc.stage_a.discover"):
        groups = discover(root, MISSION)
    assert [g.folder.name for g in groups] == ["g"]
    warned = " ".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert "待审核" in warned
    assert "readme.txt" in warned
    assert "stray.jpg" in warned


def test_group_id_from_first_image_or_folder_name(tmp_path):
    root = _tree(
        tmp_path,
        {
            ("审核不通过", "folder_one"): [
                "QC-TEMP-20241111-0015238_4276841.jpg",
                "QC-TEMP-20241111-0015238_4276850.jpg",
            ],
            ("审核通过", "folder_two"): ["QC-20230106-0000211_1.jpg"],
        },
    )
    regex_hit, fallback = discover(root, MISSION)
    assert regex_hit.group_id == "QC-TEMP-20241111-0015238"
    assert fallback.group_id == "folder_two"


def test_chinese_mission_name(tmp_path):
    mission = "BBU安装方式检查（正装）"
    root = _tree(tmp_path, {("审核通过", "组一"): ["图片_1.jpg"]}, mission=mission)
    (group,) = discover(root, mission)
    assert group.mission == mission
    assert group.images == (root / mission / "审核通过" / "组一" / "图片_1.jpg",)


def test_empty_group_kept_with_no_images(tmp_path):
    root = _tree(tmp_path, {("审核通过", "a_full"): ["x.jpg"], ("审核通过", "b_empty"): []})
    full, empty = discover(root, MISSION)
    assert empty.images == ()
    assert empty.group_id == "b_empty"
    assert (full.seq, empty.seq) == (0, 1)


def test_missing_mission_folder_names_the_path(tmp_path):
    _tree(tmp_path, {("审核通过", "g"): ["a.jpg"]})
    with pytest.raises(VlqcError, match="RRU线缆"):
        discover(tmp_path, "RRU线缆")
    with pytest.raises(VlqcError, match="nowhere"):
        discover(tmp_path / "nowhere", MISSION)


# --- sampling ---------------------------------------------------------------------------------


def _groups(n_fail: int, n_pass: int) -> list[Group]:
    labels = ["fail"] * n_fail + ["pass"] * n_pass
    return [Group(i, MISSION, label, f"G{i:03d}", Path(f"/x/G{i:03d}"), ()) for i, label in enumerate(labels)]


def test_sample_counts_per_label():
    picked = sample_groups(_groups(10, 20), pass_n=5, fail_n=3, seed=7)
    assert sum(g.label == "pass" for g in picked) == 5
    assert sum(g.label == "fail" for g in picked) == 3


def test_sample_is_deterministic_and_seed_dependent():
    groups = _groups(10, 20)
    first = sample_groups(groups, 5, 3, seed=7)
    assert sample_groups(groups, 5, 3, seed=7) == first
    assert [g.group_id for g in sample_groups(groups, 5, 3, seed=8)] != [g.group_id for g in first]


def test_sample_keeps_discovery_order_and_renumbers():
    groups = _groups(10, 20)
    picked = sample_groups(groups, 6, 4, seed=1)
    original = [int(g.group_id[1:]) for g in picked]
    assert original == sorted(original)
    assert [g.seq for g in picked] == list(range(10))
    assert [g.label for g in picked] == ["fail"] * 4 + ["pass"] * 6


def test_sample_none_and_over_ask_take_all(caplog):
    groups = _groups(3, 4)
    assert sample_groups(groups, None, None, seed=0) == groups
    with caplog.at_level(logging.WARNING, logger="vlqc.stage_a.discover"):
        picked = sample_groups(groups, 100, 1, seed=0)
    assert sum(g.label == "pass" for g in picked) == 4
    assert sum(g.label == "fail" for g in picked) == 1
    assert any("100" in r.getMessage() for r in caplog.records)


def test_sample_negative_is_an_error():
    with pytest.raises(VlqcError, match="-1"):
        sample_groups(_groups(2, 2), -1, None, seed=0)


def test_sample_same_in_every_process(tmp_path):
    # Distributed ranks each draw the sample; a hash-seed dependence would split them.
    code = (
        "from pathlib import Path; from vlqc.stage_a.discover import Group, sample_groups\n"
        "gs = [Group(i, 'm', 'pass' if i % 3 else 'fail', f'G{i}', Path('.'), ()) for i in range(40)]\n"
        "print([g.group_id for g in sample_groups(gs, 7, 4, seed=3)])\n"
    )
    outputs = {
        subprocess.run(
            [sys.executable, "-c", code],
            env={**os.environ, "PYTHONHASHSEED": hash_seed},
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        for hash_seed in ("1", "2")
    }
    assert len(outputs) == 1
