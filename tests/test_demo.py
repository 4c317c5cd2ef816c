"""Synthetic demo tickets: determinism, layout, exports (both variants, EXIF), labels by rule."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from vlqc.demo import MISSIONS, generate
from vlqc.demo.render import EXIF_ORIENTATION_TAG, render, stored_transpose, transpose_points
from vlqc.demo.scene import PhotoPlan, Strip, Unit, bbu, build_scene, label, point, shield
from vlqc.demo.tickets import PLANNERS, Options, write_photo
from vlqc.missions import load_missions, mission_rules
from vlqc.tickets import group_id_from

REPO = Path(__file__).resolve().parents[1]
DEFINED = load_missions(REPO / "config" / "missions.yaml")
RULES = mission_rules(DEFINED)
GROUP_RE = re.compile(r"^QC-[A-Z]+-[0-9]{8}-[0-9]{7}$")
LABEL_DIRS = {"审核通过": "pass", "审核不通过": "fail"}


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("demo") / "tickets"
    summary = generate(
        out, pick(*MISSIONS), tickets_per_mission=6, seed=7, datalist_fraction=0.25, exif_fraction=0.3, progress=False
    )
    return out, summary


def pick(*names: str) -> dict[str, dict]:
    """Mission entries of config/missions.yaml, as `generate` takes them."""
    return {name: DEFINED[name] for name in names}


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _images(root: Path) -> list[Path]:
    return sorted(root.rglob("*.jpg"))


def _manifest(root: Path) -> list[dict]:
    return json.loads(root.with_name(f"{root.name}.json").read_text(encoding="utf-8"))["tickets"]


# --- an independent reading of the exports (raw answers: docs/export-format.md, docs/taxonomy.md) ---

VISIBLE = {"显示完整": "完整", "只显示部分": "部分"}
SIMPLE = {
    "这个BBU设备是什么品牌": ("品牌", {"华为": "华为", "中兴": "中兴", "爱立信": "爱立信"}),
    "这个BBU设备是否显示完整": ("可见性", VISIBLE),
    "这个挡风板是什么牌子": ("品牌", {"华为": "华为", "中兴": "中兴"}),
    "这个挡风板是否显示完整": ("可见性", VISIBLE),
    "这个挡风板安装方向是否正确": ("安装方向", {"安装方向正确": "方向正确", "安装方向错误": "方向错误"}),
    "这个挡风板是否被杂物遮挡": (None, {"无遮挡": None}),
    "螺丝/插头是否显示完整": ("可见性", VISIBLE),
    "这条光纤是否被遮挡": (None, {"无遮挡": None}),
    "这条光纤弯曲半径是否合理": (
        "弯曲半径",
        {"弯曲半径合理": "半径合理", "弯曲半径不合理（弯曲半径<4cm或者成环）": "半径不合理<4cm或成环"},
    ),
    "这条电线是否被遮挡": (None, {"无遮挡": None}),
    "这条电线是否捆扎整齐": ("捆扎", {"捆扎整齐": "整齐", "分布散乱": "散乱"}),
    "能否阅读标签上的文字内容": ("可读性", {"能": None, "不能": "不可读"}),
}
SUBTYPES = {"BBU安装螺丝", "机柜处接地螺丝", "地排处接地螺丝", "ODF端光纤插头", "BBU端光纤插头"}
ISSUES = {"未拧紧", "露铜", "复接", "生锈"}
CONTENT_KEYS = {"bbu": "BBU设备", "bbu_shield": "挡风板", "fiber": "光纤", "wire": "电线", "label": "标签"}


def _answers(zh: dict[str, str]) -> dict[str, str]:
    """Raw answers → desc attributes; any answer outside the documented vocabulary fails the test."""
    out: dict[str, str] = {}
    for q, raw in zh.items():
        if q == "标签":
            continue
        if q in SIMPLE:
            key, values = SIMPLE[q]
            assert raw in values, f"{q}: unexpected raw answer {raw!r}"
            if key and values[raw]:
                out[key] = values[raw]
        elif q == "这个BBU设备是否需要安装挡风板，结合图片中机柜空间状态判断":
            need = {"无需安装": {"挡风板需求": "免装"},
                    "机柜空间充足，需要安装/这个BBU设备按要求配备了挡风板": {"挡风板需求": "空间充足需安装", "挡风板符合性": "按要求配备"},  # noqa: E501
                    "机柜空间充足，需要安装/这个BBU设备未按要求配备挡风板": {"挡风板需求": "空间充足需安装", "挡风板符合性": "未按要求配备"}}  # fmt: skip  # noqa: E501
            assert raw in need, raw
            out |= need[raw]
        elif q == "这个螺丝/插头是什么种类":
            assert raw in SUBTYPES, raw
            out["类别"] = raw
        elif q == "这个螺丝/插头连接是否符合要求":
            if raw == "符合要求":
                out["符合性"] = "符合"
            else:
                head, _, issues = raw.partition("/")
                parts = re.split("[,，]", issues)
                assert head == "不符合要求" and parts and set(parts) <= ISSUES, raw
                out |= {"符合性": "不符合", "问题": "|".join(parts)}
        elif q == "这条光纤是否采用保护措施":
            details = {"蛇形管", "铠装", "同时有蛇形管和铠装"}
            assert raw == "无保护措施" or (
                raw.startswith("有保护措施，保护措施为/") and raw.split("/", 1)[1] in details
            ), raw
            out["保护措施"] = "无保护" if raw == "无保护措施" else "有保护"
        elif q == "请输入标签上的文字内容":
            assert raw, "empty OCR text"
            out["文本"] = raw
        else:
            raise AssertionError(f"unknown question key {q!r}")
    return out


def _legacy_fact(zh: dict[str, str]) -> dict[str, str]:
    """HEAD `dataList` filter: type in the allowed set, one allowed property token, 标签 without one."""
    parts = zh["标签"].split("/")
    kind, prop = parts[0], parts[1] if len(parts) > 1 else ""
    props = {"BBU设备": ("品牌", {"华为", "中兴", "爱立信"}), "挡风板": ("安装方向", {"方向正确", "方向错误"}),
             "光纤": ("保护措施", {"有保护", "无保护"}), "电线": ("捆扎", {"整齐", "散乱"})}  # fmt: skip
    fact = _answers(zh)
    if kind == "螺丝、光纤插头":
        assert prop in SUBTYPES, zh
        return {"类别": prop, **fact}
    if kind == "标签":
        assert prop == "", zh
        return {"类别": "标签", **fact}
    key, allowed = props[kind]
    assert prop in allowed, zh
    return {"类别": kind, key: prop, **fact}


def facts_from_export(doc: dict) -> list[dict[str, str]]:
    if "dataList" in doc:
        return [_legacy_fact(item["properties"]["contentZh"]) for item in doc["dataList"]]
    facts = []
    for feature in doc["markResult"]["features"]:
        props = feature["properties"]
        fact = _answers(props["contentZh"])
        key = props["content"]["label"]
        if key != "connect_point":
            fact["类别"] = CONTENT_KEYS[key]
        facts.append(fact)
    return facts


def _all_points(doc: dict) -> list[list[float]]:
    if "dataList" in doc:
        return [p for item in doc["dataList"] for p in item["coordinates"]]
    pts = []
    for f in doc["markResult"]["features"]:
        coords = f["geometry"]["coordinates"]
        pts += coords[0] if f["geometry"]["type"] == "Quad" else coords
    return pts


# --- determinism and layout -------------------------------------------------------------------


def test_same_seed_gives_identical_bytes_and_another_seed_differs(tmp_path: Path) -> None:
    runs = {}
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        generate(tmp_path / name, pick(*MISSIONS), tickets_per_mission=2, seed=seed, progress=False)
        runs[name] = _tree(tmp_path / name)
    assert runs["a"] == runs["b"]
    assert len(runs["a"]) > 10
    jpgs_a = {v for k, v in runs["a"].items() if k.endswith(".jpg")}
    jpgs_c = {v for k, v in runs["c"].items() if k.endswith(".jpg")}
    assert not jpgs_a & jpgs_c, "a different seed must draw different photos"


def test_layout_group_ids_and_manifest(demo: tuple[Path, dict]) -> None:
    out, summary = demo
    manifest = _manifest(out)
    assert summary["tickets"] == len(manifest) == 6 * len(MISSIONS)
    seen = set()
    for mission in MISSIONS:
        for label_dir in (out / mission).iterdir():
            assert label_dir.name in LABEL_DIRS
            for group in label_dir.iterdir():
                gid = group.name
                assert GROUP_RE.match(gid), gid
                assert gid not in seen
                seen.add(gid)
                jpgs = sorted(p.name for p in group.glob("*.jpg"))
                assert 1 <= len(jpgs) <= 5
                assert jpgs == sorted(f"{gid}_{k}.jpg" for k in range(1, len(jpgs) + 1))
                assert group_id_from(jpgs[0][:-4], "no-match") == gid  # Stage-A finds the same id
                assert sorted(p.name for p in group.iterdir()) == sorted(jpgs + [j[:-4] + ".json" for j in jpgs])
    assert seen == {r["group_id"] for r in manifest}
    for record in manifest:
        folder = out / record["mission"] / record["folder"] / record["group_id"]
        assert LABEL_DIRS[record["folder"]] == record["label"]
        assert sorted(p.name for p in folder.glob("*.jpg")) == sorted(record["images"])
    leftovers = [p.name for p in out.parent.iterdir() if p.name.startswith(".")] + [p.name for p in out.rglob(".*")]
    assert not leftovers, f"temp folders left behind: {leftovers}"


def test_rerun_replaces_the_output_folder_whole(tmp_path: Path) -> None:
    out = tmp_path / "tickets"
    (out / "stale").mkdir(parents=True)
    (out / "stale" / "old.jpg").write_bytes(b"x")
    generate(out, pick("挡风板安装检查"), tickets_per_mission=1, seed=1, progress=False)
    assert not (out / "stale").exists()
    # The ticket list sits beside the tree: the converter reads every *.json inside it.
    assert not list(out.glob("*.json"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tickets", "tickets.json"]


def test_rru_missions_are_skipped_and_missions_without_scenes_rejected(tmp_path: Path) -> None:
    summary = generate(tmp_path / "t", pick("RRU线缆", "BBU接地线检查"), tickets_per_mission=1, seed=1, progress=False)
    assert summary["skipped"] == ["RRU线缆"]
    assert list(summary["missions"]) == ["BBU接地线检查"]
    renamed = {"挡风板检查": DEFINED["挡风板安装检查"]}  # a BBU mission the demo has no planner for
    with pytest.raises(ValueError, match=r"no synthetic scenes for mission\(s\) \['挡风板检查'\]"):
        generate(tmp_path / "u", renamed, tickets_per_mission=1, seed=1)
    with pytest.raises(ValueError, match="no demo-capable mission"):
        generate(tmp_path / "v", pick("RRU线缆"), tickets_per_mission=1, seed=1)
    assert not (tmp_path / "u").exists() and not (tmp_path / "v").exists()


# --- images and exports -----------------------------------------------------------------------


def test_image_sizes_are_varied_and_never_multiples_of_32(demo: tuple[Path, dict]) -> None:
    sizes = set()
    for jpg in _images(demo[0]):
        with Image.open(jpg) as im:
            for side in im.size:
                assert 480 <= side <= 2000 and side % 32, (jpg.name, im.size)
            sizes.add(im.size)
    assert len(sizes) > 20


def test_every_export_is_readable_and_inside_its_image(demo: tuple[Path, dict]) -> None:
    variants = {"markResult": 0, "dataList": 0}
    oriented = 0
    for jpg in _images(demo[0]):
        doc = json.loads(jpg.with_suffix(".json").read_text(encoding="utf-8"))
        with Image.open(jpg) as im:
            raw_size = im.size
            orientation = im.getexif().get(EXIF_ORIENTATION_TAG)
            shown = ImageOps.exif_transpose(im).size
        assert (doc["info"]["width"], doc["info"]["height"]) == raw_size, "info must give the stored-pixel size"
        if orientation:
            oriented += 1
            assert 2 <= orientation <= 8
            assert shown == (raw_size[::-1] if orientation >= 5 else raw_size)
        variants["dataList" if "dataList" in doc else "markResult"] += 1
        w, h = raw_size
        for x, y in _all_points(doc):
            assert 0 <= x <= w and 0 <= y <= h, (jpg.name, x, y, raw_size)
        for f in doc.get("markResult", {}).get("features", []):
            geom, props = f["geometry"], f["properties"]
            assert props["groups"] == [] and isinstance(props["objectId"], int)
            if geom["type"] == "LineString":
                pts = geom["coordinates"]
                assert len(pts) >= 2 and all(a != b for a, b in zip(pts, pts[1:]))
                assert geom["lineType"] == "L" * len(pts)
            elif geom["type"] == "ExtentPolygon":
                ring = geom["coordinates"]
                (x0, y0), (x1, _), (_, y2) = ring[0], ring[1], ring[2]
                assert len(ring) == 5 and ring[0] == ring[-1] and x1 > x0 and y2 > y0, ring  # closed, clockwise
                assert props["area"] >= 1
            else:
                assert geom["type"] == "Quad"
                ring = geom["coordinates"][0]
                assert ring[0] == ring[-1] and len({tuple(p) for p in ring}) == 4
                assert props["area"] >= 1
    assert variants["markResult"] > variants["dataList"] > 0
    assert oriented > 0


def test_exports_carry_what_the_manifest_records(demo: tuple[Path, dict]) -> None:
    """Irrelevant photos have no objects; others have 1-6, as the manifest says."""
    out = demo[0]
    counts = []
    for record in _manifest(out):
        folder = out / record["mission"] / record["folder"] / record["group_id"]
        for f in record["files"]:
            facts = facts_from_export(json.loads((folder / f["name"]).with_suffix(".json").read_text(encoding="utf-8")))
            assert len(facts) == f["objects"]
            counts.append(len(facts))
    assert all(n <= 6 for n in counts) and max(counts) >= 4


def test_labels_follow_the_mission_rules_on_the_written_exports(demo: tuple[Path, dict]) -> None:
    """The independent reading of every export, photo by photo, gives the rule the same verdict and
    Reason clauses as the labeller had; the manifest states the rule in words."""
    out = demo[0]
    listed = json.loads(out.with_name(f"{out.name}.json").read_text(encoding="utf-8"))
    assert listed["rules"] == {m: RULES[m].describe() for m in MISSIONS}
    for record in listed["tickets"]:
        folder = out / record["mission"] / record["folder"] / record["group_id"]
        photos = [
            facts_from_export(json.loads((folder / name).with_suffix(".json").read_text(encoding="utf-8")))
            for name in record["images"]
        ]
        outcome = RULES[record["mission"]].evaluate(photos)
        assert outcome.verdict == record["label"] == LABEL_DIRS[record["folder"]], (record["group_id"], outcome)
        assert list(outcome.problems if outcome.verdict == "fail" else outcome.seen) == record["reasons"]
        assert record["reason"] == "；".join(record["reasons"]) and record["reasons"]


def test_fail_share_is_balanced(demo: tuple[Path, dict]) -> None:
    manifest = _manifest(demo[0])
    for mission in MISSIONS:
        labels = [r["label"] for r in manifest if r["mission"] == mission]
        assert 0.3 <= labels.count("fail") / len(labels) <= 0.7, mission
    assert 0.4 <= demo[1]["fail_share"] <= 0.6


# --- EXIF geometry and drawing cues -----------------------------------------------------------


@pytest.mark.parametrize("orientation", range(2, 9))
def test_stored_pixels_and_points_invert_the_exif_display_transform(orientation: int) -> None:
    shown = Image.new("RGB", (50, 30))
    shown.putpixel((7, 4), (255, 255, 255))
    raw = shown.transpose(stored_transpose(orientation))
    exif = Image.Exif()
    exif[EXIF_ORIENTATION_TAG] = orientation
    raw.info["exif"] = exif.tobytes()
    assert ImageOps.exif_transpose(raw).tobytes() == shown.tobytes()
    ((x, y),) = transpose_points([(7.5, 4.5)], stored_transpose(orientation), shown.size)
    assert raw.getpixel((int(x), int(y))) == (255, 255, 255)


def test_exif_tagged_exports_locate_objects_in_the_stored_pixels(tmp_path: Path) -> None:
    """The shield's yellow arrow, as stored (pre-EXIF) pixels, lies inside the exported shield quad."""
    seen = set()
    for seed in range(40):
        plan = PhotoPlan("strips", strips=[Strip("shield", [shield("中兴")])])
        write_photo(
            plan,
            tmp_path / f"p{seed}",
            np.random.default_rng(seed),
            Options(datalist_fraction=0.0, exif_fraction=1.0),
        )
        with Image.open(tmp_path / f"p{seed}.jpg") as im:
            seen.add(im.getexif()[EXIF_ORIENTATION_TAG])
            raw = np.asarray(im.convert("RGB")).astype(int)
        doc = json.loads((tmp_path / f"p{seed}.json").read_text(encoding="utf-8"))
        ring = doc["markResult"]["features"][0]["geometry"]["coordinates"][0]
        x0, y0 = min(p[0] for p in ring), min(p[1] for p in ring)
        x1, y1 = max(p[0] for p in ring), max(p[1] for p in ring)
        yellow = (raw[..., 0] > 170) & (raw[..., 1] > 140) & (raw[..., 2] < 90)
        inside = yellow[y0:y1, x0:x1].sum()
        assert inside > 500 and yellow.sum() - inside < 0.01 * inside, (seed, inside, yellow.sum())
    assert seen == set(range(2, 9))


