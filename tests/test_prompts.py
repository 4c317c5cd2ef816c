"""Prompts and answer texts: exact strings per task, norm1000, header stripping, verdict prompt
ordering and the two-line verdict answer."""

from __future__ import annotations

import pytest

from vlqc.errors import VlqcError
from vlqc.inference.prompts import (
    REASON_MAX_CHARS,
    VERDICT_SYSTEM,
    dense_messages,
    dense_target,
    hf_messages,
    norm1000,
    strip_summary_header,
    summary_messages,
    summary_object_count,
    summary_target,
    verdict_messages,
    verdict_target,
)

MISSIONS = {
    "挡风板安装检查": {"domain": "bbu", "focus": "须看到BBU设备。", "fail_conditions": ["未看到BBU设备"]},
    "RRU线缆": {"domain": "rru", "focus": "尾纤须有套管。", "fail_conditions": ["尾纤无套管"]},
}
BBU_SUMMARY = '{"统计": [{"类别": "BBU设备", "可见性": {"完整": 2}, "品牌": {"华为": 2}}]}'
SCREWS = (
    '{"统计": [{"类别": "BBU安装螺丝", "可见性": {"完整": 2}, "符合性": {"不符合": 2}, '
    '"问题": {"未拧紧": 2, "生锈": 1}}]}'
)


# --- summary -------------------------------------------------------------------------------------

SUMMARY_SYSTEM = (
    "你是通信安装质检助手。统计图中对象，输出两行：第一行<DOMAIN=BBU>, <TASK=SUMMARY>，"
    "第二行单行JSON摘要。与任务无关的图片只输出：无关图片"
)


def test_summary_prompt_names_the_mission_and_its_focus():
    assert summary_messages("挡风板安装检查", "BBU", MISSIONS) == (
        SUMMARY_SYSTEM,
        "<image>任务: 挡风板安装检查\n重点: 须看到BBU设备。",
    )


def test_summary_prompt_without_mission():
    expected = (SUMMARY_SYSTEM, "<image>输出摘要。")
    assert summary_messages("挡风板安装检查", "bbu", MISSIONS, no_mission=True) == expected
    assert summary_messages(None, "BBU", MISSIONS) == expected


def test_summary_prompt_domain_and_mission_are_checked():
    assert "<DOMAIN=RRU>, <TASK=SUMMARY>" in summary_messages(None, "rru", MISSIONS)[0]
    with pytest.raises(VlqcError, match="domain"):
        summary_messages(None, "XYZ", MISSIONS)
    with pytest.raises(VlqcError, match="unknown mission '不存在'"):
        summary_messages("不存在", "BBU", MISSIONS)


def test_summary_target():
    assert summary_target(BBU_SUMMARY, "BBU") == "<DOMAIN=BBU>, <TASK=SUMMARY>\n" + BBU_SUMMARY
    assert summary_target("无关图片", "BBU") == "无关图片"
    with pytest.raises(VlqcError, match="one line"):
        summary_target("a\nb", "BBU")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("<DOMAIN=BBU>, <TASK=SUMMARY>\n" + BBU_SUMMARY, BBU_SUMMARY),
        ("  <DOMAIN=RRU>，<TASK=SUMMARY>  \r\n" + BBU_SUMMARY + "\n", BBU_SUMMARY),
        ("<DOMAIN=BBU>, <TASK=SUMMARY>", ""),
        (BBU_SUMMARY, BBU_SUMMARY),
        ("无关图片", "无关图片"),
        ("<DOMAIN=BBU> summary <TASK=SUMMARY>\nx", "<DOMAIN=BBU> summary <TASK=SUMMARY>\nx"),
    ],
)
def test_strip_summary_header(text, expected):
    assert strip_summary_header(text) == expected


# --- dense ---------------------------------------------------------------------------------------


