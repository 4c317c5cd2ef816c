"""The BBU and RRU object taxonomies (docs/taxonomy.md) as data tables.

Each object type lists its attributes in desc key order. An attribute names the
`contentZh` questions it is read from (the question text, then the `content`
mapping alternate) and the raw answers it accepts, each with its compressed desc
value and its uncompressed legacy (slash-form) value. A conditional child has no
questions of its own: it reads the sub-answer after `/` of its parent's raw answer
(`不符合要求/露铜` → 符合性=不符合, 问题=露铜) and exists only under one parent value.

The builders in `desc.py` hold the logic; this module only adds small lookups.
"""

from __future__ import annotations

from dataclasses import dataclass

BBU = "BBU"
RRU = "RRU"


@dataclass(frozen=True)
class Choice:
    raw: str  # answer as the annotation tool writes it (a compound answer's head)
    value: str  # compressed value of the key=value desc
    legacy: str  # uncompressed value of the slash-form desc


@dataclass(frozen=True)
class Attribute:
    key: str
    questions: tuple[str, ...]
    choices: tuple[Choice, ...]
    level: int = 1  # level of the slash-form desc
    parent: tuple[str, str] | None = None  # (parent key, parent value) of a conditional child
    multi: bool = False  # the sub-answer may list several values split on `,`/`，`


@dataclass(frozen=True)
class TypeSpec:
    key: str
    category: str  # desc 类别 (connect_point: the default when no subtype is given)
    domain: str
    aliases: tuple[str, ...] = ()
    attributes: tuple[Attribute, ...] = ()
    zh_label: str | None = None  # mapping label, when it differs from the category
    subtype: Attribute | None = None  # an answer that replaces the category
    remark: bool = False  # carries the free-text 备注
    ocr: bool = False  # a label: 文本 from the OCR answer, or 可读性=不可读
    distance: bool = False  # a station: 站点距离 from the distance answer
    legacy_skip: tuple[str, ...] = ()  # keys the slash-form desc leaves out


def _choices(*rows: tuple[str, str, str]) -> tuple[Choice, ...]:
    return tuple(Choice(*row) for row in rows)


REMARK_QUESTIONS = ("如果有特殊情况，请具体描述", "special_situation")
LABEL_TEXT_QUESTIONS = (
    "请输入标签上的文字内容",
    "标签内容",
    "label_text_content",
    "label_text",
    "label_text_content_zh",
)
LABEL_READABLE = Attribute(
    "可读性", ("能否阅读标签上的文字内容",), _choices(("能", "可读", "能"), ("不能", "不可读", "不能"))
)
DISTANCE_QUESTIONS = ("距离", "distance")

#                     raw answer           value        legacy value
VISIBILITY = _choices(("显示完整", "完整", "显示完整"), ("只显示部分", "部分", "只显示部分"))
BRANDS = _choices(("华为", "华为", "华为"), ("中兴", "中兴", "中兴"), ("爱立信", "爱立信", "爱立信"))
SCREW_STATE = _choices(("紧固合格", "合格", "紧固合格"), ("不合格", "不合格", "不合格"))
HAS_LABEL = _choices(("标签", "有标签", "有标签"), ("没有标签", "无标签", "没有标签"))
CONNECT_SUBTYPES = _choices(
    *(
        (name, name, name)
        for name in ("BBU安装螺丝", "机柜处接地螺丝", "地排处接地螺丝", "ODF端光纤插头", "BBU端光纤插头")
    )
)

