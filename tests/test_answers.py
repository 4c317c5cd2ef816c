"""vlqc.inference.answers: the dense answer read strictly and salvaged, its round trip with the training
target on demo records, the worked examples of docs/answers.md, and the summary and reflection readers."""

from __future__ import annotations

import json
import pickle
import random
import re
from pathlib import Path

import pytest

from vlqc.data.convert import ConvertSettings, convert_sample, find_exports
from vlqc.demo import MISSIONS, generate
from vlqc.inference.answers import (
    AnswerError,
    DenseAnswer,
    DenseObject,
    Dropped,
    decode_json_answer,
    parse_dense,
    summary_document,
    summary_entries,
)
from vlqc.inference.prompts import JSON_SEPARATORS, dense_objects, dense_target, render_dense
from vlqc.missions import load_missions

REPO = Path(__file__).resolve().parents[1]
HEADER = "<DOMAIN=BBU>, <TASK=DETECTION>\n"
BOX = {"bbox_2d": [10, 20, 300, 400], "desc": "类别=BBU设备,品牌=华为"}
QUAD = {"poly": [0, 0, 100, 0, 100, 100, 0, 100], "poly_points": 4, "desc": "类别=挡风板,安装方向=方向正确"}
LINE = {"line": [5, 5, 50, 80, 90, 90], "line_points": 3, "desc": "类别=光纤,保护措施=有保护"}


def answer(*objects: dict, header: str = HEADER) -> str:
    body = {f"object_{n}": obj for n, obj in enumerate(objects, 1)}
    return header + json.dumps(body, ensure_ascii=False, separators=JSON_SEPARATORS)


@pytest.fixture(scope="module")
def demo_records(tmp_path_factory) -> list[dict]:
    """Canonical records of rendered demo tickets (every demo mission, both export variants)."""
    defined = load_missions(REPO / "config" / "missions.yaml")
    root = tmp_path_factory.mktemp("answers") / "tickets"
    generate(root, {name: defined[name] for name in MISSIONS}, tickets_per_mission=2, seed=11, progress=False)
    settings = ConvertSettings(
        root=root, out_dir=root.parent / "out", mission_domains={n: defined[n]["domain"] for n in MISSIONS}
    )
    records = [result.record for path in find_exports(root) if (result := convert_sample(path, settings)).record]
    with_objects = [record for record in records if record["objects"]]
    kinds = {next(key for key in obj if key != "desc") for record in with_objects for obj in record["objects"]}
    assert kinds == {"bbox_2d", "poly", "line"}  # the demo has BBU missions only; RRU answers are written below
    return with_objects


# --- the training target reads back ----------------------------------------------------------------


def test_training_targets_read_back_strictly(demo_records):
    for record in demo_records:
        text = dense_target(record)
        expected = DenseAnswer(record["domain"], tuple(dense_objects(record)), ())
        assert parse_dense(text) == expected
        assert parse_dense(text, strict=False) == expected


def test_dense_objects_are_the_records_objects_in_norm1000():
    record = {
        "width": 200,
        "height": 100,
        "domain": "BBU",
        "objects": [{"bbox_2d": [20, 10, 101, 99], "desc": BOX["desc"]}],
    }
    assert dense_objects(record) == [DenseObject("bbox_2d", (100, 100, 505, 990), BOX["desc"])]


def test_rendered_objects_read_back():
    objects = (
        DenseObject("poly", (1, 2, 30, 4, 5, 60), "类别=RRU设备"),
        DenseObject("line", (0, 0, 1000, 1000), "类别=尾纤"),
    )
    assert parse_dense(render_dense(objects, "rru")) == DenseAnswer("RRU", objects, ())


def test_the_three_geometry_kinds():
    parsed = parse_dense(answer(BOX, QUAD, LINE))
    assert parsed.domain == "BBU" and parsed.dropped == ()
    assert parsed.objects == (
        DenseObject("bbox_2d", (10, 20, 300, 400), BOX["desc"]),
        DenseObject("poly", (0, 0, 100, 0, 100, 100, 0, 100), QUAD["desc"]),
        DenseObject("line", (5, 5, 50, 80, 90, 90), LINE["desc"]),
    )
    assert parse_dense(HEADER + "{}") == DenseAnswer("BBU", (), ())


