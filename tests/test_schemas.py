"""Schemas are valid 2020-12, the library and third-party validators agree on them, the fast
path (fastjsonschema) accepts exactly what jsonschema accepts, and config sections get their
defaults from the schema."""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, example_export
from jsonschema import Draft202012Validator
from schema_instances import instances, mutations

from vlqc.__main__ import main as vlqc_main
from vlqc.errors import SchemaError
from vlqc.jsonl import read_jsonl, write_jsonl
from vlqc.schemas import (
    SCHEMA_DIR,
    available,
    defaults,
    fast_check,
    load,
    problems,
    section,
    validate,
    validator,
)

BIN = Path(sys.executable).parent


@pytest.mark.parametrize("name", available())
def test_schema_is_valid_draft_2020_12(name):
    schema = json.loads((SCHEMA_DIR / f"{name}.schema.json").read_text(encoding="utf-8"))
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    Draft202012Validator.check_schema(schema)


def test_expected_schemas_exist():
    assert {
        "config",
        "missions",
        "export_markresult",
        "export_datalist",
        "sample",
        "invalid_sample",
        "invalid_object",
        "validation_summary",
        "label_vocabulary",
    } <= set(available())


def test_writer_refuses_invalid_records_and_leaves_no_file(tmp_path):
    path = tmp_path / "bad.jsonl"
    with pytest.raises(SchemaError, match=r"record 2: reason:"):
        write_jsonl(
            path,
            [{"source": "a", "reason": "x", "message": ""}, {"source": "b", "reason": "Bad Code", "message": ""}],
            schema="invalid_sample",
        )
    assert list(tmp_path.iterdir()) == []


