"""Prompts and answer texts: the one home of the text that SFT, Stage-A and Stage-B show the model.

One set of weights serves three tasks:
- summary (Stage-A): an image → `<DOMAIN=BBU>, <TASK=SUMMARY>` and the one-line summary JSON on the
  next line, or `无关图片` alone for an image without objects.
- dense: an image → `<DOMAIN=BBU>, <TASK=DETECTION>` and its objects as one JSON object
  `{"object_1": {<bbox_2d|poly|line>: [norm1000 ints], ("poly_points"|"line_points": N,) "desc": …}, …}`
  (docs/answers.md#the-dense-answer; `vlqc.inference.answers` reads it back).
- verdict (Stage-B): the per-image summaries of a ticket and the mission guidance (text only) →
  `Verdict: 通过|不通过` and `Reason: …` on two lines.

Builders return `(system, user)`. The user text of an image task starts with ms-swift's `<image>`
placeholder; `hf_messages` turns it into the content list of a transformers chat template, so that
inference renders the tokens training saw. The thinking part of the chat template stays off (the
answers carry no `<think>` block). Prompts are short on purpose: the tiny demo model has a small
context budget.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

from vlqc.data.summary import IRRELEVANT, STATION
from vlqc.errors import VlqcError
from vlqc.inference.answers import COUNT_FIELDS, DenseObject, strip_summary_header, summary_entries

IMAGE_TAG = "<image>"
DOMAINS = ("BBU", "RRU")
LABELS = {"pass": "通过", "fail": "不通过"}
REASON_MAX_CHARS = 240
PASS_CONCLUSION = "总结: 任务要求均满足"
FAIL_CONCLUSION = "总结: 存在与任务相关的问题"
JSON_SEPARATORS = (", ", ": ")  # as the summary builder writes them

_GUIDANCE_KEY = re.compile(r"^([SG])([0-9]+)$")
# A rule id (G0, S2, G10) standing on its own; `5G-BBU1` is label text, not an id.
_RULE_ID = re.compile(r"(?<![A-Za-z0-9])[GS][0-9]+(?![0-9])")
_LEGACY_COUNT = re.compile(r"×([0-9]+)$")
# Attributes that are not one value per object: several issues per screw, several groups per object.
_MULTI_VALUE_KEYS = ("问题", "组")

VERDICT_SYSTEM = (
    "你是通信安装质检员，根据工单各图片摘要判定工单是否通过。"
    "规则需同时满足，写明“或/例外”的除外；无关图片不计入证据；出现与任务相关的缺失、不符合、错误即不通过。"
    "只输出两行：\nVerdict: 通过 或 不通过\n"
    f"Reason: 一行理由，不超过{REASON_MAX_CHARS}字，不写规则编号"
)


def header(domain: str, task: str) -> str:
    return f"<DOMAIN={_domain(domain)}>, <TASK={task}>"


def _domain(domain: str | None) -> str:
    upper = (domain or "").upper()
    if upper not in DOMAINS:
        raise VlqcError(f"domain must be one of {', '.join(DOMAINS)} (any case), not {domain!r}")
    return upper


def _mission(mission: str, missions: Mapping[str, Mapping[str, Any]]) -> Mapping[str, Any]:
    if mission not in missions:
        raise VlqcError(f"unknown mission {mission!r}; known: {', '.join(missions)}")
    return missions[mission]


# --- Stage-A: summary ---------------------------------------------------------------------------


def summary_messages(
    mission: str | None, domain: str, missions: Mapping[str, Mapping[str, Any]], no_mission: bool = False
) -> tuple[str, str]:
    """System and user text asking for an image's summary; the user text names the mission and
    its focus unless `mission` is None or `no_mission` is set."""
    system = (
        f"你是通信安装质检助手。统计图中对象，输出两行：第一行{header(domain, 'SUMMARY')}，"
        f"第二行单行JSON摘要。与任务无关的图片只输出：{IRRELEVANT}"
    )
    if mission is None or no_mission:
        return system, f"{IMAGE_TAG}输出摘要。"
    focus = _mission(mission, missions)["focus"]
    return system, f"{IMAGE_TAG}任务: {mission}\n重点: {focus}"


def summary_target(summary: str, domain: str) -> str:
    """The answer to `summary_messages`: header line + summary, or `无关图片` alone."""
    if summary == IRRELEVANT:
        return IRRELEVANT
    if "\n" in summary:
        raise VlqcError(f"a summary must be one line: {summary[:80]!r}")
    return f"{header(domain, 'SUMMARY')}\n{summary}"


# --- dense detection ----------------------------------------------------------------------------


def dense_messages(domain: str) -> tuple[str, str]:
    system = (
        f"你是通信安装质检助手。检测图中全部对象，输出两行：第一行{header(domain, 'DETECTION')}，"
        "第二行单行JSON对象，键依次为object_1、object_2…，值含bbox_2d、poly（加poly_points点数）"
        "或line（加line_points点数）之一及desc，坐标按0-1000归一化。"
    )
    return system, f"{IMAGE_TAG}检测图中对象。"


def norm1000(coords: Sequence[int], width: int, height: int) -> list[int]:
    """Flat [x, y, …] pixel-edge coordinates as integers 0..1000: round(v / size * 1000), halves up."""

    def scale(value: int, size: int) -> int:
        # Integer arithmetic: exact halves, no float noise.
        return min(1000, max(0, (2000 * value + size) // (2 * size)))

    return [scale(v, width if i % 2 == 0 else height) for i, v in enumerate(coords)]


def dense_objects(record: Mapping[str, Any]) -> list[DenseObject]:
    """The ground-truth objects of a canonical record, in record order, coordinates in norm1000."""
    width, height = record["width"], record["height"]
    objects = []
    for obj in record["objects"]:
        kind = next(key for key in obj if key != "desc")
        objects.append(DenseObject(kind, tuple(norm1000(obj[kind], width, height)), obj["desc"]))
    return objects


def render_dense(objects: Sequence[DenseObject], domain: str) -> str:
    """The dense answer of `objects`: header line, then `object_1..object_N` as one line of JSON
    (docs/answers.md#the-dense-answer)."""
    body = {}
    for n, obj in enumerate(objects, 1):
        entry: dict[str, Any] = {obj.kind: list(obj.points)}
        if obj.kind in COUNT_FIELDS:
            entry[COUNT_FIELDS[obj.kind]] = len(obj.points) // 2
        body[f"object_{n}"] = {**entry, "desc": obj.desc}
    text = json.dumps(body, ensure_ascii=False, separators=JSON_SEPARATORS)
    return f"{header(domain, 'DETECTION')}\n{text}"


def dense_target(record: Mapping[str, Any]) -> str:
    """The answer to `dense_messages` for a canonical record: its `dense_objects`, rendered."""
    return render_dense(dense_objects(record), record["domain"])


# --- summaries read back --------------------------------------------------------------------------


def category_count(entry: Mapping[str, Any]) -> int:
    """Objects behind one `统计` entry: the largest value total of a one-value-per-object key
    (exact for keys every object has, such as 可见性); 1 for an entry without attributes."""
    totals = [
        sum(values.values())
        for key, values in entry.items()
        if key != "类别" and key not in _MULTI_VALUE_KEYS and isinstance(values, dict)
    ]
    return max(totals, default=1)


def summary_object_count(summary: str) -> int:
    entries = summary_entries(summary)
    if entries is not None:
        return sum(category_count(entry) for entry in entries)
    # Legacy `desc×N，…`: a segment without ×N (an RRU station) is one object.
    return sum(int(m.group(1)) if (m := _LEGACY_COUNT.search(seg)) else 1 for seg in summary.split("，") if seg)


# --- Stage-B: verdict ---------------------------------------------------------------------------


def verdict_messages(
    mission: str,
    guidance: Mapping[str, str] | None,
    per_image_summaries: Sequence[str],
    missions: Mapping[str, Mapping[str, Any]],
) -> tuple[str, str]:
    """System and user text asking for a ticket's verdict.

    `guidance` is the mission's experiences map (`G0`, `S<n>`, `G<n>`;
    docs/guidance.md#how-the-verdict-prompt-shows-it) or None, in which case the focus comes from
    missions.yaml. Summaries may still carry their header line.
    """
    spec = _mission(mission, missions)
    if not per_image_summaries:
        raise VlqcError(f"{mission}: a ticket needs at least one image summary")
    summaries = [_one_line(strip_summary_header(s), n) for n, s in enumerate(per_image_summaries, 1)]
    rules = _guidance_rules(mission, guidance)
    lines = [f"任务: {mission}", f"重点: {rules.pop('G0', spec['focus'])}"]
    for title, kind in (("结构不变量:", "S"), ("可学习规则:", "G")):
        keys = sorted((k for k in rules if k[0] == kind), key=lambda k: int(k[1:]))
        if keys:
            lines.append(title)
            lines += [f"{n}. {rules[k]}" for n, k in enumerate(keys, 1)]
    counts = ", ".join(f"Image{n}={summary_object_count(s)}" for n, s in enumerate(summaries, 1))
    lines.append(f"图片数: {len(summaries)}; 对象数: {counts}")
    if spec["domain"].upper() == "RRU":
        lines.append(_install_points(summaries))
    lines += [f"Image{n}: {s}" for n, s in enumerate(summaries, 1)]
    return VERDICT_SYSTEM, "\n".join(lines)


def _one_line(summary: str, n: int) -> str:
    if not summary or "\n" in summary:
        raise VlqcError(f"Image{n}: a summary must be one non-empty line, got {summary[:80]!r}")
    return summary


def _guidance_rules(mission: str, guidance: Mapping[str, str] | None) -> dict[str, str]:
    if guidance is None:
        return {}
    bad = [key for key in guidance if not _GUIDANCE_KEY.match(key)]
    if bad:
        raise VlqcError(f"{mission}: guidance keys must be S<n> or G<n>, not {bad}")
    if "G0" not in guidance:
        raise VlqcError(f"{mission}: guidance has no G0 (the mission checklist)")
    return dict(guidance)


def _install_points(summaries: Sequence[str]) -> str:
    """RRU photos merged by 站点距离 (irrelevant images left out)."""
    points: dict[str, list[int]] = {}
    for n, summary in enumerate(summaries, 1):
        entries = summary_entries(summary)
        if entries == []:
            continue
        stations = [v for e in entries or () if e.get("类别") == STATION for v in e.get(STATION, {})]
        for station in stations or ["未知"]:
            points.setdefault(station, []).append(n)
    return "安装点: " + "; ".join(
        f"{STATION}{station}=" + ",".join(f"Image{n}" for n in images) for station, images in points.items()
    )


def verdict_target(label: str, reasons: Sequence[str]) -> str:
    """The two-line answer for a ticket labelled `pass` or `fail`.

    `reasons` are evidence clauses (`Image2: BBU安装螺丝符合性=不符合`, `缺少ODF端光纤插头`, …), cited in
    order before the conclusion; trailing ones are replaced by `另有N项` when the Reason would exceed
    240 characters. They must be single lines without rule ids (G0, S1, …).
    """
    if label not in LABELS:
        raise VlqcError(f"label must be 'pass' or 'fail', not {label!r}")
    for reason in reasons:
        if not reason or "\n" in reason or _RULE_ID.search(reason):
            raise VlqcError(f"a reason must be one non-empty line without rule ids: {reason!r}")
    conclusion = PASS_CONCLUSION if label == "pass" else FAIL_CONCLUSION
    kept = list(reasons)
    while True:
        dropped = len(reasons) - len(kept)
        text = "; ".join([*kept, *([f"另有{dropped}项"] if dropped else []), conclusion])
        if len(text) <= REASON_MAX_CHARS or not kept:
            break
        kept.pop()
    return f"Verdict: {LABELS[label]}\nReason: {text}"


# --- transformers chat format -------------------------------------------------------------------


def hf_messages(system: str, user: str, images: Sequence[Any] | None = None) -> list[dict[str, Any]]:
    """The same prompt as chat-template messages: each `<image>` becomes an image item, given the
    matching entry of `images` when those are passed (PIL images or paths)."""
    parts = user.split(IMAGE_TAG)
    if images is not None and len(images) != len(parts) - 1:
        raise VlqcError(f"the prompt has {len(parts) - 1} {IMAGE_TAG} tags but {len(images)} images were given")
    content: list[dict[str, Any]] = []
    for n, text in enumerate(parts):
        if n:
            content.append({"type": "image", "image": images[n - 1]} if images is not None else {"type": "image"})
        if text:
            content.append({"type": "text", "text": text})
    return [{"role": "system", "content": system}, {"role": "user", "content": content}]