def test_dense_prompt():
    assert dense_messages("BBU") == (
        "你是通信安装质检助手。检测图中全部对象，输出两行：第一行<DOMAIN=BBU>, <TASK=DETECTION>，"
        "第二行单行JSON对象，键为object_1、object_2……，每项为bbox_2d、poly或line之一（坐标按0-1000归一化）加desc。",
        "<image>检测图中对象。",
    )


def test_norm1000_rounds_halves_up_and_stays_in_range():
    # x: 1/2000 → 0.5 → 1, 3/2000 → 1.5 → 2, 999/2000 → 499.5 → 500; y: 1/3 → 333.3 → 333, 2/3 → 666.7 → 667
    assert norm1000([1, 1, 3, 2, 999, 3], 2000, 3) == [1, 333, 2, 667, 500, 1000]
    assert norm1000([0, 0, 2000, 3], 2000, 3) == [0, 0, 1000, 1000]
    assert norm1000([2100, 4], 2000, 3) == [1000, 1000]


def test_dense_target_exact():
    record = {
        "width": 640,
        "height": 480,
        "domain": "BBU",
        "objects": [
            {"bbox_2d": [64, 48, 320, 240], "desc": "类别=BBU设备,品牌=华为"},
            {"poly": [0, 0, 640, 0, 640, 480, 0, 480], "desc": "类别=挡风板,安装方向=方向正确"},
            {"line": [1, 1, 639, 479], "desc": "类别=光纤,保护措施=有保护"},
        ],
    }
    assert dense_target(record) == (
        "<DOMAIN=BBU>, <TASK=DETECTION>\n"
        '[{"bbox_2d": [100, 100, 500, 500], "desc": "类别=BBU设备,品牌=华为"}, '
        '{"poly": [0, 0, 1000, 0, 1000, 1000, 0, 1000], "desc": "类别=挡风板,安装方向=方向正确"}, '
        '{"line": [2, 2, 998, 998], "desc": "类别=光纤,保护措施=有保护"}]'
    )
    assert dense_target({**record, "objects": []}) == "<DOMAIN=BBU>, <TASK=DETECTION>\n[]"


# --- verdict -------------------------------------------------------------------------------------


def test_verdict_prompt_without_guidance_uses_the_mission_focus():
    system, user = verdict_messages(
        "挡风板安装检查", None, ["<DOMAIN=BBU>, <TASK=SUMMARY>\n" + BBU_SUMMARY, "无关图片"], MISSIONS
    )
    assert system == VERDICT_SYSTEM
    assert "Verdict: 通过 或 不通过\nReason:" in system and "240" in system
    assert user == (
        "任务: 挡风板安装检查\n"
        "重点: 须看到BBU设备。\n"
        "图片数: 2; 对象数: Image1=2, Image2=0\n"
        f"Image1: {BBU_SUMMARY}\n"
        "Image2: 无关图片"
    )


def test_verdict_prompt_sorts_rules_by_number():
    guidance = {
        "G10": "规则十",
        "S2": "不变量二",
        "G0": "自定义重点",
        "G2": "规则二",
        "S10": "不变量十",
        "G1": "规则一",
    }
    _, user = verdict_messages("挡风板安装检查", guidance, [BBU_SUMMARY], MISSIONS)
    assert user == (
        "任务: 挡风板安装检查\n"
        "重点: 自定义重点\n"
        "结构不变量:\n1. 不变量二\n2. 不变量十\n"
        "可学习规则:\n1. 规则一\n2. 规则二\n3. 规则十\n"
        "图片数: 1; 对象数: Image1=2\n"
        f"Image1: {BBU_SUMMARY}"
    )
    assert user.index("规则二") < user.index("规则十")


def test_verdict_prompt_merges_rru_photos_by_station():
    station = '{"统计": [{"类别": "站点距离", "站点距离": {"35": 1}}, {"类别": "尾纤", "套管保护": {"有套管": 1}}]}'
    _, user = verdict_messages(
        "RRU线缆", None, [station, "无关图片", '{"统计": [{"类别": "RRU设备"}]}', station], MISSIONS
    )
    assert "\n安装点: 站点距离35=Image1,Image4; 站点距离未知=Image3\n" in user
    assert "对象数: Image1=2, Image2=0, Image3=1, Image4=2" in user