def test_the_list_form_of_earlier_versions_is_read():
    old = HEADER + json.dumps([BOX, {"line": [1, 2, 3, 4], "desc": "类别=光纤"}], ensure_ascii=False)
    parsed = parse_dense(old)
    assert [o.kind for o in parsed.objects] == ["bbox_2d", "line"] and parsed.dropped == ()
    assert parse_dense(old, strict=False) == parsed
    with pytest.raises(AnswerError) as err:  # the list form never had point counts
        parse_dense(HEADER + json.dumps([QUAD], ensure_ascii=False))
    assert err.value.rule == "fields" and "object_1" in str(err.value)


# --- strict rules ----------------------------------------------------------------------------------


def _with(base: dict, **changes) -> dict:
    return {**{k: v for k, v in base.items() if k not in changes}, **{k: v for k, v in changes.items() if v != ...}}


STRICT_VIOLATIONS = [
    ("header", "{}"),  # no header line
    ("header", "<DOMAIN=BBU>, <TASK=SUMMARY>\n{}"),
    ("header", "<DOMAIN=XYZ>, <TASK=DETECTION>\n{}"),
    ("json", HEADER + '{"object_1": {"bbox_2d": [1, 2, 3, 4], "desc": "类别=BBU设备"}'),  # cut
    ("json", HEADER + "{} trailing"),
    ("json", HEADER + "```json\n{}\n```"),
    ("top_level", HEADER + '"object_1"'),
    ("keys", answer(BOX, BOX).replace("object_2", "object_3")),
    ("keys", answer(BOX, BOX).replace("object_2", "object_1")),
    ("keys", answer(BOX).replace("object_1", "obj_1")),
    ("object", HEADER + '{"object_1": [1, 2, 3, 4]}'),
    ("geometry_kind", answer({"desc": "类别=BBU设备"})),
    ("geometry_kind", answer({**BOX, "line": [1, 2, 3, 4]})),
    ("fields", answer({**BOX, "score": 0.9})),
    ("fields", answer({**BOX, "poly_points": 2})),
    ("fields", HEADER + '{"object_1": {"bbox_2d": [1, 2, 3, 4], "desc": "类别=BBU设备", "desc": "类别=标签"}}'),
    ("coordinates", answer(_with(BOX, bbox_2d=[1.0, 2, 3, 4]))),
    ("coordinates", answer(_with(BOX, bbox_2d=[True, 2, 3, 4]))),
    ("coordinates", answer(_with(BOX, bbox_2d=[[1, 2], [3, 4]]))),
    ("coordinates", answer(_with(BOX, bbox_2d=[1, 2, 3, 4, 5, 6]))),
    ("coordinates", answer(_with(LINE, line=[1, 2, 3], line_points=1))),
    ("min_points", answer(_with(QUAD, poly=[1, 2, 3, 4], poly_points=2))),
    ("min_points", answer(_with(LINE, line=[1, 2], line_points=1))),
    ("int_range", answer(_with(BOX, bbox_2d=[1, 2, 3, 1001]))),
    ("int_range", answer(_with(LINE, line=[-1, 2, 3, 4], line_points=2))),
    ("bbox_order", answer(_with(BOX, bbox_2d=[300, 20, 10, 400]))),
    ("bbox_order", answer(_with(BOX, bbox_2d=[10, 400, 300, 20]))),
    ("point_count", answer(_with(QUAD, poly_points=3))),
    ("point_count", answer(_with(QUAD, poly_points=...))),
    ("point_count", answer(_with(LINE, line_points="3"))),
    ("desc", answer(_with(BOX, desc=...))),
    ("desc", answer(_with(BOX, desc="BBU设备"))),  # no 类别 first
    ("desc", answer(_with(BOX, desc="类别=BBU设备,品牌="))),  # empty value
    ("desc", answer(_with(BOX, desc="类别=BBU设备|标签"))),
    ("desc", answer(_with(BOX, desc="类别=BBU设备\n品牌=华为"))),
    ("category", answer(_with(BOX, desc="类别=机柜"))),
    ("category", answer(_with(BOX, desc="类别=RRU设备"))),  # an RRU category in a BBU answer
]