def _render(plan: PhotoPlan, seed: int = 0) -> tuple[np.ndarray, list]:
    rng = np.random.default_rng(seed)
    scene = build_scene(plan, 901, 701, rng)
    return np.asarray(render(scene, rng)).astype(int), scene.objects


def _crop(arr: np.ndarray, points: list) -> np.ndarray:
    xs, ys = [int(p[0]) for p in points], [int(p[1]) for p in points]
    return arr[min(ys) : max(ys), min(xs) : max(xs)]


def test_shield_arrow_points_right_when_correct_and_left_when_wrong() -> None:
    for correct in (True, False):
        arr, objects = _render(PhotoPlan("strips", strips=[Strip("shield", [shield("华为", correct=correct)])]))
        region = _crop(arr, objects[0].points)
        yellow = (region[..., 0] > 180) & (region[..., 1] > 150) & (region[..., 2] < 90)
        cols = np.nonzero(yellow.any(axis=0))[0]
        centroid = np.nonzero(yellow)[1].mean()
        head_right = centroid > (cols.min() + cols.max()) / 2  # the wide arrow head pulls the centroid
        assert head_right == correct


def test_rusty_screw_is_brown_and_unreadable_label_is_blurred() -> None:
    plan = PhotoPlan("rack", units=[Unit(bbu("中兴"), screws=[point("BBU安装螺丝"), point("BBU安装螺丝", ["生锈"])])])
    arr, objects = _render(plan)
    good, rusty = (_crop(arr, o.points).reshape(-1, 3).mean(axis=0) for o in objects if o.kind == "connect_point")
    assert (rusty[0] - rusty[2]) > (good[0] - good[2]) + 25
    plan = PhotoPlan("strips", strips=[Strip("label", [label("GND-A1")]), Strip("label", [label(None)])])
    arr, objects = _render(plan)
    sharp, blurred = (np.abs(np.diff(_crop(arr, o.points).mean(axis=2), axis=1)).mean() for o in objects)
    assert sharp > 2 * blurred