TYPES: dict[str, TypeSpec] = {
    spec.key: spec
    for spec in (
        TypeSpec(
            "bbu",
            "BBU设备",
            BBU,
            aliases=("BBU", "基带处理单元"),
            remark=True,
            attributes=(
                Attribute("品牌", ("这个BBU设备是什么品牌", "bbu_brand"), BRANDS),
                Attribute("可见性", ("这个BBU设备是否显示完整", "bbu_stituation"), VISIBILITY),
                Attribute(
                    "挡风板需求",
                    ("这个BBU设备是否需要安装挡风板，结合图片中机柜空间状态判断", "bbu_equipment"),
                    _choices(
                        ("无需安装", "免装", "无需安装"),
                        ("机柜空间充足，需要安装", "空间充足需安装", "机柜空间充足需要安装"),
                    ),
                ),
                Attribute(
                    "挡风板符合性",
                    (),
                    _choices(
                        ("这个BBU设备按要求配备了挡风板", "按要求配备", "这个BBU设备按要求配备了挡风板"),
                        ("这个BBU设备未按要求配备挡风板", "未按要求配备", "这个BBU设备未按要求配备挡风板"),
                    ),
                    level=2,
                    parent=("挡风板需求", "空间充足需安装"),
                ),
            ),
        ),
        TypeSpec(
            "bbu_shield",
            "挡风板",
            BBU,
            aliases=("防护板", "BBU挡风板"),
            remark=True,
            attributes=(
                Attribute("品牌", ("这个挡风板是什么牌子", "bbu_shield_brand"), BRANDS[:2]),
                Attribute("可见性", ("这个挡风板是否显示完整", "bbu_shield_situation"), VISIBILITY),
                Attribute(
                    "安装方向",
                    ("这个挡风板安装方向是否正确", "bbu_shield_install_direction"),
                    _choices(
                        ("安装方向正确", "方向正确", "安装方向正确"), ("安装方向错误", "方向错误", "安装方向错误")
                    ),
                ),
            ),
        ),
        TypeSpec(
            "connect_point",
            "螺丝、光纤插头",
            BBU,
            aliases=("连接点", "螺丝", "光纤插头"),
            remark=True,
            legacy_skip=("可见性",),
            subtype=Attribute("类别", ("这个螺丝/插头是什么种类", "connect_point_type"), CONNECT_SUBTYPES),
            attributes=(
                Attribute("可见性", ("螺丝/插头是否显示完整", "connect_point_situation"), VISIBILITY),
                Attribute(
                    "符合性",
                    ("这个螺丝/插头连接是否符合要求", "connect_point_check"),
                    _choices(("符合要求", "符合", "符合要求"), ("不符合要求", "不符合", "不符合要求")),
                ),
                Attribute(
                    "问题",
                    (),
                    _choices(
                        ("未拧紧", "未拧紧", "未拧紧"),
                        ("露铜", "露铜", "露铜"),
                        ("复接", "复接", "复接"),
                        ("生锈", "生锈", "生锈"),
                    ),
                    level=2,
                    parent=("符合性", "不符合"),
                    multi=True,
                ),
            ),
        ),
        TypeSpec("label", "标签", BBU, aliases=("标签贴纸", "文字标签"), ocr=True),
        TypeSpec(
            "fiber",
            "光纤",
            BBU,
            aliases=("光缆", "光纤线"),
            remark=True,
            attributes=(
                Attribute(
                    "保护措施",
                    ("这条光纤是否采用保护措施", "fiber_protection"),
                    _choices(
                        ("无保护措施", "无保护", "无保护措施"), ("有保护措施，保护措施为", "有保护", "有保护措施")
                    ),
                ),
                Attribute(
                    "保护细节",
                    (),
                    _choices(
                        ("蛇形管", "蛇形管", "蛇形管"),
                        ("铠装", "铠装", "铠装"),
                        ("同时有蛇形管和铠装", "蛇形管+铠装", "同时有蛇形管和铠装"),
                    ),
                    level=2,
                    parent=("保护措施", "有保护"),
                ),
                Attribute(
                    "弯曲半径",
                    ("这条光纤弯曲半径是否合理", "fiber_bend_radius"),
                    _choices(
                        ("弯曲半径合理", "半径合理", "弯曲半径合理"),
                        (
                            "弯曲半径不合理（弯曲半径<4cm或者成环）",
                            "半径不合理<4cm或成环",
                            "弯曲半径不合理（弯曲半径<4cm或者成环）",
                        ),
                    ),
                ),
            ),
        ),
        TypeSpec(
            "wire",
            "电线",
            BBU,
            aliases=("线缆", "电缆"),
            remark=True,
            attributes=(
                Attribute(
                    "捆扎",
                    ("这条电线是否捆扎整齐", "wire_organization"),
                    _choices(("捆扎整齐", "整齐", "捆扎整齐"), ("分布散乱", "散乱", "分布散乱")),
                ),
            ),
        ),
        TypeSpec("station", "站点距离", RRU, aliases=("站点位置",), zh_label="站点", distance=True),
        TypeSpec("rru", "RRU设备", RRU),
        TypeSpec(
            "rru_screw",
            "RRU接地端",
            RRU,
            aliases=("RRU接地端螺丝",),
            attributes=(Attribute("安装状态", ("RRU接地端螺丝", "rru_screw_tightness"), SCREW_STATE),),
        ),
        TypeSpec(
            "ground_screw",
            "地排接地端螺丝",
            RRU,
            aliases=("地排接地端",),
            attributes=(Attribute("安装状态", ("地排接地端螺丝", "ground_screw_tightness"), SCREW_STATE),),
        ),
        TypeSpec(
            "fastener",
            "紧固件",
            RRU,
            aliases=("螺栓", "螺钉"),
            attributes=(Attribute("安装状态", ("安装状态", "fastener_tightness"), SCREW_STATE),),
        ),
        TypeSpec("lable", "标签", RRU, aliases=("标签文本",), ocr=True),
        TypeSpec(
            "fiber_rru",
            "尾纤",
            RRU,
            aliases=("光纤尾缆", "尾纤线"),
            attributes=(
                Attribute("标签", ("是否带有标签", "尾纤是否标签", "fiber_label"), HAS_LABEL),
                Attribute(
                    "套管保护",
                    ("尾纤是否进行套管保护", "fiber_protection"),
                    _choices(("套管保护", "有套管", "有套管保护"), ("没有保护", "无套管", "无套管保护")),
                ),
            ),
        ),
        TypeSpec(
            "wire_rru",
            "接地线",
            RRU,
            aliases=("地线",),
            attributes=(Attribute("标签", ("是否带有标签", "接地线是否标签", "wire_label"), HAS_LABEL),),
        ),
    )
}

