"""Tests for vlqc.data.taxonomy and vlqc.data.desc: desc strings per docs/export-format.md and docs/taxonomy.md."""

from __future__ import annotations

import pytest

from vlqc.data.desc import build_desc, build_legacy_desc, clean_free_text, parse_desc, structured_value
from vlqc.data.objects import RawObject
from vlqc.data.taxonomy import (
    KEY_ORDER,
    LEGACY_HIERARCHY,
    TYPES,
    categories,
    domain_of,
    keeps_groups,
    resolve_type,
)
from vlqc.errors import SampleError

SHIELD_Q = "这个BBU设备是否需要安装挡风板，结合图片中机柜空间状态判断"
CHECK_Q = "这个螺丝/插头连接是否符合要求"
REMARK_Q = "如果有特殊情况，请具体描述"

# The three features of the BBU example (docs/export-format.md#worked-example): (content.label, contentZh).
EXAMPLE1_FEATURES = [
    (
        "bbu",
        {
            "标签": "BBU设备",
            "这个BBU设备是什么品牌": "华为",
            "这个BBU设备是否显示完整": "只显示部分",
            SHIELD_Q: "无需安装",
            REMARK_Q: "无法判断品牌",
        },
    ),
    (
        "connect_point",
        {"这个螺丝/插头是什么种类": "BBU安装螺丝", "螺丝/插头是否显示完整": "显示完整", CHECK_Q: "符合要求"},
    ),
    (
        "fiber",
        {
            "这条光纤是否被遮挡": "无遮挡",
            "这条光纤是否采用保护措施": "有保护措施，保护措施为/蛇形管",
            "这条光纤弯曲半径是否合理": "弯曲半径合理",
        },
    ),
]
# The RRU photo (docs/summary-format.md#rru-photo): (content.label, contentZh, group ids).
EXAMPLE2_FEATURES = [
    ("station", {"距离": "35"}, []),
    ("rru", {}, []),
    ("fiber", {"尾纤是否标签": "标签", "尾纤是否进行套管保护": "套管保护"}, ["1"]),
    ("lable", {"标签内容": "5G-RRU1-尾纤"}, ["1"]),
    ("fastener", {"安装状态": "紧固合格"}, []),
]


def feature(label: str | None, content_zh: dict, groups: list[str] | None = None) -> RawObject:
    """A RawObject as the export parser makes it from a markResult feature."""
    type_key = resolve_type(label, content_zh)
    assert type_key is not None
    return RawObject(geometry="bbox_2d", points=[], type_key=type_key, content_zh=content_zh, groups=groups or [])


def obj(type_key: str, content_zh: dict, groups: list[str] | None = None) -> RawObject:
    return RawObject(geometry="bbox_2d", points=[], type_key=type_key, content_zh=content_zh, groups=groups or [])


def datalist(label: str, extra: list[str] | None = None) -> RawObject:
    return RawObject(geometry="bbox_2d", points=[], legacy_label=label, legacy_extra=extra or [])


def error_code(func, *args) -> str:
    with pytest.raises(SampleError) as info:
        func(*args)
    return info.value.code


# --- worked examples (docs/summary-format.md#worked-examples) ---------------------------------------------------------


def test_example1_current_descs():
    descs = [build_desc(feature(label, zh)) for label, zh in EXAMPLE1_FEATURES]
    assert descs == [
        "类别=BBU设备,品牌=华为,可见性=部分,挡风板需求=免装,备注=无法判断品牌",
        "类别=BBU安装螺丝,可见性=完整,符合性=符合",
        "类别=光纤,保护措施=有保护,保护细节=蛇形管,弯曲半径=半径合理",
    ]


def test_example1_legacy_descs_with_review_flagger():
    descs = [build_legacy_desc(feature(label, zh)) for label, zh in EXAMPLE1_FEATURES]
    assert descs == [
        "BBU设备/需复核,备注:无法判断品牌",
        "螺丝、光纤插头/BBU安装螺丝,符合要求",
        "光纤/有保护措施,弯曲半径合理/蛇形管",
    ]


def test_legacy_desc_keeps_body_when_remark_is_certain():
    label, zh = EXAMPLE1_FEATURES[0]
    desc = build_legacy_desc(feature(label, {**zh, REMARK_Q: "机柜门未关"}))
    assert desc == "BBU设备/华为,只显示部分,无需安装,备注:机柜门未关"