@pytest.mark.parametrize(("rule", "text"), STRICT_VIOLATIONS)
def test_each_strict_rule_names_itself(rule, text):
    with pytest.raises(AnswerError) as err:
        parse_dense(text)
    assert err.value.rule == rule, str(err.value)
    assert str(err.value).endswith(f"[{rule}]")


def test_every_rule_in_the_docs_is_exercised():
    section = (REPO / "docs" / "answers.md").read_text(encoding="utf-8").split("## Strict rules")[1].split("\n## ")[0]
    documented = set(re.findall(r"^\| `([a-z_]+)` \|", section, flags=re.MULTILINE))
    assert documented == {rule for rule, _ in STRICT_VIOLATIONS}


def test_the_header_sets_the_categories_and_the_domain():
    rru = answer({"bbox_2d": [1, 2, 3, 4], "desc": "类别=RRU设备"}, header="<DOMAIN=RRU>，<TASK=DETECTION>\n")
    assert parse_dense(rru).domain == "RRU"
    salvaged = parse_dense(answer(BOX, {"bbox_2d": [1, 2, 3, 4], "desc": "类别=RRU设备"}, header=""), strict=False)
    assert salvaged.domain is None and len(salvaged.objects) == 2 and salvaged.dropped == ()


def test_answer_errors_survive_a_process_boundary():
    err = pickle.loads(pickle.dumps(AnswerError("keys", "object_2: wrong")))
    assert (err.rule, err.message, str(err)) == ("keys", "object_2: wrong", "object_2: wrong [keys]")


# --- salvage -------------------------------------------------------------------------------------------


def test_a_cut_answer_salvages_exactly_its_complete_objects(demo_records):
    record = max(demo_records, key=lambda r: len(r["objects"]))
    objects = dense_objects(record)
    text = dense_target(record)
    body = json.loads(text.split("\n", 1)[1])
    head = text.split("\n", 1)[0] + "\n"
    # Where each object's member closes: the text of the first k members is a prefix of the full one.
    ends = [
        len(head) + len(json.dumps(dict(list(body.items())[:k]), ensure_ascii=False, separators=JSON_SEPARATORS)) - 1
        for k in range(1, len(body) + 1)
    ]
    assert len(objects) >= 3
    for cut in range(len(head), len(text)):
        salvaged = parse_dense(text[:cut], strict=False)
        complete = sum(end <= cut for end in ends)
        assert salvaged.objects == tuple(objects[:complete]), cut
        assert [d.reason for d in salvaged.dropped] == ["truncated"], cut
        with pytest.raises(AnswerError, match=r"\[json\]"):
            parse_dense(text[:cut])


def test_a_cut_names_the_object_it_cut():
    text = answer(BOX, QUAD, LINE)
    cut = text.index("类别=挡风板") + 3
    assert parse_dense(text[:cut], strict=False) == DenseAnswer(
        "BBU",
        (DenseObject("bbox_2d", (10, 20, 300, 400), BOX["desc"]),),
        (Dropped("object_2", "truncated", "the answer ends inside object_2"),),
    )
    between = text[: text.index(', "object_3"') + 2]
    assert [(d.where, d.reason) for d in parse_dense(between, strict=False).dropped] == [("answer", "truncated")]
    assert [(d.where, d.reason) for d in parse_dense(HEADER, strict=False).dropped] == [("answer", "truncated")]
    assert [(d.where, d.reason) for d in parse_dense("<DOMAIN=B", strict=False).dropped] == [("answer", "truncated")]


