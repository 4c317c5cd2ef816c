"""Schemas are valid 2020-12, the library and third-party validators agree on them."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, example_export
from jsonschema import Draft202012Validator

from vlqc.__main__ import main as vlqc_main
from vlqc.errors import SchemaError
from vlqc.jsonl import read_jsonl, write_jsonl
from vlqc.schemas import SCHEMA_DIR, available, problems, validate

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