def test_example2_current_descs():
    descs = [build_desc(feature(label, zh, groups)) for label, zh, groups in EXAMPLE2_FEATURES]
    assert descs == [
        "类别=站点距离,站点距离=35",
        "类别=RRU设备",
        "类别=尾纤,标签=有标签,套管保护=有套管,组=1",
        "类别=标签,文本=5G-RRU1-尾纤,组=1",
        "类别=紧固件,安装状态=合格",
    ]


def test_example2_legacy_descs():
    descs = [build_legacy_desc(feature(label, zh, groups)) for label, zh, groups in EXAMPLE2_FEATURES]
    assert descs == ["站点距离/35", "RRU设备", "组1:尾纤/有标签,有套管保护", "组1:标签/5G-RRU1-尾纤", "紧固件/紧固合格"]


# --- type resolution and lookups -------------------------------------------------------


@pytest.mark.parametrize(
    ("label", "content_zh", "expected"),
    [
        ("fiber", {"尾纤是否标签": "标签"}, "fiber_rru"),
        ("fiber", {"这条光纤是否采用保护措施": "无保护措施"}, "fiber"),
        ("wire", {"接地线是否标签": "标签"}, "wire_rru"),
        ("wire", {"这条电线是否捆扎整齐": "捆扎整齐"}, "wire"),
        ("lable", {}, "lable"),
        ("ground_screw", {}, "ground_screw"),
        (None, {"标签": "BBU设备"}, "bbu"),
        ("", {"标签": "基带处理单元"}, "bbu"),
        ("unknown", {"标签": "光纤插头"}, "connect_point"),
        (None, {"标签": "标签"}, "label"),
        (None, {"标签": "标签文本"}, "lable"),
        (None, {"标签": "站点"}, "station"),
        (None, {"标签": "地线"}, "wire_rru"),
        (None, {"标签": "火箭"}, None),
        ("fiber_rru", {}, None),
        (None, {}, None),
    ],
)
def test_resolve_type(label, content_zh, expected):
    assert resolve_type(label, content_zh) == expected


def test_domains_and_group_types():
    assert [domain_of(k) for k in ("bbu", "connect_point", "label", "station", "lable", "wire_rru")] == [
        "BBU",
        "BBU",
        "BBU",
        "RRU",
        "RRU",
        "RRU",
    ]
    assert {k for k in TYPES if keeps_groups(k)} == {
        "rru",
        "fastener",
        "rru_screw",
        "ground_screw",
        "fiber_rru",
        "wire_rru",
        "label",
        "lable",
        "station",
    }


def test_taxonomy_attributes_follow_key_order():
    for key, spec in TYPES.items():
        order = KEY_ORDER[key]
        keys = [a.key for a in spec.attributes]
        assert keys == [k for k in order if k in keys], key
        for attr in spec.attributes:
            if attr.parent:
                assert attr.parent[0] in keys[: keys.index(attr.key)], (key, attr.key)


def test_legacy_hierarchy_table():
    assert LEGACY_HIERARCHY["BBU设备"] == ("华为", "中兴", "爱立信")
    assert LEGACY_HIERARCHY["标签"] == ("",)
    assert set(LEGACY_HIERARCHY) == {"螺丝、光纤插头", "标签", "BBU设备", "光纤", "电线", "挡风板"}


# --- dataList objects (docs/export-format.md#datalist-variant) --------------------------------------------------------


def test_datalist_example_descs():
    objects = [
        datalist("BBU设备/华为", ["无法判断品牌"]),
        datalist("螺丝、光纤插头/BBU安装螺丝"),
        datalist("光纤/有保护"),
    ]
    assert [build_desc(o) for o in objects] == [
        "类别=BBU设备,属性=华为,备注=无法判断品牌",
        "类别=螺丝、光纤插头,属性=BBU安装螺丝",
        "类别=光纤,属性=有保护",
    ]
    assert [build_legacy_desc(o) for o in objects] == [
        "BBU设备/需复核,备注:无法判断品牌",
        "螺丝、光纤插头/BBU安装螺丝",
        "光纤/有保护",
    ]


def test_datalist_extra_parts_become_remark():
    assert build_desc(datalist("电线/整齐/走线 略长", ["门未关"])) == "类别=电线,属性=整齐,备注=走线略长/门未关"


def test_datalist_label_needs_empty_property():
    assert build_desc(datalist("标签")) == "类别=标签"
    assert build_desc(datalist("标签/")) == "类别=标签"
    assert error_code(build_desc, datalist("标签/5G-RRU1")) == "unknown_property"