def test_bad_objects_are_dropped_with_their_reasons_and_the_rest_kept():
    text = answer(
        BOX,
        _with(BOX, desc="类别=机柜"),
        _with(BOX, bbox_2d=[1, 2, 3]),
        _with(QUAD, poly_points=5),
        _with(BOX, desc="品牌=华为"),
        [1, 2],
        {**LINE, "score": 1},
        LINE,
    )
    salvaged = parse_dense(text, strict=False)
    assert [o.desc for o in salvaged.objects] == [BOX["desc"], LINE["desc"]]
    assert [(d.where, d.reason) for d in salvaged.dropped] == [
        ("object_2", "unknown_category"),
        ("object_3", "bad_geometry"),
        ("object_4", "bad_geometry"),
        ("object_5", "bad_desc"),
        ("object_6", "not_an_object"),
        ("object_7", "extra_field"),
    ]
    assert "poly_points is 5, the poly has 4 points" in salvaged.dropped[2].detail


def test_malformed_json_loses_only_its_member():
    text = answer(BOX, QUAD, LINE).replace('"poly_points": 4,', '"poly_points": 4')
    salvaged = parse_dense(text, strict=False)
    assert [o.kind for o in salvaged.objects] == ["bbox_2d", "line"]
    assert [(d.where, d.reason) for d in salvaged.dropped] == [("object_2", "bad_json")]
    around = parse_dense("好的：\n" + answer(BOX, header="") + "\n以上", strict=False)
    assert len(around.objects) == 1 and [d.reason for d in around.dropped] == ["extra_text", "extra_text"]
    fenced = parse_dense(HEADER + "```json\n" + answer(BOX, header="") + "\n```", strict=False)
    assert len(fenced.objects) == 1 and fenced.dropped == ()
    cut = parse_dense(HEADER + "```json\n" + answer(BOX, header="")[:-1], strict=False)
    assert len(cut.objects) == 1 and [(d.where, d.reason) for d in cut.dropped] == [("answer", "truncated")]
    assert [d.reason for d in parse_dense(HEADER + "没有对象", strict=False).dropped] == ["bad_json"]


def test_salvage_never_raises_and_keeps_only_objects_strict_accepts(demo_records):
    rng = random.Random(17)
    texts = [dense_target(r) for r in demo_records]
    for _ in range(400):
        text = list(rng.choice(texts))
        for _ in range(rng.randint(1, 4)):  # delete, duplicate or replace a character
            at = rng.randrange(len(text))
            text[at : at + 1] = rng.choice([[], [text[at]] * 2, [rng.choice('{}[]",: 0123456789x')]])
        text = "".join(text)
        salvaged = parse_dense(text, strict=False)
        assert len(salvaged.spans) == len(salvaged.objects)
        for obj, span in zip(salvaged.objects, salvaged.spans):
            assert _strictly_alone(obj, salvaged.domain), obj
            assert _span_holds(text, span, obj), (text, span)


def _strictly_alone(obj: DenseObject, domain: str | None) -> bool:
    """Whether `obj`, written as the only object of an answer, passes strict under some allowed header."""
    entry = {obj.kind: list(obj.points), "desc": obj.desc}
    if obj.kind != "bbox_2d":
        entry[f"{obj.kind}_points"] = len(obj.points) // 2
    for header in [domain] if domain else ["BBU", "RRU"]:
        try:
            return parse_dense(answer(entry, header=f"<DOMAIN={header}>, <TASK=DETECTION>\n")).objects == (obj,)
        except AnswerError:
            continue
    return False


def _span_holds(text: str, span: tuple[int, int, int], obj: DenseObject) -> bool:
    """The span's value is the object's JSON, and its key (if any) a string then a colon."""
    key_start, value_start, value_end = span
    value = json.loads(text[value_start:value_end])
    if key_start == value_start:
        return value[obj.kind] == list(obj.points)
    key, colon = text[key_start:value_start].rstrip().rsplit(":", 1)
    return isinstance(json.loads(key), str) and not colon and value[obj.kind] == list(obj.points)


