"""Prompt profiles (vlqc.inference.profiles, docs/prompts.md): the profile table against the schema,
runtime profiles, overrides and their checks, and training rows worded as inference words them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from vlqc.data.summary import build_summary
from vlqc.errors import SchemaError, VlqcError
from vlqc.inference.profiles import DEFAULT_PROFILES, PROFILES, SLOTS, TASKS, USER_SLOTS, PromptConfig
from vlqc.inference.prompts import dense_messages, summary_messages, verdict_messages
from vlqc.jsonl import write_jsonl
from vlqc.missions import load_missions
from vlqc.schemas import load, validate
from vlqc.train.config import load_train_config, prompt_config
from vlqc.train.sft_data import build_epoch, data_config

MISSIONS = {
    "挡风板安装检查": {"domain": "bbu", "focus": "须看到BBU设备。", "fail_conditions": ["未看到BBU设备"]},
    "RRU线缆": {"domain": "rru", "focus": "尾纤须有套管。", "fail_conditions": ["尾纤无套管"]},
}
REPO = Path(__file__).resolve().parents[1]
DEFINED = load_missions(REPO / "config" / "missions.yaml")  # complete entries, with their rules
SUMMARY = '{"统计": [{"类别": "BBU设备", "可见性": {"完整": 1}}]}'


def test_schema_offers_exactly_the_profiles_and_slots_of_the_table():
    section = load("train_config")["properties"]["prompts"]["properties"]
    for task in TASKS:
        offered = section["profile"]["properties"][task]
        assert offered["enum"] == [name for name in PROFILES if name.startswith(f"{task}_")]
        assert offered["default"] == DEFAULT_PROFILES[task]
        assert all(set(PROFILES[name]) == set(SLOTS[task]) for name in offered["enum"])
    assert list(section["system"]["properties"]) == list(TASKS)
    assert list(section["user"]["properties"]) == list(USER_SLOTS)


def test_runtime_profiles_spell_out_focus_rules_and_domain():
    prompts = PromptConfig.of({"profile": {"summary": "summary_runtime", "dense": "dense_runtime"}})
    system, user = summary_messages("挡风板安装检查", "bbu", MISSIONS, prompts=prompts)
    assert system.startswith("你是通信安装质检助手。逐个统计图中可见的对象")
    assert "第一行<DOMAIN=BBU>, <TASK=SUMMARY>" in system and "只输出一行：无关图片" in system
    assert "BBU的类别只有：BBU安装螺丝，" in system and "紧固件" not in system  # an RRU category
    assert user == "<image>任务: 挡风板安装检查\n重点: 须看到BBU设备。\n请按重点检查后输出摘要。"
    assert summary_messages(None, "RRU", MISSIONS, prompts=prompts)[1] == "<image>输出摘要。"
    system, user = dense_messages("RRU", prompts=prompts)
    assert "<DOMAIN=RRU>, <TASK=DETECTION>" in system and '"poly_points"' in system and "站点距离" in system
    assert user == "<image>检测图中对象。"
    # The verdict task keeps its default profile.
    assert verdict_messages("挡风板安装检查", None, [SUMMARY], MISSIONS, prompts=prompts) == verdict_messages(
        "挡风板安装检查", None, [SUMMARY], MISSIONS
    )


def test_overrides_replace_one_slot_with_fields_filled_in():
    prompts = PromptConfig.of(
        {
            "system": {"verdict": "判定${mission}（${domain}），理由≤${reason_max_chars}字，费用$$0"},
            "user": {"summary": "[$mission] $focus", "verdict": "$body\n$focus"},
            "domain": {"BBU": "只看机柜。"},
            "profile": {"summary": "summary_runtime"},
        }
    )
    system, user = summary_messages("挡风板安装检查", "BBU", MISSIONS, prompts=prompts)
    assert user == "<image>[挡风板安装检查] 须看到BBU设备。"
    assert "4. 只看机柜。\n" in system  # the runtime profile's system text, reworded domain hint
    system, user = verdict_messages("挡风板安装检查", None, [SUMMARY], MISSIONS, prompts=prompts)
    assert system == "判定挡风板安装检查（BBU），理由≤240字，费用$0"
    assert user == f"图片数: 1; 对象数: Image1=1\nImage1: {SUMMARY}\n须看到BBU设备。"


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"user": {"summary": "任务 $mission $oops"}}, "prompts.user.summary: unknown fields ['oops']"),
        ({"user": {"dense": "<image>检测"}}, "prompts.user.dense: must not hold <image>"),
        ({"system": {"dense": "坐标 $ 0-1000"}}, "prompts.system.dense: not a valid template"),
        ({"profile": {"summary": "verdict_runtime"}}, "prompts.profile.summary: unknown summary profile"),
        ({"user": {"summary_no_mission": "$mission"}}, "prompts.user.summary_no_mission: unknown fields ['mission']"),
    ],
)
def test_bad_prompt_sections_are_named(section, message):
    with pytest.raises(VlqcError, match=message.replace("[", r"\[").replace("]", r"\]")):
        PromptConfig.of(section)


def test_training_config_checks_templates_at_load(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("prompts:\n  system:\n    summary: '统计 ${header} ${colour}'\n", encoding="utf-8")
    with pytest.raises(SchemaError, match=r"prompts.system.summary: unknown fields \['colour'\]"):
        load_train_config(path)
    path.write_text("prompts:\n  profile:\n    summary: summary_fancy\n", encoding="utf-8")
    with pytest.raises(SchemaError, match="prompts.profile.summary"):
        load_train_config(path)


def _records(root) -> list[dict]:
    """Four one-photo tickets of two missions, images written under `root`."""
    records = []
    for n in range(4):
        mission = ("挡风板安装检查", "RRU线缆")[n % 2]
        domain = DEFINED[mission]["domain"].upper()
        desc = "类别=BBU设备,可见性=完整" if domain == "BBU" else "类别=尾纤,标签=有标签"
        image = f"images/{n}.jpg"
        (root / "images").mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (96, 64), (10 * n, 60, 80)).save(root / image)
        records.append(
            {
                "sample_id": f"s{n}",
                "images": [image],
                "width": 96,
                "height": 64,
                "domain": domain,
                "objects": [{"bbox_2d": [8, 8, 40, 40], "desc": desc}],
                "summary": build_summary([desc], domain),
                "source": f"s{n}.json",
                "ticket": {"mission": mission, "label": "pass", "group_id": f"G{n}"},
            }
        )
    return records


def test_training_rows_are_worded_as_inference_words_them(tmp_path):
    """A run's rows and what Stage-A/Stage-B ask its checkpoint come from one config section, also
    after the run's resolved_config.json round trip (what later jobs read)."""
    path = tmp_path / "run.yaml"
    path.write_text(
        "prompts:\n  profile: {summary: summary_runtime, verdict: verdict_runtime}\n"
        "  user: {summary_no_mission: '请输出摘要（$domain）。'}\n"
        "data:\n  modes: {summary: 1, verdict: 1, dense: 0}\n  no_mission_prob: 0.5\n",
        encoding="utf-8",
    )
    cfg = load_train_config(path)
    resolved = tmp_path / "resolved_config.json"
    resolved.write_text(json.dumps(cfg), encoding="utf-8")
    prompts = prompt_config(load_train_config(resolved))
    assert prompts == data_config(cfg).prompts != PromptConfig()

    records = _records(tmp_path / "canonical")
    write_jsonl(tmp_path / "canonical" / "train.jsonl", records, schema="sample")
    kinds = set()
    for epoch in range(4):
        rows = build_epoch(
            records, epoch, data_config(cfg), tmp_path / "out", DEFINED, source=tmp_path / "canonical" / "train.jsonl"
        )
        for row in rows:
            system, user, _ = (m["content"] for m in row["messages"])
            record, mode = records[row["meta"]["index"]], row["meta"]["mode"]
            mission = record["ticket"]["mission"]
            if mode == "summary":
                no_mission = user.startswith("<image>请输出摘要")
                expected = summary_messages(mission, record["domain"], DEFINED, no_mission, prompts=prompts)
                kinds.add(f"summary, no mission: {no_mission}")
            else:
                expected = verdict_messages(mission, None, [record["summary"]], DEFINED, prompts=prompts)
                kinds.add(mode)
            assert (system, user) == expected
    assert kinds == {"summary, no mission: True", "summary, no mission: False", "verdict"}