@pytest.mark.parametrize(
    ("label", "code"),
    [
        ("火箭/华为", "unknown_category"),
        ("BBU设备/诺基亚", "unknown_property"),
        ("BBU设备", "unknown_property"),
        ("光纤/有保护措施", "unknown_property"),
    ],
)
def test_datalist_filter(label, code):
    assert error_code(build_desc, datalist(label)) == code
    assert error_code(build_legacy_desc, datalist(label)) == code


def test_object_without_type_or_label_is_unknown_category():
    assert error_code(build_desc, RawObject(geometry="bbox_2d", points=[])) == "unknown_category"


# --- conditional children --------------------------------------------------------------


@pytest.mark.parametrize(
    ("answer", "current", "legacy"),
    [
        ("无需安装", "挡风板需求=免装", "无需安装"),
        (
            "机柜空间充足，需要安装/这个BBU设备按要求配备了挡风板",
            "挡风板需求=空间充足需安装,挡风板符合性=按要求配备",
            "机柜空间充足需要安装/这个BBU设备按要求配备了挡风板",
        ),
        (
            "机柜空间充足，需要安装/这个BBU设备未按要求配备挡风板",
            "挡风板需求=空间充足需安装,挡风板符合性=未按要求配备",
            "机柜空间充足需要安装/这个BBU设备未按要求配备挡风板",
        ),
        ("机柜空间充足，需要安装", "挡风板需求=空间充足需安装", "机柜空间充足需要安装"),
    ],
)
def test_shield_conformity_only_when_needed(answer, current, legacy):
    o = obj("bbu", {"这个BBU设备是什么品牌": "华为", SHIELD_Q: answer})
    assert build_desc(o) == f"类别=BBU设备,品牌=华为,{current}"
    assert build_legacy_desc(o) == f"BBU设备/华为,{legacy}"


@pytest.mark.parametrize(
    ("answer", "current"),
    [
        ("无保护措施", "保护措施=无保护"),
        ("有保护措施，保护措施为/铠装", "保护措施=有保护,保护细节=铠装"),
        ("有保护措施，保护措施为/同时有蛇形管和铠装", "保护措施=有保护,保护细节=蛇形管+铠装"),
    ],
)
def test_protection_detail_only_when_protected(answer, current):
    o = obj("fiber", {"这条光纤是否采用保护措施": answer})
    assert build_desc(o) == f"类别=光纤,{current}"


def test_issue_only_when_non_conforming():
    assert build_desc(obj("connect_point", {CHECK_Q: "符合要求"})) == "类别=螺丝、光纤插头,符合性=符合"


# --- value matching (HEAD defects fixed) -----------------------------------------------


def test_non_conforming_answer_with_issue_is_not_conforming():
    o = obj("connect_point", {"这个螺丝/插头是什么种类": "地排处接地螺丝", CHECK_Q: "不符合要求/露铜"})
    assert build_desc(o) == "类别=地排处接地螺丝,符合性=不符合,问题=露铜"
    assert build_legacy_desc(o) == "螺丝、光纤插头/地排处接地螺丝,不符合要求/露铜"


def test_no_label_is_not_has_label():
    assert (
        build_desc(obj("fiber_rru", {"尾纤是否标签": "没有标签", "尾纤是否进行套管保护": "没有保护"}))
        == "类别=尾纤,标签=无标签,套管保护=无套管"
    )
    assert build_desc(obj("wire_rru", {"是否带有标签": "没有标签"})) == "类别=接地线,标签=无标签"
    assert build_legacy_desc(obj("wire_rru", {"接地线是否标签": "没有标签"})) == "接地线/没有标签"


def test_several_issues_are_split_and_joined():
    o = obj("connect_point", {"这个螺丝/插头是什么种类": "机柜处接地螺丝", CHECK_Q: "不符合要求/未拧紧，露铜"})
    assert build_desc(o) == "类别=机柜处接地螺丝,符合性=不符合,问题=未拧紧|露铜"
    assert build_legacy_desc(o) == "螺丝、光纤插头/机柜处接地螺丝,不符合要求/未拧紧,露铜"