def test_verdict_prompt_rejects_bad_guidance_and_summaries():
    with pytest.raises(VlqcError, match="no G0"):
        verdict_messages("挡风板安装检查", {"G1": "x"}, [BBU_SUMMARY], MISSIONS)
    with pytest.raises(VlqcError, match="S<n> or G<n>"):
        verdict_messages("挡风板安装检查", {"G0": "x", "rule": "y"}, [BBU_SUMMARY], MISSIONS)
    with pytest.raises(VlqcError, match="Image2"):
        verdict_messages("挡风板安装检查", None, [BBU_SUMMARY, "<DOMAIN=BBU>, <TASK=SUMMARY>"], MISSIONS)
    with pytest.raises(VlqcError, match="at least one"):
        verdict_messages("挡风板安装检查", None, [], MISSIONS)


def test_object_counts_from_summaries():
    assert summary_object_count(SCREWS) == 2  # 问题 counts issues, not screws
    assert summary_object_count(BBU_SUMMARY) == 2
    assert summary_object_count('{"统计": [{"类别": "RRU设备"}, {"类别": "标签", "文本": {"a": 1, "b": 2}}]}') == 4
    assert summary_object_count("无关图片") == 0
    assert summary_object_count("BBU设备/华为×2，站点距离/35，光纤/有保护×1") == 4


def test_verdict_target_pass_and_fail():
    assert verdict_target("pass", ["BBU设备见Image1,Image2"]) == (
        "Verdict: 通过\nReason: BBU设备见Image1,Image2; 总结: 任务要求均满足"
    )
    assert verdict_target("fail", ["Image2: 挡风板安装方向=方向错误", "缺少BBU设备"]) == (
        "Verdict: 不通过\nReason: Image2: 挡风板安装方向=方向错误; 缺少BBU设备; 总结: 存在与任务相关的问题"
    )
    assert verdict_target("fail", []) == "Verdict: 不通过\nReason: 总结: 存在与任务相关的问题"


def test_verdict_target_keeps_the_reason_within_240_chars():
    reasons = [f"Image{n}: BBU安装螺丝符合性=不符合,问题=未拧紧|露铜|生锈" for n in range(1, 13)]
    answer = verdict_target("fail", reasons)
    reason = answer.split("\nReason: ")[1]
    assert len(reason) <= REASON_MAX_CHARS
    kept = reason.count("BBU安装螺丝")
    assert 0 < kept < 12 and f"另有{12 - kept}项" in reason and reason.endswith("总结: 存在与任务相关的问题")


@pytest.mark.parametrize("reason", ["违反G2", "见 S1", "a\nb", ""])
def test_verdict_target_rejects_rule_ids_and_bad_lines(reason):
    with pytest.raises(VlqcError):
        verdict_target("fail", [reason])


def test_verdict_target_allows_label_text_with_g_and_needs_a_known_label():
    assert "5G-BBU1" in verdict_target("fail", ["Image1: 标签文本=5G-BBU1"])
    with pytest.raises(VlqcError, match="label"):
        verdict_target("ok", [])


# --- chat-template messages --------------------------------------------------------------------------


def test_hf_messages_turn_image_tags_into_items():
    system, user = summary_messages("挡风板安装检查", "BBU", MISSIONS)
    assert hf_messages(system, user, ["a.jpg"]) == [
        {"role": "system", "content": system},
        {
            "role": "user",
            "content": [{"type": "image", "image": "a.jpg"}, {"type": "text", "text": user.removeprefix("<image>")}],
        },
    ]
    assert hf_messages("s", "只有文字")[1]["content"] == [{"type": "text", "text": "只有文字"}]
    with pytest.raises(VlqcError, match="1 <image> tags but 2 images"):
        hf_messages(system, user, ["a.jpg", "b.jpg"])
