"""Tests for vlqc.data.summary: the JSON summary (docs/summary-format.md#json-summary) and the cc1d856 ×N
summary (docs/summary-format.md#legacy-n-summary)."""

from __future__ import annotations

import json

import pytest

from vlqc.data.summary import IRRELEVANT, build_legacy_summary, build_summary
from vlqc.errors import SampleError

EXAMPLE1_DESCS = [
    "类别=BBU设备,品牌=华为,可见性=部分,挡风板需求=免装,备注=无法判断品牌",
    "类别=BBU安装螺丝,可见性=完整,符合性=符合",
    "类别=光纤,保护措施=有保护,保护细节=蛇形管,弯曲半径=半径合理",
]
EXAMPLE1_SUMMARY = (
    '{"统计": [{"类别": "BBU安装螺丝", "可见性": {"完整": 1}, "符合性": {"符合": 1}}, '
    '{"类别": "BBU设备", "可见性": {"部分": 1}, "品牌": {"华为": 1}, "挡风板需求": {"免装": 1}}, '
    '{"类别": "光纤", "保护措施": {"有保护": 1}, "保护细节": {"蛇形管": 1}, "弯曲半径": {"半径合理": 1}}], '
    '"备注": ["无法判断品牌"]}'
)
EXAMPLE1_LEGACY = [
    "BBU设备/需复核,备注:无法判断品牌",
    "螺丝、光纤插头/BBU安装螺丝,符合要求",
    "光纤/有保护措施,弯曲半径合理/蛇形管",
]

EXAMPLE2_DESCS = [
    "类别=站点距离,站点距离=35",
    "类别=RRU设备",
    "类别=尾纤,标签=有标签,套管保护=有套管,组=1",
    "类别=标签,文本=5G-RRU1-尾纤,组=1",
    "类别=紧固件,安装状态=合格",
]
EXAMPLE2_SUMMARY = (
    '{"统计": [{"类别": "站点距离", "站点距离": {"35": 1}}, {"类别": "RRU设备"}, '
    '{"类别": "尾纤", "套管保护": {"有套管": 1}, "标签": {"有标签": 1}, "组": {"1": 1}}, '
    '{"类别": "标签", "文本": {"5G-RRU1-尾纤": 1}, "组": {"1": 1}}, '
    '{"类别": "紧固件", "安装状态": {"合格": 1}}], "分组统计": {"1": 2}}'
)
EXAMPLE2_LEGACY = ["站点距离/35", "RRU设备", "组1:尾纤/有标签,有套管保护", "组1:标签/5G-RRU1-尾纤", "紧固件/紧固合格"]


def error_code(func, *args) -> str:
    with pytest.raises(SampleError) as info:
        func(*args)
    return info.value.code


# --- worked examples (docs/summary-format.md#worked-examples) ---------------------------------------------------------


def test_example1_summary():
    assert build_summary(EXAMPLE1_DESCS, "BBU") == EXAMPLE1_SUMMARY


def test_example2_summary():
    assert build_summary(EXAMPLE2_DESCS, "RRU") == EXAMPLE2_SUMMARY


def test_example1_legacy_summary():
    assert build_legacy_summary(EXAMPLE1_LEGACY, "BBU") == (
        "BBU设备/需复核,备注:无法判断品牌×1，光纤/有保护措施,弯曲半径合理/蛇形管×1，"
        "螺丝、光纤插头/BBU安装螺丝,符合要求×1"
    )


def test_example2_legacy_summary():
    assert build_legacy_summary(EXAMPLE2_LEGACY, "RRU") == (
        "RRU设备×1，站点距离/35，紧固件/紧固合格×1，组1:尾纤/有标签,有套管保护×1，组1:标签/5G-RRU1-尾纤×1"
    )


# --- current summary -------------------------------------------------------------------


def test_no_objects_is_irrelevant_image():
    assert build_summary([], "BBU") == IRRELEVANT == "无关图片"
    assert build_legacy_summary([], "RRU") == "无关图片"


def test_summary_is_one_json_line():
    text = build_summary(EXAMPLE1_DESCS, "BBU")
    assert "\n" not in text
    assert json.loads(text)["备注"] == ["无法判断品牌"]


def test_counts_split_values_and_keep_first_seen_order():
    descs = [
        "类别=机柜处接地螺丝,符合性=不符合,问题=露铜|未拧紧",
        "类别=机柜处接地螺丝,符合性=符合",
        "类别=机柜处接地螺丝,符合性=不符合,问题=未拧紧",
    ]
    summary = json.loads(build_summary(descs, "BBU"))
    assert summary == {
        "统计": [{"类别": "机柜处接地螺丝", "符合性": {"不符合": 2, "符合": 1}, "问题": {"露铜": 1, "未拧紧": 2}}]
    }
    assert list(summary["统计"][0]["符合性"]) == ["不符合", "符合"]


def test_categories_and_keys_sorted_by_code_point():
    descs = ["类别=电线,捆扎=整齐", "类别=挡风板,安装方向=方向正确,品牌=华为,可见性=完整", "类别=BBU设备,品牌=中兴"]
    summary = json.loads(build_summary(descs, "BBU"))
    assert [e["类别"] for e in summary["统计"]] == ["BBU设备", "挡风板", "电线"]
    assert list(summary["统计"][1]) == ["类别", "可见性", "品牌", "安装方向"]


