"""Workflow hygiene: lint, formatting, per-rule conda envs pinned like the lock."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import yaml
from conftest import REPO

BIN = Path(sys.executable).parent
RULE_FILES = [REPO / "Snakefile", *sorted((REPO / "rules").glob("*.smk"))]


def run(*cmd, **kw):
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, **kw)


def rule_blocks():
    """(file, rule name, body) for every rule; a body runs to the next top-level statement."""
    for path in RULE_FILES:
        text = path.read_text(encoding="utf-8")
        for match in re.finditer(r"^(?:rule|checkpoint) (\w+):\n((?:[ \t]+.*\n|\n)*)", text, flags=re.M):
            yield path.name, match.group(1), match.group(2)


def lock_pins() -> dict[str, str]:
    pins = {}
    for line in (REPO / "requirements.lock").read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            name, version = line.split("==")
            pins[re.sub(r"[-_.]+", "-", name).lower()] = version.strip()
    return pins


def test_snakemake_lint_is_clean():
    result = run(str(BIN / "snakemake"), "--lint")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Congratulations" in result.stdout + result.stderr


def test_snakefmt_check_passes():
    result = run(str(BIN / "snakefmt"), "--check", "Snakefile", "rules")
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_job_rule_names_a_conda_env_that_exists():
    checked = 0
    for file, name, body in rule_blocks():
        if "shell:" not in body and "script:" not in body and "run:" not in body:
            continue  # target-only rules (all) run nothing
        match = re.search(r"conda:\s*\n\s*\"([^\"]+)\"", body)
        assert match, f"rule {name} in {file} names no conda env"
        assert (REPO / "rules" / match.group(1)).resolve().is_file(), f"rule {name}: {match.group(1)} missing"
        checked += 1
    assert checked >= 3


def test_env_pins_agree_with_the_lock():
    pins = lock_pins()
    for env_file in sorted((REPO / "envs").glob("*.yaml")):
        env = yaml.safe_load(env_file.read_text())
        pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
        assert pip, env_file
        for requirement in pip:
            name, version = requirement.split("==")
            key = re.sub(r"[-_.]+", "-", name).lower()
            assert pins.get(key) == version, f"{env_file.name}: {requirement} but lock has {pins.get(key)}"
        assert "python=3.11" in env["dependencies"], env_file


def test_unknown_config_key_fails_the_run_naming_its_dotted_path():
    result = run(str(BIN / "snakemake"), "-n", "--config", 'convert={"max_pixel": 3}')
    assert result.returncode != 0
    assert "convert.max_pixel: unknown key" in result.stdout + result.stderr


def test_stage_a_target_of_a_chinese_mission_plans_the_whole_chain(tmp_path):
    overlay = tmp_path / "overlay.yaml"
    overlay.write_text("stage_a: {sharding_mode: per_image, cpu_ranks: 2}\n", encoding="utf-8")
    result = run(
        str(BIN / "snakemake"), "-n", "--forceall", "results/挡风板安装检查_stage_a.jsonl", "--configfile", str(overlay)
    )
    assert result.returncode == 0, result.stderr[-2000:]
    plan = result.stdout
    for rule in (
        "demo_tickets",
        "train_sft",
        "merge_adapter",
        "stage_a_select",
        "stage_a_verify",
        "stage_a_infer",
        "stage_a_merge",
    ):
        assert re.search(rf"^rule {rule}:", plan, flags=re.M), rule
    for rank in (0, 1):
        assert f"results/stage_a/挡风板安装检查/挡风板安装检查_stage_a.images.rank{rank}.jsonl" in plan
    assert "--nproc_per_node=2 --max-restarts=0" in plan


def test_a_mission_not_in_the_missions_file_is_no_target():
    result = run(str(BIN / "snakemake"), "-n", "results/不存在的任务_stage_a.jsonl")
    assert result.returncode != 0
    assert (
        "MissingRuleException" in result.stdout + result.stderr or "No rule to produce" in result.stdout + result.stderr
    )


def planned_jobs(*args: str) -> dict[str, int]:
    """Job counts by rule of a dry run of everything the targets need."""
    result = run(str(BIN / "snakemake"), "-n", "--forceall", *args)
    assert result.returncode == 0, result.stdout + result.stderr
    return {m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)$", result.stdout, flags=re.M)}


def test_default_target_runs_stage_a_and_stage_b_of_every_demo_mission():
    missions = len(yaml.safe_load((REPO / "config/config.yaml").read_text(encoding="utf-8"))["demo"]["missions"])
    jobs = planned_jobs()
    assert jobs["stage_a_merge"] == jobs["stage_b_eval"] == missions and jobs["eval_sft"] == 1
    # With other tickets the demo missions' names mean nothing: the default target stops at the model.
    jobs = planned_jobs("--config", 'stage_a={"input_root": "/data/tickets"}')
    assert "stage_a_merge" not in jobs and "stage_b_eval" not in jobs and jobs["eval_sft"] == 1


def planned_inputs(*args: str) -> dict[str, set[str]]:
    """Rule → the inputs of its (last) job, from a dry run of everything the targets need."""
    result = run(str(BIN / "snakemake"), "-n", "--forceall", *args)
    assert result.returncode == 0, result.stdout + result.stderr
    blocks = re.finditer(r"^rule (\w+):\n((?:    .*\n)+)", result.stdout, flags=re.M)
    inputs = {}
    for block in blocks:
        line = re.search(r"^    input: (.*)$", block[2], flags=re.M)
        inputs[block[1]] = set(line[1].split(", ")) if line else set()
    return inputs


def test_jobs_that_read_a_training_config_have_its_parents_and_the_missions_file_as_inputs():
    inputs = planned_inputs("results/train/sft/demo/eval.json")
    # config/train/demo.yaml extends base.yaml: a job that reads one reads both.
    for rule in ("sft_dataset", "train_sft", "eval_sft"):
        assert {"config/train/demo.yaml", "config/train/base.yaml"} <= inputs[rule], rule
    for rule in ("demo_tickets", "sft_dataset", "eval_sft"):
        assert "config/missions.yaml" in inputs[rule], rule
    assert "results/data/demo/images" in inputs["eval_sft"]  # it opens the val photos
