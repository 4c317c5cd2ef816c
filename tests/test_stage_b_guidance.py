"""The guidance store: loading and validation, the op engine rules, rule lifecycle, snapshots, timestamps."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import REPO

from vlqc.errors import VlqcError
from vlqc.inference.prompts import verdict_messages
from vlqc.jsonl import read_json
from vlqc.missions import load_missions
from vlqc.stage_b.guidance import (
    FORBIDDEN_PHRASES,
    GUIDANCE_FILE,
    MAX_RULE_CHARS,
    PLACEHOLDER_G0,
    SCHEMA,
    SNAPSHOT_DIR,
    Guidance,
    Operation,
    confidence,
    load_mission,
    read_guidance_file,
    rule_text_problem,
)

MISSIONS = load_missions(REPO / "config" / "missions.yaml")
SEED_DIR = REPO / "config" / "stage_b"
MISSION = "挡风板安装检查"
SEED = SEED_DIR / f"{MISSION}.json"
STAMP = "2026-01-01T00:00:00+00:00"
G1_TEXT = "若所有BBU均为免装（含爱立信设备）且无方向错误，则判通过；若出现未按要求配备或方向错误，则判不通过。"


def guidance(**experiences: str) -> Guidance:
    rules = {"G0": "必须看到BBU设备。", "S1": "无关图片不计入证据。", "G1": G1_TEXT, **experiences}
    return Guidance(MISSION, 0, STAMP, rules)


def write_guidance(path: Path, section: dict) -> Path:
    path.write_text(json.dumps({MISSION: section}, ensure_ascii=False), encoding="utf-8")
    return path


def section(**changes) -> dict:
    base = {"step": 0, "updated_at": STAMP, "experiences": {"G0": "必须看到BBU设备。"}}
    return {**base, **changes}


# --- ops --------------------------------------------------------------------------------------------


def test_add_takes_the_next_key_and_records_sources_and_a_hit():
    g = guidance()
    op = Operation("add", text="挡风板被杂物挡住时以全局图为准。", rationale="新规则", evidence=("A::fail",))
    result = g.apply(op, "r1", ["A", "B"])
    assert (result.accepted, result.key, result.action) == (True, "G2", "add")
    assert g.experiences["G2"] == "挡风板被杂物挡住时以全局图为准。"
    meta = g.metadata["G2"]
    assert (meta["sources"], meta["reflection_id"], meta["rationale"]) == (["A::fail", "A", "B"], "r1", "新规则")
    assert (meta["hit_count"], meta["miss_count"], meta["confidence"]) == (1, 0, pytest.approx(1 / (1 + 1e-5)))
    assert g.step == 1


def test_next_key_is_one_above_the_highest_g_number():
    g = guidance(G2="规则二。", G10="规则十。")
    assert g.apply(Operation("add", text="单台BBU一般免装挡风板。"), "r1").key == "G11"


def test_update_replaces_text_and_adds_a_hit_keeping_misses():
    g = guidance()
    g.record_miss("G1")
    result = g.apply(Operation("update", key="G1", text="出现方向错误即判不通过。"), "r2")
    assert (result.accepted, result.key, result.action) == (True, "G1", "update")
    assert g.experiences["G1"] == "出现方向错误即判不通过。"
    assert (g.metadata["G1"]["hit_count"], g.metadata["G1"]["miss_count"]) == (1, 1)
    assert g.step == 1


def test_update_of_g0_is_allowed():
    g = guidance()
    assert g.apply(Operation("update", key="G0", text="必须看到BBU设备并判定挡风板需求。"), "r1").accepted
    assert g.experiences["G0"] == "必须看到BBU设备并判定挡风板需求。"


def test_delete_removes_the_rule_and_its_metadata():
    g = guidance(G2="规则二。")
    g.record_hit("G2")
    result = g.apply(Operation("delete", key="G2"), "r1")
    assert (result.accepted, result.action) == (True, "delete")
    assert "G2" not in g.experiences and "G2" not in g.metadata
    assert g.step == 1


def test_merge_rewrites_the_target_and_removes_the_merged_rules():
    g = guidance(G2="华为挡风板与黄色箭头一一对应。", G3="爱立信BBU不装挡风板。")
    result = g.apply(
        Operation("merge", key="G1", text="爱立信BBU免装；华为挡风板与黄色箭头一一对应。", merged_from=("G2", "G3")),
        "r1",
    )
    assert (result.accepted, result.action) == (True, "merge")
    assert sorted(g.experiences) == ["G0", "G1", "S1"]
    assert g.experiences["G1"] == "爱立信BBU免装；华为挡风板与黄色箭头一一对应。"
    assert g.step == 1


def test_add_similar_to_an_existing_rule_updates_it():
    g = guidance()
    similar = G1_TEXT.replace("则判通过", "则判为通过")
    result = g.apply(Operation("add", text=similar), "r1")
    assert (result.accepted, result.key, result.action) == (True, "G1", "update")
    assert g.experiences["G1"] == similar
    assert sorted(g.experiences) == ["G0", "G1", "S1"]


def test_add_of_a_different_rule_is_not_mistaken_for_a_similar_one():
    g = guidance()
    assert g.apply(Operation("add", text="若所有BBU均为免装则判通过。"), "r1").key == "G2"


def test_identical_normalized_text_reuses_the_key():
    # Raw texts only 0.56 alike: the match comes from normalization (width, whitespace).
    g = guidance(G2="单台BBU免装。")
    result = g.apply(Operation("add", text="单台 ＢＢＵ 免装。"), "r1")
    assert (result.key, result.action) == ("G2", "update")
    assert sorted(g.experiences) == ["G0", "G1", "G2", "S1"]


def test_add_repeating_a_structural_invariant_is_rejected():
    g = guidance()
    assert g.apply(Operation("add", text="无关图片不计入证据。"), "r1").reason == "duplicates_structural"


@pytest.mark.parametrize(
    ("op", "reason"),
    [
        (Operation("update", key="S1", text="新文本。"), "structural_key"),
        (Operation("delete", key="S1"), "structural_key"),
        (Operation("merge", key="S1", text="新文本。", merged_from=("G1",)), "structural_key"),
        (Operation("merge", key="G1", text="新文本。", merged_from=("S1",)), "structural_key"),
        (Operation("delete", key="G0"), "g0_protected"),
        (Operation("merge", key="G1", text="新文本。", merged_from=("G0",)), "g0_protected"),
        (Operation("merge", key="G1", text="新文本。", merged_from=("G1",)), "merge_into_self"),
        (Operation("merge", key="G1", text="新文本。"), "missing_merged_from"),
        (Operation("merge", key="G1", text="新文本。", merged_from=("G7",)), "unknown_key"),
        (Operation("update", key="G01", text="新文本。"), "bad_key"),
        (Operation("update", key="X1", text="新文本。"), "bad_key"),
        (Operation("update", key="g1", text="新文本。"), "bad_key"),
        (Operation("update", key="G9", text="新文本。"), "unknown_key"),
        (Operation("update", text="新文本。"), "missing_key"),
        (Operation("update", key="G1"), "missing_text"),
        (Operation("update", key="G1", text="  "), "missing_text"),
        (Operation("add", key="G5", text="新文本。"), "add_has_key"),
        (Operation("rename", key="G1"), "unknown_op"),
        (Operation("none"), "no_op"),
    ],
)
def test_rejected_ops_say_why_and_change_nothing(op, reason):
    g = guidance()
    before = (dict(g.experiences), dict(g.metadata), g.step)
    result = g.apply(op, "r1")
    assert (result.accepted, result.reason, result.op) == (False, reason, op)
    assert (g.experiences, g.metadata, g.step) == before


def test_text_longer_than_160_characters_is_rejected_not_truncated():
    g = guidance()
    assert g.apply(Operation("update", key="G1", text="规" * MAX_RULE_CHARS), "r1").accepted
    result = g.apply(Operation("update", key="G1", text="则" * (MAX_RULE_CHARS + 1)), "r1")
    assert (result.accepted, result.reason) == (False, "text_too_long")
    assert g.experiences["G1"] == "规" * MAX_RULE_CHARS


@pytest.mark.parametrize("phrase", FORBIDDEN_PHRASES)
def test_third_state_phrases_are_rejected(phrase):
    assert rule_text_problem(f"挡风板方向看不清时{phrase}。") == "forbidden_phrase"


def test_forbidden_phrases_match_regardless_of_case():
    assert rule_text_problem("Needs Review when unclear") == "forbidden_phrase"


@pytest.mark.parametrize(
    "text", ["不应判定为通过。", "不建议判断为不通过。", "不要把单台BBU判为不通过。", "不得判为通过。"]
)
def test_ambiguous_negations_are_rejected(text):
    assert rule_text_problem(text) == "ambiguous_negation"


@pytest.mark.parametrize(
    "text",
    [
        "标签/无法识别时判不通过。",
        "image_2显示挡风板缺失则判不通过。",
        "Image3中方向错误则判不通过。",
        "BBU设备/华为/显示完整，判通过。",
        "挡风板/方向正确×2则判通过。",
    ],
)
def test_pasted_summary_chains_are_rejected(text):
    assert rule_text_problem(text) == "summary_chain"


def test_a_plain_rule_passes_the_text_checks():
    assert rule_text_problem("单台BBU一般免装挡风板；两台BBU之间需要挡风板。") is None
    assert rule_text_problem("华为/中兴设备按要求配备挡风板。") is None  # one slash without chain words


# --- lifecycle --------------------------------------------------------------------------------------


def test_hits_and_misses_set_confidence():
    g = guidance()
    g.record_hit("G1")
    for _ in range(3):
        g.record_miss("G1")
    assert (g.metadata["G1"]["hit_count"], g.metadata["G1"]["miss_count"]) == (1, 3)
    assert g.metadata["G1"]["confidence"] == pytest.approx(confidence(1, 3)) == pytest.approx(0.25, rel=1e-4)
    assert g.metadata["G1"]["reflection_id"] == "seed"


def test_prune_removes_low_confidence_rules_after_enough_misses_only():
    g = guidance(G2="规则二。", G3="规则三。")
    for key, hits, misses in (("G1", 1, 3), ("G2", 0, 2), ("G3", 2, 3), ("G0", 0, 5), ("S1", 0, 5)):
        for _ in range(hits):
            g.record_hit(key)
        for _ in range(misses):
            g.record_miss(key)
    # Under confidence 0.35 after 3 misses: G2 has too few misses, G3 confidence 0.4; G0 and S1 are never pruned.
    assert g.prune(0.35, 3) == ["G1"]
    assert sorted(g.experiences) == ["G0", "G2", "G3", "S1"]
    assert "G1" not in g.metadata
    assert g.step == 1


def test_counting_an_unknown_rule_is_an_error():
    with pytest.raises(VlqcError, match="G9"):
        guidance().record_hit("G9")


# --- order and files --------------------------------------------------------------------------------


def test_rules_sort_by_kind_then_number():
    g = guidance(G10="十。", G2="二。", S10="结构十。", S2="结构二。")
    assert [key for key, _ in g.rules_sorted()] == ["G0", "G1", "G2", "G10", "S1", "S2", "S10"]


def test_save_round_trips_through_the_schema(tmp_path):
    g = load_mission(SEED, MISSION)
    g.apply(Operation("add", text="单台BBU一般免装挡风板。", evidence=("A::pass",)), "r1", ["A"])
    path = g.save(tmp_path, retention=3)
    assert path == tmp_path / GUIDANCE_FILE
    read_json(path, schema=SCHEMA)
    again = load_mission(path, MISSION)
    assert (again.experiences, again.metadata, again.step) == (g.experiences, g.metadata, 1)


def test_snapshots_number_the_previous_files_and_keep_the_newest(tmp_path):
    g = load_mission(SEED, MISSION)
    g.save(tmp_path, retention=2)
    assert not (tmp_path / SNAPSHOT_DIR).exists()  # nothing to snapshot before the first write
    for n in range(1, 5):
        g.apply(Operation("update", key="G1", text=f"第{n}版规则。"), f"r{n}")
        g.save(tmp_path, retention=2)
    snapshots = sorted((tmp_path / SNAPSHOT_DIR).iterdir())
    assert [p.name for p in snapshots] == ["guidance-3.json", "guidance-4.json"]
    assert [load_mission(p, MISSION).step for p in snapshots] == [2, 3]  # the newest previous versions
    assert load_mission(tmp_path / GUIDANCE_FILE, MISSION).step == 4


def test_snapshot_numbers_sort_as_numbers_past_nine(tmp_path):
    g = guidance()
    for n in range(12):
        g.apply(Operation("update", key="G1", text=f"第{n}版规则。"), f"r{n}")
        g.save(tmp_path, retention=3)
    assert sorted(p.name for p in (tmp_path / SNAPSHOT_DIR).iterdir()) == [f"guidance-{n}.json" for n in (10, 11, 9)]


def test_changes_are_stamped_with_the_guidance_time_not_the_clock(tmp_path):
    """The same changes give the same file, whenever they are made."""
    files = []
    for name in ("a", "b"):
        g = guidance()
        g.apply(Operation("add", text="挡风板被杂物挡住时以全局图为准。", evidence=("A::fail",)), "r1")
        g.record_miss("G1")  # a seed rule without metadata gets some
        g.prune(0.35, min_misses=1)
        files.append(g.save(tmp_path / name, retention=1).read_bytes())
    assert files[0] == files[1]
    section = read_json(tmp_path / "a" / GUIDANCE_FILE)[MISSION]
    assert section["step"] == 2 and "G1" not in section["experiences"]  # added one rule, pruned the other
    assert section["updated_at"] == STAMP and section["metadata"]["G2"]["updated_at"] == STAMP


@pytest.mark.parametrize("g0", [None, PLACEHOLDER_G0])
def test_legacy_focus_is_promoted_to_g0(tmp_path, g0):
    experiences = {"S1": "结构。"} | ({"G0": g0} if g0 else {})
    path = write_guidance(tmp_path / "legacy.json", section(experiences=experiences, focus="必须看到挡风板。"))
    g = load_mission(path, MISSION)
    assert g.experiences["G0"] == "必须看到挡风板。"
    assert "focus" not in g.to_section()


def test_focus_does_not_replace_a_real_g0(tmp_path):
    path = write_guidance(tmp_path / "g.json", section(focus="旧重点。"))
    assert load_mission(path, MISSION).experiences["G0"] == "必须看到BBU设备。"


@pytest.mark.parametrize(
    ("bad", "says"),
    [
        (section(step=True), "step"),
        (section(step=-1), "step"),
        (section(experiences={"S1": "结构。"}), "G0"),
        (section(experiences={"G0": "重点。", "X1": "错键。"}), "X1"),
        (section(experiences={"G0": ""}), "G0"),
        (section(updated_at="yesterday"), "updated_at"),
        (section(metadata={"G0": {"updated_at": STAMP}}), "reflection_id"),
    ],
)
def test_invalid_guidance_files_name_the_file_and_the_problem(tmp_path, bad, says):
    path = write_guidance(tmp_path / "bad.json", bad)
    with pytest.raises(VlqcError) as info:
        read_guidance_file(path)
    assert str(path) in str(info.value) and says in str(info.value)


def test_unreadable_or_missing_files_and_missions_are_reported(tmp_path):
    broken = tmp_path / "broken.json"
    broken.write_text("{", encoding="utf-8")
    for path in (broken, tmp_path / "absent.json"):
        with pytest.raises(VlqcError, match=path.name):
            read_guidance_file(path)
    with pytest.raises(VlqcError, match="RRU线缆"):
        load_mission(SEED, "RRU线缆")


# --- seeds ------------------------------------------------------------------------------------------


def test_every_mission_has_a_valid_seed():
    assert sorted(p.stem for p in SEED_DIR.glob("*.json")) == sorted(MISSIONS)


@pytest.mark.parametrize("mission", sorted(MISSIONS))
def test_seed_loads_with_the_mission_focus_as_g0_and_clean_rules(mission):
    g = load_mission(SEED_DIR / f"{mission}.json", mission)
    assert g.experiences["G0"] == MISSIONS[mission]["focus"]
    assert {"S1", "S2"} <= set(g.experiences)
    assert all(rule_text_problem(text) is None for _, text in g.rules_sorted())
    _, user = verdict_messages(mission, g.experiences, ["无关图片"], MISSIONS)
    assert f"重点: {MISSIONS[mission]['focus']}" in user