def test_negative_values_win():
    o = obj("connect_point", {CHECK_Q: ["符合要求", "不符合要求/生锈"]})
    assert build_desc(o) == "类别=螺丝、光纤插头,符合性=不符合,问题=生锈"
    assert build_desc(obj("rru_screw", {"RRU接地端螺丝": ["紧固合格", "不合格"]})) == "类别=RRU接地端,安装状态=不合格"
    bend = ["弯曲半径合理", "弯曲半径不合理（弯曲半径<4cm或者成环）"]
    assert build_desc(obj("fiber", {"这条光纤弯曲半径是否合理": bend})) == "类别=光纤,弯曲半径=半径不合理<4cm或成环"


def test_several_positive_values_are_kept():
    o = obj("bbu", {"这个BBU设备是什么品牌": ["华为", "中兴", "华为"]})
    assert build_desc(o) == "类别=BBU设备,品牌=华为|中兴"
    assert build_legacy_desc(o) == "BBU设备/华为,中兴"


def test_answers_are_normalized_before_matching():
    o = obj("fiber", {"这条光纤弯曲半径是否合理": " 弯曲半径不合理(弯曲半径<4cm或者成环) "})
    assert build_desc(o) == "类别=光纤,弯曲半径=半径不合理<4cm或成环"
    assert build_desc(obj("bbu_shield", {"这个挡风板是否显示完整": "显示 完整"})) == "类别=挡风板,可见性=完整"


def test_content_mapping_alternate_is_read():
    assert build_desc(obj("wire", {"wire_organization": "分布散乱"})) == "类别=电线,捆扎=散乱"


@pytest.mark.parametrize(
    ("type_key", "content_zh", "named"),
    [
        ("bbu", {"这个BBU设备是什么品牌": "诺基亚"}, "品牌"),
        ("connect_point", {CHECK_Q: "符合要求/露铜"}, "符合性"),
        ("connect_point", {CHECK_Q: "不符合要求/掉漆"}, "问题"),
        ("connect_point", {"这个螺丝/插头是什么种类": "膨胀螺丝"}, "类别"),
        ("fiber_rru", {"尾纤是否标签": "无标签"}, "标签"),
        ("bbu", {SHIELD_Q: "无需安装/这个BBU设备按要求配备了挡风板"}, "挡风板需求"),
        ("label", {"能否阅读标签上的文字内容": "也许"}, "可读性"),
    ],
)
def test_unknown_answer_raises(type_key, content_zh, named):
    with pytest.raises(SampleError) as info:
        build_desc(obj(type_key, content_zh))
    assert info.value.code == "unknown_value"
    assert named in info.value.message


def test_several_subtypes_are_ambiguous():
    o = obj("connect_point", {"这个螺丝/插头是什么种类": ["BBU安装螺丝", "ODF端光纤插头"]})
    assert error_code(build_desc, o) == "ambiguous_category"


# --- free text, labels, stations, groups -----------------------------------------------


def test_free_text_cleaning():
    raw = "有遮挡, 这里已经帮助修改,请注意参考学习,,品牌 看不清-需/复核,请参考学习,框选范围偏大"
    assert clean_free_text(raw) == "品牌看不清-需/复核"
    assert clean_free_text("，,门未关，，柜内,,潮湿,") == "门未关,柜内,潮湿"
    assert clean_free_text("建议看下操作手册中螺丝、插头的标注规范") == ""


def test_remark_in_desc_keeps_commas_and_escapes_separators():
    o = obj("bbu", {"这个BBU设备是什么品牌": "华为", REMARK_Q: "门未关, 长度=3m|待查"})
    desc = build_desc(o)
    assert desc == "类别=BBU设备,品牌=华为,备注=门未关,长度＝3m｜待查"
    assert parse_desc(desc)["备注"] == ["门未关,长度＝3m｜待查"]


def test_remark_made_only_of_notes_is_left_out():
    o = obj("wire", {"这条电线是否捆扎整齐": "捆扎整齐", REMARK_Q: "这里已经帮助修改,请注意参考学习"})
    assert build_desc(o) == "类别=电线,捆扎=整齐"
    assert build_legacy_desc(o) == "电线/捆扎整齐"


# Occlusion questions the annotation tool asks: no attribute reads them (docs/taxonomy.md).
OCCLUSION_QUESTIONS = ("这个挡风板是否被杂物遮挡", "这条光纤是否被遮挡", "这条电线是否被遮挡")