def test_remarks_deduplicated_in_first_seen_order():
    descs = ["类别=电线,捆扎=散乱,备注=b", "类别=光纤,保护措施=无保护,备注=a,c", "类别=电线,捆扎=整齐,备注=b"]
    summary = json.loads(build_summary(descs, "BBU"))
    assert summary["备注"] == ["b", "a,c"]
    assert all("备注" not in entry for entry in summary["统计"])


def test_no_remark_section_without_remarks():
    assert "备注" not in json.loads(build_summary(["类别=电线,捆扎=整齐"], "BBU"))


def test_rru_groups_and_station_first():
    descs = [
        "类别=紧固件,安装状态=合格,组=10",
        "类别=RRU设备,组=2|10",
        "类别=紧固件,安装状态=不合格,组=2",
        "类别=站点距离,站点距离=12",
        "类别=接地线,标签=无标签",
    ]
    summary = json.loads(build_summary(descs, "RRU"))
    assert [e["类别"] for e in summary["统计"]] == ["站点距离", "RRU设备", "接地线", "紧固件"]
    assert summary["统计"][3]["组"] == {"10": 1, "2": 1}
    assert summary["分组统计"] == {"2": 2, "10": 2}
    assert list(summary["分组统计"]) == ["2", "10"]


def test_no_group_section_without_groups():
    assert "分组统计" not in json.loads(build_summary(["类别=RRU设备"], "RRU"))


def test_groups_are_rru_only():
    summary = json.loads(build_summary(["类别=标签,文本=ODF-1,组=1", "类别=标签,可读性=不可读,组=1"], "BBU"))
    assert summary == {"统计": [{"类别": "标签", "可读性": {"不可读": 1}, "文本": {"ODF-1": 1}}]}


def test_datalist_categories_are_valid_bbu_categories():
    descs = ["类别=螺丝、光纤插头,属性=BBU安装螺丝", "类别=BBU设备,属性=华为,备注=无法判断品牌", "类别=标签"]
    assert build_summary(descs, "BBU") == (
        '{"统计": [{"类别": "BBU设备", "属性": {"华为": 1}}, {"类别": "标签"}, '
        '{"类别": "螺丝、光纤插头", "属性": {"BBU安装螺丝": 1}}], "备注": ["无法判断品牌"]}'
    )


def test_conflict_is_per_desc_not_per_image():
    descs = ["类别=BBU安装螺丝,符合性=符合", "类别=BBU安装螺丝,符合性=不符合"]
    assert json.loads(build_summary(descs, "BBU"))["统计"][0]["符合性"] == {"符合": 1, "不符合": 1}


@pytest.mark.parametrize(
    ("descs", "domain", "code"),
    [
        (["类别=BBU设备,品牌="], "BBU", "empty_value"),
        (["类别=BBU设备,=华为"], "BBU", "empty_value"),
        (["类别=电线,捆扎=整齐", "品牌=华为"], "BBU", "missing_category"),
        ([""], "BBU", "missing_category"),
        (["类别=RRU设备"], "BBU", "unknown_category"),
        (["类别=BBU设备"], "RRU", "unknown_category"),
        (["类别=火箭"], "BBU", "unknown_category"),
        (["类别=BBU设备|光纤"], "BBU", "unknown_category"),
        (["类别=BBU安装螺丝,符合性=符合|不符合"], "BBU", "summary_conflict"),
        (["类别=紧固件,安装状态=合格|不合格"], "RRU", "summary_conflict"),
    ],
)
def test_summary_errors(descs, domain, code):
    assert error_code(build_summary, descs, domain) == code


def test_free_text_is_not_a_conflict():
    summary = json.loads(build_summary(["类别=标签,文本=接线错误,组=1", "类别=标签,文本=A,组=1"], "RRU"))
    assert summary["统计"][0]["文本"] == {"接线错误": 1, "A": 1}


def test_unknown_domain_is_rejected():
    with pytest.raises(ValueError):
        build_summary(EXAMPLE1_DESCS, "bbu")


# --- legacy ×N summary -----------------------------------------------------------------


def test_legacy_summary_counts_identical_descs_and_orders_by_length():
    descs = ["光纤/无保护措施,弯曲半径合理", "电线/捆扎整齐", "标签/A1", "电线/捆扎整齐", "标签/B2"]
    assert build_legacy_summary(descs, "BBU") == "标签/A1×1，标签/B2×1，电线/捆扎整齐×2，光纤/无保护措施,弯曲半径合理×1"


def test_legacy_station_drops_only_a_single_count():
    assert build_legacy_summary(["站点距离/35", "站点距离/35", "RRU设备"], "RRU") == "RRU设备×1，站点距离/35×2"
    assert (
        build_legacy_summary(["组1:站点距离/35", "组1:紧固件/紧固合格"], "RRU")
        == "组1:站点距离/35，组1:紧固件/紧固合格×1"
    )
    assert build_legacy_summary(["站点距离/35"], "BBU") == "站点距离/35×1"


def test_legacy_summary_rejects_blank_desc():
    assert error_code(build_legacy_summary, ["电线/捆扎整齐", " "], "BBU") == "empty_value"