# `content.label` values the annotation tool writes; fiber_rru / wire_rru come from fiber / wire.
CONTENT_KEYS = (
    "bbu",
    "bbu_shield",
    "connect_point",
    "label",
    "fiber",
    "wire",
    "station",
    "rru",
    "rru_screw",
    "ground_screw",
    "fastener",
    "lable",
)

KEY_ORDER: dict[str, tuple[str, ...]] = {
    "bbu": ("品牌", "可见性", "挡风板需求", "挡风板符合性", "备注"),
    "bbu_shield": ("品牌", "可见性", "安装方向", "备注"),
    "connect_point": ("可见性", "符合性", "问题", "备注"),
    "fiber": ("保护措施", "保护细节", "弯曲半径", "备注"),
    "wire": ("捆扎", "备注"),
    "label": ("文本", "可读性", "备注"),
    "rru": (),
    "fastener": ("安装状态",),
    "rru_screw": ("安装状态",),
    "ground_screw": ("安装状态",),
    "fiber_rru": ("标签", "套管保护"),
    "wire_rru": ("标签",),
    "lable": ("文本", "可读性"),
    "station": ("站点距离",),
}

# Types whose group ids survive into the desc (`组=`); other types drop them.
GROUP_TYPES = frozenset(
    {"rru", "fastener", "rru_screw", "ground_screw", "fiber_rru", "wire_rru", "label", "lable", "station"}
)

NEGATIVE_MARKERS = ("不符合", "不合规", "不合格", "不合理", "错误", "不能")

# dataList exports: allowed Chinese type → allowed property tokens (标签: empty only).
LEGACY_HIERARCHY: dict[str, tuple[str, ...]] = {
    "螺丝、光纤插头": ("BBU安装螺丝", "机柜处接地螺丝", "地排处接地螺丝", "ODF端光纤插头", "BBU端光纤插头"),
    "标签": ("",),
    "BBU设备": ("华为", "中兴", "爱立信"),
    "光纤": ("有保护", "无保护"),
    "电线": ("整齐", "散乱"),
    "挡风板": ("方向正确", "方向错误"),
}


def _names_to_types() -> dict[str, str]:
    # First type wins: 标签 resolves to `label`, as in the origin's dict order.
    names: dict[str, str] = {}
    for spec in TYPES.values():
        for name in (spec.zh_label or spec.category, spec.category, *spec.aliases):
            names.setdefault(name, spec.key)
    return names


_NAME_TO_TYPE = _names_to_types()


def resolve_type(content_label: str | None, content_zh: dict) -> str | None:
    """Taxonomy type of a markResult feature, or None when nothing matches (docs/export-format.md#type-resolution)."""
    label = (content_label or "").strip()
    if label == "fiber" and any(key.startswith("尾纤") for key in content_zh):
        return "fiber_rru"
    if label == "wire" and any("接地线" in key for key in content_zh):
        return "wire_rru"
    if label in CONTENT_KEYS:
        return label
    zh_label = content_zh.get("标签")
    if isinstance(zh_label, str):
        return _NAME_TO_TYPE.get(zh_label.strip())
    return None


def domain_of(type_key: str) -> str:
    return TYPES[type_key].domain


def keeps_groups(type_key: str) -> bool:
    return type_key in GROUP_TYPES


def is_negative(value: str) -> bool:
    return any(marker in value for marker in NEGATIVE_MARKERS)


def categories(domain: str) -> frozenset[str]:
    """Every desc 类别 valid in a domain.

    The BBU set covers the dataList types too: each is a type category, 螺丝、光纤插头
    being the connect_point category when no subtype was answered.
    """
    names = {spec.category for spec in TYPES.values() if spec.domain == domain}
    if domain == BBU:
        names |= {choice.value for choice in CONNECT_SUBTYPES}
    return frozenset(names)