def test_occlusion_questions_never_reach_the_desc():
    content = {q: "有遮挡" for q in OCCLUSION_QUESTIONS}
    assert (
        build_desc(obj("bbu_shield", {**content, "这个挡风板安装方向是否正确": "安装方向错误"}))
        == "类别=挡风板,安装方向=方向错误"
    )
    assert build_desc(obj("wire", content)) == "类别=电线"


def test_remark_is_bbu_only():
    assert build_desc(obj("fastener", {"安装状态": "不合格", REMARK_Q: "螺母缺失"})) == "类别=紧固件,安装状态=不合格"
    assert build_desc(obj("label", {"请输入标签上的文字内容": "ODF-1", REMARK_Q: "门未关"})) == "类别=标签,文本=ODF-1"


@pytest.mark.parametrize(
    ("content_zh", "current", "legacy"),
    [
        ({"请输入标签上的文字内容": " 机柜 A-01 / 光纤 "}, "文本=机柜A-01/光纤", "机柜A-01/光纤"),
        ({"能否阅读标签上的文字内容": "能", "请输入标签上的文字内容": "ODF-1"}, "文本=ODF-1", "ODF-1"),
        ({"能否阅读标签上的文字内容": "不能", "请输入标签上的文字内容": "ODF-1"}, "可读性=不可读", "不能"),
        ({"能否阅读标签上的文字内容": "能"}, "可读性=不可读", "无法识别"),
        ({"请输入标签上的文字内容": "看不清"}, "可读性=不可读", "无法识别"),
        ({"label_text": "A,B=C"}, "文本=A,B＝C", "A,B=C"),
    ],
)
def test_label_text_or_unreadable(content_zh, current, legacy):
    assert build_desc(obj("label", content_zh)) == f"类别=标签,{current}"
    assert build_legacy_desc(obj("label", content_zh)) == f"标签/{legacy}"


def test_station_distance_is_first_digit_run():
    o = obj("station", {"距离": "约 ３５ 米(第2点)"})
    assert build_desc(o) == "类别=站点距离,站点距离=35"
    assert build_legacy_desc(o) == "站点距离/35"
    assert error_code(build_desc, obj("station", {"距离": "未知"})) == "unknown_value"


def test_groups_are_unique_numeric_sorted_and_rru_only():
    zh = {"安装状态": "紧固合格"}
    assert build_desc(obj("fastener", zh, ["10", "2", "2"])) == "类别=紧固件,安装状态=合格,组=2|10"
    assert build_legacy_desc(obj("fastener", zh, ["10", "2"])) == "组2,组10:紧固件/紧固合格"
    # BBU types drop groups even if given some; the label type keeps them.
    assert build_desc(obj("wire", {"这条电线是否捆扎整齐": "捆扎整齐"}, ["1"])) == "类别=电线,捆扎=整齐"
    assert build_desc(obj("label", {"请输入标签上的文字内容": "X"}, ["3"])) == "类别=标签,文本=X,组=3"


def test_structured_value_escapes_separators():
    assert structured_value(" ＢＢＵ, 1|2=3 ") == "BBU，1｜2＝3"


# --- parse_desc ------------------------------------------------------------------------


def test_parse_desc_splits_values_and_folds_stray_tokens():
    assert parse_desc("类别=BBU安装螺丝,符合性=不符合,问题=未拧紧|露铜") == {
        "类别": ["BBU安装螺丝"],
        "符合性": ["不符合"],
        "问题": ["未拧紧", "露铜"],
    }
    assert parse_desc("类别=BBU设备,品牌=华为,门未关,备注=a,b") == {
        "类别": ["BBU设备"],
        "品牌": ["华为"],
        "备注": ["a,b,门未关"],
    }
    assert parse_desc("类别=电线,捆扎=整齐,走线长") == {"类别": ["电线"], "捆扎": ["整齐"], "备注": ["走线长"]}
    assert parse_desc("类别=标签,文本=A,B,组=1|2") == {"类别": ["标签"], "文本": ["A,B"], "组": ["1", "2"]}


@pytest.mark.parametrize("desc", ["类别=BBU设备,品牌=", "类别=BBU设备,=华为", "类别=光纤,保护措施=有保护|"])
def test_parse_desc_rejects_empty_keys_and_values(desc):
    assert error_code(parse_desc, desc) == "empty_value"


def test_datalist_types_are_bbu_categories():
    assert set(LEGACY_HIERARCHY) <= categories("BBU")
    assert (set(LEGACY_HIERARCHY) - {"标签"}).isdisjoint(categories("RRU"))