def test_salvage_gives_each_kept_object_its_place_in_the_text():
    text = answer(BOX, QUAD, LINE)
    salvaged = parse_dense(text, strict=False)
    assert [(text[k:v], text[v:e]) for k, v, e in salvaged.spans] == [
        (f'"object_{n}": ', json.dumps(obj, ensure_ascii=False, separators=JSON_SEPARATORS))
        for n, obj in enumerate((BOX, QUAD, LINE), 1)
    ]
    assert salvaged.spans[0][0] == len(HEADER) + 1  # offsets count the header and the opening brace
    assert parse_dense(text).spans == ()  # strict: objects only
    assert salvaged == parse_dense(text)  # spans are positions, not content


def test_spans_skip_what_salvage_drops_and_count_what_it_strips():
    member = json.dumps(BOX, ensure_ascii=False, separators=JSON_SEPARATORS)
    # A cut answer, a malformed and a wrong member, whitespace and a fence before the JSON, no header.
    texts = [
        answer(BOX, QUAD)[: answer(BOX, QUAD).index("类别=挡风板")],
        answer(_with(BOX, bbox_2d=[1, 2, 3]), BOX, LINE).replace('"line_points": 3,', '"line_points": 3'),
        " \n " + HEADER + "  ```json\n" + answer(BOX, header="") + "\n```",
        "好的：\n" + answer(BOX, header=""),
        HEADER + '{"object_1" :  ' + member + "}",
    ]
    for text in texts:
        salvaged = parse_dense(text, strict=False)
        assert len(salvaged.spans) == len(salvaged.objects) == 1, text
        key_start, value_start, value_end = salvaged.spans[0]
        assert text[value_start:value_end] == member, text
        assert re.fullmatch(r'"object_[12]"\s*:\s*', text[key_start:value_start]), text
    listed = HEADER + "[" + json.dumps({"bbox_2d": [1, 2, 3, 4], "desc": "类别=BBU设备"}, ensure_ascii=False) + "]"
    ((key_start, value_start, value_end),) = parse_dense(listed, strict=False).spans
    assert key_start == value_start == len(HEADER) + 1 and value_end == len(listed) - 1


# --- docs/answers.md worked examples ------------------------------------------------------------


def test_salvage_examples_in_the_docs_hold():
    text = (REPO / "docs" / "answers.md").read_text(encoding="utf-8")
    section = text.split("<!-- check: salvage -->", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    assert len(rows) >= 8
    for row in rows:
        body, strict, count, dropped = (cell.strip() for cell in row.strip().strip("|").split("|"))
        text = HEADER + body.strip("`")
        if strict == "ok":
            parse_dense(text)
        else:
            with pytest.raises(AnswerError) as err:
                parse_dense(text)
            assert f"`{err.value.rule}`" == strict, row
        salvaged = parse_dense(text, strict=False)
        assert len(salvaged.objects) == int(count), row
        assert [f"{d.where} {d.reason}" for d in salvaged.dropped] == re.findall(r"`([^`]+)`", dropped), row


# --- summaries and reflection JSON -----------------------------------------------------------------


def test_summary_readers():
    line = '{"统计": [{"类别": "BBU设备", "品牌": {"华为": 1}}], "备注": ["有遮挡"]}'
    assert summary_document(line)["备注"] == ["有遮挡"]
    assert summary_entries(line) == [{"类别": "BBU设备", "品牌": {"华为": 1}}]
    assert summary_entries("无关图片") == [] and summary_document("无关图片") is None
    assert summary_entries("BBU设备/华为×2") is None
    assert summary_entries('{"统计": {}}') is None and summary_entries("[1]") is None


def test_reflection_json_is_one_value_without_repeated_keys():
    assert decode_json_answer(' ```json\n{"a": [1, {"b": 2}]}\n``` ') == {"a": [1, {"b": 2}]}
    for text, rule in [('{"a": 1} x', "not_json"), ("", "not_json"), ('{"a": {"b": 1, "b": 2}}', "duplicate_field")]:
        with pytest.raises(AnswerError) as err:
            decode_json_answer(text)
        assert err.value.rule == rule
