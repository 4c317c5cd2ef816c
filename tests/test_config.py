"""Config and missions validation: defaults from the schema, unknown keys by dotted path."""

from __future__ import annotations

import copy

import pytest
import yaml
from conftest import REPO
from snakemake.utils import validate as snakemake_validate

from vlqc.errors import SchemaError
from vlqc.schemas import check, defaults, problems, schema_path, section


def load(name: str):
    return yaml.safe_load((REPO / "config" / name).read_text(encoding="utf-8"))


def test_shipped_config_and_missions_are_valid():
    check(load("config.yaml"), "config", "config.yaml")
    missions = load("missions.yaml")
    check(missions, "missions", "missions.yaml")
    assert len(missions) == 7
    assert {m["domain"] for m in missions.values()} == {"bbu", "rru"}
    assert "BBU安装方式检查（正装）" in missions


def test_snakemake_validate_fills_defaults_from_the_schema():
    config = {}
    snakemake_validate(config, str(schema_path("config")))
    assert config["convert"]["mode"] == "fail_fast"
    assert config["demo"]["missions"][0] == "挡风板安装检查"
    assert config["datasets"] == {"demo": {"root": "resources/demo/tickets"}}
    # The library fills a section as Snakemake fills the config: scripts run by hand get the same values.
    assert config == defaults("config")
    partial = {"stage_a": {"batch_size": 3}, "stage_b": {"gate": {"patience": 1}}}
    snakemake_validate(partial, str(schema_path("config")))
    assert partial["stage_a"] == section("config", "stage_a", {"batch_size": 3}, "test")
    assert partial["stage_b"]["gate"] == section("config", "stage_b.gate", {"patience": 1}, "test")


def test_unknown_keys_are_reported_with_dotted_paths_all_at_once():
    config = copy.deepcopy(load("config.yaml"))
    config["convert"]["max_pixel"] = 5
    config["datasets"]["demo"]["rooot"] = "x"
    config["colour"] = "blue"
    found = problems(config, "config")
    assert "convert.max_pixel: unknown key" in found
    assert "datasets.demo.rooot: unknown key" in found
    assert "colour: unknown key" in found
    with pytest.raises(SchemaError, match=r"convert\.max_pixel: unknown key"):
        check(config, "config", "config.yaml")


def test_wrong_type_names_its_path():
    config = copy.deepcopy(load("config.yaml"))
    config["convert"]["mode"] = "sloppy"
    assert any(p.startswith("convert.mode:") for p in problems(config, "config"))


def test_mission_without_fail_conditions_is_rejected():
    missions = load("missions.yaml")
    del missions["BBU接地线检查"]["fail_conditions"]
    assert any(p.startswith("BBU接地线检查:") and "fail_conditions" in p for p in problems(missions, "missions"))


def test_load_missions_names_the_file_on_bad_content(tmp_path):
    from vlqc.missions import load_missions

    assert "挡风板安装检查" in load_missions(REPO / "config" / "missions.yaml")
    bad = tmp_path / "missions.yaml"
    bad.write_text("挡风板安装检查: {domain: bbu}\n", encoding="utf-8")
    with pytest.raises(SchemaError, match=r"(?s)missions\.yaml.*fail_conditions"):
        load_missions(bad)
    bad.write_text("a: [unclosed\n", encoding="utf-8")
    with pytest.raises(SchemaError, match=r"cannot read missions file .*missions\.yaml"):
        load_missions(bad)
