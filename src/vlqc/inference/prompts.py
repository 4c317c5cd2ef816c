"""Prompts and answer texts: the one home of the text that SFT, Stage-A and Stage-B show the model.

One set of weights serves three tasks:
- summary (Stage-A): an image → `<DOMAIN=BBU>, <TASK=SUMMARY>` and the one-line summary JSON on the
  next line, or `无关图片` alone for an image without objects.
- dense: an image → `<DOMAIN=BBU>, <TASK=DETECTION>` and its objects as one JSON object
  `{"object_1": {<bbox_2d|poly|line>: [norm1000 ints], ("poly_points"|"line_points": N,) "desc": …}, …}`
  (docs/answers.md#the-dense-answer; `vlqc.inference.answers` reads it back).
- verdict (Stage-B): the per-image summaries of a ticket and the mission guidance (text only) →
  `Verdict: 通过|不通过` and `Reason: …` on two lines.

Builders return `(system, user)`. Their wording comes from prompt profiles
(`vlqc.inference.profiles`, docs/prompts.md): a config's `prompts` section, passed as `prompts=`,
picks a profile per task and may override its texts; without it the default profiles render the
texts vlqc has always trained with. The user text of an image task starts with ms-swift's `<image>`
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
from vlqc.inference.profiles import PromptConfig, render

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

# The verdict system text of the default profile (vlqc.inference.profiles, docs/prompts.md).
VERDICT_SYSTEM = render(None, "verdict", "system", "BBU", reason_max_chars=REASON_MAX_CHARS)


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


# --- prompt specs ---------------------------------------------------------------------------------
#
# A spec is what a prompt says, without the wording: task, user slot, domain and the template fields
# (JSON-able, so eval rows can carry it and be worded for each run: vlqc.evaluation.candidates).
# Every builder below is `render_spec(<task>_spec(...), prompts)`.

IMAGE_TASKS = ("summary", "dense")


def render_spec(spec: Mapping[str, Any], prompts: PromptConfig | None = None) -> tuple[str, str]:
    """System and user text of a spec worded by `prompts` (the config's prompt profiles and overrides,
    docs/prompts.md; None: the default profiles); an image task's user text starts with `<image>`."""
    task, domain, fields = spec["task"], spec["domain"], spec["fields"]
    system = render(prompts, task, "system", domain, **fields)
    user = render(prompts, task, spec["slot"], domain, **fields)
    return system, IMAGE_TAG + user if task in IMAGE_TASKS else user


def summary_spec(
    mission: str | None, domain: str, missions: Mapping[str, Mapping[str, Any]], no_mission: bool = False
) -> dict[str, Any]:
    domain = _domain(domain)
    fields = {"header": header(domain, "SUMMARY")}
    if mission is None or no_mission:
        return {"task": "summary", "slot": "summary_no_mission", "domain": domain, "fields": fields}
    fields |= {"mission": mission, "focus": _mission(mission, missions)["focus"]}
    return {"task": "summary", "slot": "user", "domain": domain, "fields": fields}


def summary_messages(
    mission: str | None,
    domain: str,
    missions: Mapping[str, Mapping[str, Any]],
    no_mission: bool = False,
    *,
    prompts: PromptConfig | None = None,
) -> tuple[str, str]:
    """System and user text asking for an image's summary; the user text names the mission and
    its focus unless `mission` is None or `no_mission` is set. `prompts`: the config's prompt
    profiles and overrides (docs/prompts.md); None: the default profile."""
    return render_spec(summary_spec(mission, domain, missions, no_mission), prompts)


def summary_target(summary: str, domain: str) -> str:
    """The answer to `summary_messages`: header line + summary, or `无关图片` alone."""
    if summary == IRRELEVANT:
        return IRRELEVANT
    if "\n" in summary:
        raise VlqcError(f"a summary must be one line: {summary[:80]!r}")
    return f"{header(domain, 'SUMMARY')}\n{summary}"


# --- dense detection ----------------------------------------------------------------------------


def dense_spec(domain: str) -> dict[str, Any]:
    domain = _domain(domain)
    return {"task": "dense", "slot": "user", "domain": domain, "fields": {"header": header(domain, "DETECTION")}}


def dense_messages(domain: str, *, prompts: PromptConfig | None = None) -> tuple[str, str]:
    """System and user text asking for an image's objects (`prompts` as for `summary_messages`)."""
    return render_spec(dense_spec(domain), prompts)


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
    *,
    prompts: PromptConfig | None = None,
) -> tuple[str, str]:
    """System and user text asking for a ticket's verdict.

    `guidance` is the mission's experiences map (`G0`, `S<n>`, `G<n>`;
    docs/guidance.md#how-the-verdict-prompt-shows-it) or None, in which case the focus comes from
    missions.yaml. Summaries may still carry their header line. `prompts` as for `summary_messages`;
    the rules, counts and summaries are the template's `body`.
    """
    return render_spec(verdict_spec(mission, guidance, per_image_summaries, missions), prompts)


def verdict_spec(
    mission: str,
    guidance: Mapping[str, str] | None,
    per_image_summaries: Sequence[str],
    missions: Mapping[str, Mapping[str, Any]],
) -> dict[str, Any]:
    spec = _mission(mission, missions)
    if not per_image_summaries:
        raise VlqcError(f"{mission}: a ticket needs at least one image summary")
    summaries = [_one_line(strip_summary_header(s), n) for n, s in enumerate(per_image_summaries, 1)]
    rules = _guidance_rules(mission, guidance)
    focus = rules.pop("G0", spec["focus"])
    lines = []
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
    fields = {"reason_max_chars": REASON_MAX_CHARS, "mission": mission, "focus": focus, "body": "\n".join(lines)}
    return {"task": "verdict", "slot": "user", "domain": _domain(spec["domain"]), "fields": fields}


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