@pytest.mark.parametrize("mission", MISSIONS)
def test_planners_reach_the_planned_verdict_within_size_limits(mission: str) -> None:
    """Over many seeds: 1-5 photos of 1-6 objects each that fit on the canvas, distractors never
    flip the verdict, and every failure mode is used."""
    modes = set()
    for seed in range(150):
        for fail in (True, False):
            rng = np.random.default_rng(seed)
            mode, photos = PLANNERS[mission](rng, fail)
            modes.add(mode)
            assert 1 <= len(photos) <= 5
            facts = []  # per photo
            for plan in photos:
                scene = build_scene(plan, 641, 481, rng)
                assert 1 <= len(scene.objects) <= 6, (seed, plan)
                for obj in scene.objects:
                    assert all(-1 <= x <= 641 and -1 <= y <= 481 for x, y in obj.points), (seed, obj)
                rects = [o.points for o in scene.objects if o.shape == "rect"]
                for i, ((ax0, ay0), (ax1, ay1)) in enumerate(rects):
                    for (bx0, by0), (bx1, by1) in rects[i + 1 :]:
                        assert ax1 <= bx0 or bx1 <= ax0 or ay1 <= by0 or by1 <= ay0, (seed, plan)
                facts.append([o.attrs for o in scene.objects])
            assert RULES[mission].evaluate(facts).verdict == ("fail" if fail else "pass"), (seed, mode, facts)
    assert len(modes) >= 4  # None (pass) and at least three ways to fail