# --- eval rows -------------------------------------------------------------------------------------------


def test_eval_rows_worded_for_a_run_are_that_runs_training_rows(tmp_path):
    """Eval candidates are shared by every run; worded by a run's prompts they ask what its training rows ask."""
    from test_sft_data import MISSIONS as FIXTURE_MISSIONS
    from test_sft_data import fixture_records, only, write_canonical

    from vlqc.evaluation.candidates import build_candidates, worded
    from vlqc.evaluation.golden import golden_row

    records = fixture_records()
    path = write_canonical(tmp_path / "canonical", records, "val.jsonl")
    rows = build_candidates(records, FIXTURE_MISSIONS, len, [40, 120], ["dense", "summary", "verdict"], path)
    for row in rows:
        validate(row, "eval_row")
        validate(golden_row(row), "golden_row")
    assert worded(rows, PromptConfig()) == rows  # the candidates hold the default wording
    runtime = PromptConfig.of(
        {
            "profile": {"summary": "summary_runtime", "dense": "dense_runtime", "verdict": "verdict_runtime"},
            "domain": {"BBU": "看清BBU。"},
        }
    )
    ours = worded(rows, runtime)
    assert [r["messages"][2] for r in ours] == [r["messages"][2] for r in rows]  # targets stay
    for mode in ("dense", "summary"):
        trained = build_epoch(
            records, 0, only(mode, no_mission_prob=0.0, prompts=runtime), tmp_path / mode, FIXTURE_MISSIONS, source=path
        )
        assert [r["messages"] for r in ours if r["mode"] == mode] == [r["messages"] for r in trained]
        assert all("看清BBU。" in r["messages"][0]["content"] for r in trained)
    mix = only("verdict", mode_ratios={"verdict": 1, "summary": 1e-9}, prompts=runtime)
    trained = build_epoch(records, 0, mix, tmp_path / "v", FIXTURE_MISSIONS, source=path, augment=False)
    by_ticket = {r["meta"]["source"]: r["messages"] for r in trained if r["meta"]["mode"] == "verdict"}
    assert {r["source"]: r["messages"] for r in ours if r["mode"] == "verdict"} == by_ticket
    assert by_ticket and all("不写“需复核”" in m[0]["content"] for m in by_ticket.values())

    older = [{k: v for k, v in row.items() if k != "prompt"} for row in rows]  # candidates of an earlier vlqc
    assert worded(older, PromptConfig()) == older
    with pytest.raises(VlqcError, match="no prompt spec.*rebuild the eval candidates"):
        worded(older, runtime)