def test_reader_names_file_line_and_path(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text('{"source": "a", "reason": "x", "message": ""}\n{"source": "a", "reason": 3, "message": ""}\n')
    with pytest.raises(SchemaError, match=r"rows\.jsonl:2: reason:"):
        list(read_jsonl(path, schema="invalid_sample"))


def test_cli_validate_ok_and_invalid(tmp_path, capsys):
    good = tmp_path / "export.json"
    good.write_text(json.dumps(example_export(), ensure_ascii=False), encoding="utf-8")
    assert vlqc_main(["validate", str(good), "--schema", "export_markresult"]) == 0
    assert "ok:" in capsys.readouterr().out
    bad = example_export()
    bad["info"]["width"] = "wide"
    good.write_text(json.dumps(bad), encoding="utf-8")
    assert vlqc_main(["validate", str(good), "--schema", "export_markresult"]) == 1
    assert "info.width:" in capsys.readouterr().err
    assert vlqc_main(["validate", str(REPO / "config" / "missions.yaml"), "--schema", "missions"]) == 0


def test_check_jsonschema_cli_accepts_our_schemas(tmp_path):
    tool = shutil.which("check-jsonschema", path=str(BIN))
    assert tool, "check-jsonschema is part of the lock"
    export = tmp_path / "export.json"
    export.write_text(json.dumps(example_export(), ensure_ascii=False), encoding="utf-8")
    ok = subprocess.run(
        [tool, "--schemafile", str(SCHEMA_DIR / "export_markresult.schema.json"), str(export)],
        capture_output=True,
        text=True,
    )
    assert ok.returncode == 0, ok.stdout + ok.stderr
    config = subprocess.run(
        [tool, "--schemafile", str(SCHEMA_DIR / "config.schema.json"), str(REPO / "config" / "config.yaml")],
        capture_output=True,
        text=True,
    )
    assert config.returncode == 0, config.stdout + config.stderr
    bad = example_export()
    del bad["info"]
    export.write_text(json.dumps(bad), encoding="utf-8")
    failed = subprocess.run(
        [tool, "--schemafile", str(SCHEMA_DIR / "export_markresult.schema.json"), str(export)],
        capture_output=True,
        text=True,
    )
    assert failed.returncode == 1 and "info" in failed.stdout + failed.stderr


def test_validate_helper_names_the_location():
    with pytest.raises(SchemaError, match=r"^here: <top level>: 'info' is a required property"):
        validate({"markResult": {"features": []}}, "export_markresult", "here")


def test_problems_names_keys_that_match_no_property_pattern():
    record = {
        "group_id": "g",
        "mission": "m",
        "label": "pass",
        "images": ["a.jpg"],
        "per_image": {"image_1": "无关图片", "photo_2": "无关图片"},
    }
    assert problems(record, "stage_a_group") == ["per_image.photo_2: unknown key"]


# --- the fast path ---------------------------------------------------------------------------------

COMPILED = [name for name in available() if fast_check(name) is not None]


def test_every_schema_is_compiled_but_those_that_draft_7_cannot_say():
    # unevaluatedProperties has no draft-7 spelling; these two are validated by jsonschema alone.
    assert sorted(set(available()) - set(COMPILED)) == ["stage_b_group_report", "stage_b_group_report_delta"]


def _ends_in_newline(doc) -> bool:
    if isinstance(doc, str):
        return doc.endswith("\n")
    if isinstance(doc, dict):
        return any(_ends_in_newline(k) or _ends_in_newline(v) for k, v in doc.items())
    return isinstance(doc, list) and any(map(_ends_in_newline, doc))


@pytest.mark.parametrize("name", COMPILED)
def test_fast_path_accepts_exactly_what_jsonschema_accepts(name):
    docs = instances(load(name), seed=len(name), n=10)
    assert len(docs) == 10, "the instance generator no longer reaches this schema"
    fast, exact = fast_check(name), validator(name)
    rng = random.Random(name)
    verdicts = {True: 0, False: 0}
    for doc in docs:
        assert fast(doc), doc
        for near in mutations(doc, rng):
            valid = exact.is_valid(near)
            verdicts[valid] += 1
            if fast(near) != valid:
                # The one known difference: fastjsonschema reads `$` as the very end, Python's `re`
                # (and so jsonschema) also before a final newline. The fast path is then stricter,
                # and a document it rejects goes to jsonschema, which decides.
                assert valid and _ends_in_newline(near), near
    assert verdicts[True] and verdicts[False] > 20, verdicts


def test_validate_decides_as_jsonschema_where_the_fast_path_is_stricter():
    row = {"source": "a.json", "reason": "bad_code\n", "message": ""}
    assert not fast_check("invalid_sample")(row) and validator("invalid_sample").is_valid(row)
    validate(row, "invalid_sample")  # accepted, as jsonschema accepts it


def test_fast_path_applies_the_siblings_of_a_ref():
    # sft_record: {"$ref": message, "properties": {"role": {"const": "system"}}}; draft 7 would drop the const.
    [doc] = instances(load("sft_record"), seed=3, n=1)
    doc["messages"][0]["role"] = "user"
    assert not validator("sft_record").is_valid(doc) and not fast_check("sft_record")(doc)


# --- defaults and sections ---------------------------------------------------------------------------


def test_defaults_of_a_section_come_from_the_schema_nested_ones_too():
    stage_b = defaults("config", "stage_b")
    properties = load("config")["properties"]["stage_b"]["properties"]
    assert stage_b["batch_size"] == properties["batch_size"]["default"]
    assert stage_b["gate"]["patience"] == properties["gate"]["properties"]["patience"]["default"]
    assert defaults("config", "stage_b.gate") == stage_b["gate"]
    with pytest.raises(SchemaError, match="no section 'convert.colour'"):
        defaults("config", "convert.colour")


def test_section_checks_under_the_full_dotted_path_and_fills_defaults():
    filled = section("config", "convert", {"max_pixels": 65536}, "--settings")
    assert filled == {**defaults("config", "convert"), "max_pixels": 65536}
    with pytest.raises(SchemaError) as error:
        section("config", "convert", {"max_pixel": 3, "mode": "sloppy"}, "--settings")
    assert str(error.value).startswith("--settings does not match schema config:")
    assert "convert.max_pixel: unknown key" in str(error.value) and "convert.mode: 'sloppy'" in str(error.value)
    with pytest.raises(SchemaError, match=r"stage_b\.gate: \[\] is not of type 'object'"):
        section("config", "stage_b.gate", [], "--settings")