# --- CLI ----------------------------------------------------------------------------------------


def test_cli_renders_and_validates_missions(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import runpy

    cli = runpy.run_path(str(REPO / "scripts" / "demo_tickets.py"), run_name="demo_tickets")
    args = ["--out", str(tmp_path / "t"), "--missions-file", str(REPO / "config" / "missions.yaml")]
    args += ["--manifest", str(tmp_path / "t.json")]

    def settings(*missions: str) -> list[str]:
        return ["--settings", json.dumps({"missions": missions, "tickets_per_mission": 1, "seed": 5})]

    assert cli["main"]([*args, *settings("BBU线缆布放要求")]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["missions"] == {
        "BBU线缆布放要求": {
            "tickets": 1,
            "fail": summary["missions"]["BBU线缆布放要求"]["fail"],
            "images": summary["images"],
        }
    }
    listed = json.loads((tmp_path / "t.json").read_text(encoding="utf-8"))["tickets"]
    assert [r["group_id"] for r in listed] == [p.name for p in (tmp_path / "t").glob("*/*/*")]
    assert not list((tmp_path / "t").glob("*.json")), "with --manifest the ticket root holds only photo exports"
    assert cli["main"]([*args, *settings("不存在的任务")]) == 1
    assert "not defined in" in capsys.readouterr().err
