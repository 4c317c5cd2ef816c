"""Prompt profiles: the one table of prompt texts, and the one function that renders them (docs/prompts.md).

A profile is a named set of templates for one task (`summary`, `dense`, `verdict`); its name starts
with the task. A config's `prompts` section (schemas/train_config.schema.json#/properties/prompts)
picks one profile per task, may override any template (`prompts.system.<task>`,
`prompts.user.<slot>`), and may reword the domain hint (`prompts.domain.<BBU|RRU>`). Templates are
`string.Template` text: `$name` or `${name}` is a field the builder fills in, `$$` a dollar sign, and
JSON braces need no escaping. Which fields a slot offers is `FIELDS`; a template naming another field
is an error when the config is loaded (`PromptConfig.problems`).

The image tag of an image task is not part of a template: the builders in `vlqc.inference.prompts`
put it first, where ms-swift and the chat template expect it.

`summary_train_min`, `dense_train_min` and `verdict_train_min` are the texts vlqc has always trained
with (byte for byte), so checkpoints and numbers of earlier runs stay comparable.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from string import Template
from typing import Any

from vlqc.data.summary import IRRELEVANT
from vlqc.data.taxonomy import BBU, RRU, categories
from vlqc.errors import VlqcError

TASKS = ("summary", "dense", "verdict")
DOMAINS = (BBU, RRU)
# The templates of a task; `summary_no_mission` is the user text of a summary prompt that names no mission.
SLOTS = {
    "summary": ("system", "user", "summary_no_mission"),
    "dense": ("system", "user"),
    "verdict": ("system", "user"),
}
# User-text slots that `prompts.user` may override (system overrides are keyed by task).
USER_SLOTS = ("summary", "summary_no_mission", "dense", "verdict")

_COMMON = ("domain", "domain_hint")
FIELDS: dict[tuple[str, str], tuple[str, ...]] = {
    ("summary", "system"): (*_COMMON, "header", "irrelevant"),
    ("summary", "user"): (*_COMMON, "header", "irrelevant", "mission", "focus"),
    ("summary", "summary_no_mission"): (*_COMMON, "header", "irrelevant"),
    ("dense", "system"): (*_COMMON, "header"),
    ("dense", "user"): (*_COMMON, "header"),
    ("verdict", "system"): (*_COMMON, "reason_max_chars", "mission", "focus"),
    # body: the rules, object counts and per-image summaries, one per line (vlqc.inference.prompts.verdict_messages).
    ("verdict", "user"): (*_COMMON, "reason_max_chars", "mission", "focus", "body"),
}

PROFILES: dict[str, dict[str, str]] = {
    # The short prompts vlqc trains with: the tiny demo model has a small context budget.
    "summary_train_min": {
        "system": (
            "你是通信安装质检助手。统计图中对象，输出两行：第一行${header}，"
            "第二行单行JSON摘要。与任务无关的图片只输出：${irrelevant}"
        ),
        "user": "任务: ${mission}\n重点: ${focus}",
        "summary_no_mission": "输出摘要。",
    },
    # What a served model may be asked at runtime: the mission focus and the answer's rules spelt out.
    "summary_runtime": {
        "system": (
            "你是通信安装质检助手。逐个统计图中可见的对象，按类别汇总其属性。\n"
            "输出规则：\n"
            "1. 只输出两行：第一行${header}，第二行单行JSON摘要；不要解释，不要输出坐标。\n"
            '2. 摘要格式：{"统计": [{"类别": 类别, 属性: {取值: 数量}, ...}, ...]}，每个类别一项，数量为对象个数；'
            'BBU有备注时另加"备注"列表，RRU的站点距离一项排在最前、对象有分组时另加"分组统计"。\n'
            "3. 只写图中能看清的对象和属性，看不清的属性不要猜。\n"
            "4. ${domain_hint}\n"
            "5. 图中没有与任务相关的对象时只输出一行：${irrelevant}"
        ),
        "user": "任务: ${mission}\n重点: ${focus}\n请按重点检查后输出摘要。",
        "summary_no_mission": "输出摘要。",
    },
    # The answer format of vlqc.inference.prompts.dense_target: objects keyed object_1..object_N.
    "dense_train_min": {
        "system": (
            "你是通信安装质检助手。检测图中全部对象，输出两行：第一行${header}，"
            "第二行单行JSON对象，键依次为object_1、object_2…，值含bbox_2d、poly（加poly_points点数）"
            "或line（加line_points点数）之一及desc，坐标按0-1000归一化。"
        ),
        "user": "检测图中对象。",
    },
    # The dense answer spelt out: object_1..object_N, each one geometry with its point count, then desc.
    "dense_runtime": {
        "system": (
            "你是通信安装质检助手。检测图中全部对象，输出两行：第一行${header}，第二行单行JSON对象，"
            '键依次为"object_1"、"object_2"……，每个值含一种几何："bbox_2d": [x1, y1, x2, y2]，'
            '或"poly"加"poly_points"，或"line"加"line_points"（坐标按0-1000归一化的整数），'
            '以及"desc"（类别=…,属性=…）。${domain_hint}'
        ),
        "user": "检测图中对象。",
    },
    "verdict_train_min": {
        "system": (
            "你是通信安装质检员，根据工单各图片摘要判定工单是否通过。"
            "规则需同时满足，写明“或/例外”的除外；无关图片不计入证据；出现与任务相关的缺失、不符合、错误即不通过。"
            "只输出两行：\nVerdict: 通过 或 不通过\n"
            "Reason: 一行理由，不超过${reason_max_chars}字，不写规则编号"
        ),
        "user": "任务: ${mission}\n重点: ${focus}\n${body}",
    },
    "verdict_runtime": {
        "system": (
            "你是通信安装质检员，根据工单各图片摘要判定工单是否通过。\n"
            "判定规则：\n"
            "1. 所有规则需同时满足，写明“或/例外”的除外。\n"
            "2. 无关图片不计入证据；同一对象可能出现在多张图片中。\n"
            "3. 出现与任务相关的缺失、不符合、错误即不通过；只有两种结论，不写“需复核”“证据不足”等第三种结论。\n"
            "只输出两行：\nVerdict: 通过 或 不通过\n"
            "Reason: 一行理由，引用图片编号和摘要中的证据，不超过${reason_max_chars}字，不写规则编号"
        ),
        "user": "任务: ${mission}\n重点: ${focus}\n${body}",
    },
}
DEFAULT_PROFILES = {"summary": "summary_train_min", "dense": "dense_train_min", "verdict": "verdict_train_min"}


def default_domain_hint(domain: str) -> str:
    """The domain wording a config does not reword: the domain's categories in code-point order, as
    summaries list them (docs/summary-format.md)."""
    names = "，".join(sorted(categories(domain)))
    return f"{domain}的类别只有：{names}。"


@dataclass(frozen=True)
class PromptConfig:
    """A resolved `prompts` section: a profile per task, template overrides, domain wording."""

    profile: Mapping[str, str] = field(default_factory=lambda: dict(DEFAULT_PROFILES))
    domain: Mapping[str, str] = field(default_factory=dict)  # BBU/RRU → domain_hint text
    system: Mapping[str, str] = field(default_factory=dict)  # task → system template
    user: Mapping[str, str] = field(default_factory=dict)  # user slot → user template

    @classmethod
    def of(cls, section: Mapping[str, Any] | None, *, check: bool = True) -> PromptConfig:
        """From a config's `prompts` section (None or {}: the defaults); with `check`, problems raise VlqcError."""
        section = section or {}
        unknown = sorted(set(section) - {"profile", "domain", "system", "user"})
        if unknown:
            raise VlqcError(f"prompts: unknown keys {unknown}")
        made = cls(
            profile={**DEFAULT_PROFILES, **(section.get("profile") or {})},
            domain=dict(section.get("domain") or {}),
            system=dict(section.get("system") or {}),
            user=dict(section.get("user") or {}),
        )
        found = made.problems() if check else []
        if found:
            raise VlqcError("prompts: " + "; ".join(found))
        return made

    def problems(self) -> list[str]:
        """Every inconsistency, each naming the config key (`prompts.user.summary`, …)."""
        found = []
        for task, name in self.profile.items():
            if task not in TASKS:
                found.append(f"prompts.profile.{task}: unknown task (one of {', '.join(TASKS)})")
            elif name not in PROFILES or not name.startswith(f"{task}_"):
                known = ", ".join(p for p in PROFILES if p.startswith(f"{task}_"))
                found.append(f"prompts.profile.{task}: unknown {task} profile {name!r} (one of {known})")
        found += [
            f"prompts.domain.{d}: unknown domain (one of {', '.join(DOMAINS)})" for d in self.domain if d not in DOMAINS
        ]
        found += [
            f"prompts.system.{t}: unknown task (one of {', '.join(TASKS)})" for t in self.system if t not in TASKS
        ]
        found += [
            f"prompts.user.{s}: unknown slot (one of {', '.join(USER_SLOTS)})" for s in self.user if s not in USER_SLOTS
        ]
        if found:
            return found
        for task in TASKS:
            for slot in SLOTS[task]:
                key, text = self._source(task, slot), self.template(task, slot)
                if "<image>" in text:
                    found.append(f"{key}: must not hold <image> (the builder puts the image first)")
                made = Template(text)
                if not made.is_valid():
                    found.append(f"{key}: not a valid template (a lone $? write $$ for a dollar sign)")
                    continue
                extra = sorted(set(made.get_identifiers()) - set(FIELDS[task, slot]))
                if extra:
                    found.append(f"{key}: unknown fields {extra} (offered: {', '.join(FIELDS[task, slot])})")
        return found

    def _source(self, task: str, slot: str) -> str:
        if slot == "system":
            return f"prompts.system.{task}" if task in self.system else f"profile {self.profile[task]} system"
        user_key = slot if slot == "summary_no_mission" else task
        return f"prompts.user.{user_key}" if user_key in self.user else f"profile {self.profile[task]} {slot}"

    def template(self, task: str, slot: str) -> str:
        """The template text of `slot` of `task`: the override, else the chosen profile's."""
        if slot == "system" and task in self.system:
            return self.system[task]
        user_key = slot if slot == "summary_no_mission" else task
        if slot != "system" and user_key in self.user:
            return self.user[user_key]
        return PROFILES[self.profile[task]][slot]

    def domain_hint(self, domain: str) -> str:
        return self.domain.get(domain) or default_domain_hint(domain)


DEFAULT = PromptConfig()


def render(prompts: PromptConfig | None, task: str, slot: str, domain: str, **fields: Any) -> str:
    """The text of `slot` of `task` for `domain` (BBU/RRU): the template with `fields`, plus `domain`
    and `domain_hint`. A field the template does not use is ignored; one it uses but was not given is an error."""
    prompts = prompts or DEFAULT
    text = prompts.template(task, slot)
    values = {"domain": domain, "domain_hint": prompts.domain_hint(domain), "irrelevant": IRRELEVANT, **fields}
    try:
        return Template(text).substitute(values)
    except (KeyError, ValueError) as exc:
        raise VlqcError(f"{prompts._source(task, slot)}: cannot fill {exc} into {text[:60]!r}") from exc
