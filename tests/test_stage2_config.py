"""The Stage-2 AB run kind (docs/stage2.md): the strict stage2_ab section and init_from of a training config, the
settings its trainer reads from VLQC_STAGE2_AB, what run.py launches and records, and the plan Snakemake makes of a
Stage-2 run (it starts from its init_from SFT run's merged model)."""

from __future__ import annotations

import json
import re
import subprocess
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import REPO
from workflow_env import BIN, copy_workflow

from vlqc.errors import SchemaError, VlqcError
from vlqc.jsonl import write_jsonl
from vlqc.schemas import defaults
from vlqc.train import run as train_run
from vlqc.train.config import STAGE2_ENV, is_stage2, load_train_config, stage2_env

DENSE = "data:\n  modes: {dense: 1.0, summary: 0, verdict: 0}\n"


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def stage2_config(folder: Path, text: str = "", name: str = "ab.yaml") -> Path:
    """A Stage-2 config: init_from, dense rows, then `text` (which may hold its own stage2_ab)."""
    return write(folder, name, "init_from: sft_run\n" + DENSE + textwrap.dedent(text))


# --- the config ------------------------------------------------------------------------------------------


def test_an_empty_stage2_ab_section_takes_every_default_from_the_schema(tmp_path):
    cfg = load_train_config(stage2_config(tmp_path, "stage2_ab: {}\n"))
    assert cfg["init_from"] == "sft_run" and is_stage2(cfg)
    assert cfg["stage2_ab"] == defaults("train_config", "stage2_ab")
    assert cfg["stage2_ab"] == {
        "b_ratio": 0.5,
        "rollout": {
            "backend": "hf",
            "max_new_tokens": 512,
            "seed": 0,
            "server": {"url": None, "timeout_s": 600, "connect_timeout_s": 300},
        },
        "matching": {"iou_threshold": 0.5, "line_threshold": 25},
        "dump": {"every": 0, "max_chars": 4000, "queue_size": 64, "min_free_mb": 512},
    }


def test_a_given_key_keeps_its_value_and_its_siblings_their_defaults(tmp_path):
    cfg = load_train_config(stage2_config(tmp_path, "stage2_ab: {rollout: {max_new_tokens: 64}, dump: {every: 2}}\n"))
    assert cfg["stage2_ab"]["rollout"] == {
        "backend": "hf",
        "max_new_tokens": 64,
        "seed": 0,
        "server": {"url": None, "timeout_s": 600, "connect_timeout_s": 300},
    }
    assert cfg["stage2_ab"]["dump"]["every"] == 2 and cfg["stage2_ab"]["dump"]["queue_size"] == 64


def test_an_sft_config_has_no_stage2_section_and_no_init_from(tmp_path):
    cfg = load_train_config(write(tmp_path, "sft.yaml", "{}\n"))
    assert cfg["init_from"] is None and "stage2_ab" not in cfg and not is_stage2(cfg)
    with pytest.raises(VlqcError, match="no stage2_ab section"):
        stage2_env(cfg, tmp_path, tmp_path / "train.jsonl", tmp_path, tmp_path)


def test_unknown_and_bad_keys_are_named_by_their_dotted_path_with_the_file(tmp_path):
    path = stage2_config(
        tmp_path,
        """\
        stage2_ab:
          b_ratio: 1.5
          rollout: {temprature: 0.7, backend: vllm}
          matching: {iou_threshold: 0}
          dump: {every: -1}
          channel: A
        """,
    )
    with pytest.raises(SchemaError) as error:
        load_train_config(path)
    message = str(error.value)
    assert str(path) in message
    for expected in (
        "stage2_ab.rollout.temprature: unknown key",
        "stage2_ab.channel: unknown key",
        "stage2_ab.b_ratio: 1.5 is greater than the maximum of 1",
        "stage2_ab.rollout.backend: 'vllm' is not one of ['hf', 'server']",
        "stage2_ab.matching.iou_threshold: 0 is less than or equal to the minimum of 0",
        "stage2_ab.dump.every: -1 is less than the minimum of 0",
    ):
        assert expected in message, expected


def test_stage2_ab_and_init_from_come_together(tmp_path):
    alone = write(tmp_path, "alone.yaml", DENSE + "stage2_ab: {}\n")
    with pytest.raises(
        SchemaError, match=rf"(?s){re.escape(str(alone))} does not match .*\n  stage2_ab: .*needs init_from"
    ):
        load_train_config(alone)
    orphan = write(tmp_path, "orphan.yaml", "init_from: sft_run\n")
    with pytest.raises(
        SchemaError, match=rf"(?s){re.escape(str(orphan))} does not match .*init_from: 'sft_run' makes this"
    ):
        load_train_config(orphan)
    with pytest.raises(SchemaError, match=r"init_from: 'a/b' does not match"):
        load_train_config(write(tmp_path, "slash.yaml", "init_from: a/b\n" + DENSE + "stage2_ab: {}\n"))


def test_a_stage2_run_trains_on_dense_rows_only(tmp_path):
    """Enforced, not defaulted: a config that extends one with other modes says so, with the fix."""
    write(tmp_path, "mixed.yaml", "data:\n  modes: {dense: 0.25, summary: 0.5, verdict: 0.25}\n")
    path = write(tmp_path, "ab.yaml", "extends: mixed.yaml\ninit_from: sft_run\nstage2_ab: {}\n")
    with pytest.raises(SchemaError) as error:
        load_train_config(path)
    assert "(merged with" in str(error.value) and str(path) in str(error.value)
    assert "data.modes: a Stage-2 AB run trains on dense rows only, not summary 0.5, verdict 0.25" in str(error.value)
    assert "set data.modes: {dense: 1.0, summary: 0, verdict: 0}" in str(error.value)
    with pytest.raises(SchemaError, match="data.recombined_verdicts: 4 verdict rows in a Stage-2 AB run"):
        load_train_config(stage2_config(tmp_path, "stage2_ab: {}\n", "rv.yaml"), {"data.recombined_verdicts": 4})


def test_server_rollouts_need_a_url_and_a_lora_run(tmp_path):
    path = stage2_config(tmp_path, "stage2_ab: {rollout: {backend: server}}\n")
    with pytest.raises(
        SchemaError, match="stage2_ab.rollout.server.url: backend server needs the rollout server's URL"
    ):
        load_train_config(path)
    with pytest.raises(SchemaError, match="syncs a LoRA adapter .* tuner.train_type is full"):
        load_train_config(path, {"stage2_ab.rollout.server.url": "http://127.0.0.1:8000", "tuner.train_type": "full"})
    cfg = load_train_config(path, {"stage2_ab.rollout.server.url": "http://127.0.0.1:8000"})
    assert cfg["stage2_ab"]["rollout"]["server"]["url"] == "http://127.0.0.1:8000"


def test_shipped_stage2_recipes_resolve_and_reload_from_their_resolved_json(tmp_path):
    recipe = load_train_config(REPO / "config/train/stage2_ab.yaml")
    assert recipe["stage2_ab"] == defaults("train_config", "stage2_ab") and recipe["init_from"] == "demo"
    assert recipe["tuner"]["train_type"] == "lora" and recipe["data"]["modes"]["dense"] > 0
    demo = load_train_config(REPO / "config/train/stage2_demo.yaml")
    assert (demo["stage2_ab"]["b_ratio"], demo["stage2_ab"]["rollout"]["max_new_tokens"]) == (0.5, 64)
    assert demo["training"]["max_steps"] == 4
    # The demo SFT run's pixel cap: Stage-2 sees images as SFT did.
    assert (
        demo["template"]["max_pixels"] == load_train_config(REPO / "config/train/demo.yaml")["template"]["max_pixels"]
    )
    resolved = tmp_path / "resolved_config.json"
    resolved.write_text(json.dumps(demo), encoding="utf-8")
    assert load_train_config(resolved) == demo


def test_the_trainer_settings_are_the_resolved_section_plus_an_absolute_dump_dir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = load_train_config(stage2_config(tmp_path, "stage2_ab: {b_ratio: 0.25, dump: {every: 3}}\n"))
    run = Path("results/train/stage2/ab")
    base = Path("results/train/sft/demo/merged")
    env = stage2_env(cfg, run / "rollouts", run / "swift/data/stage2_train.jsonl", run / "data", base)
    assert list(env) == [STAGE2_ENV] == ["VLQC_STAGE2_AB"]
    settings = json.loads(env[STAGE2_ENV])
    assert settings == {
        **cfg["stage2_ab"],
        "dump_dir": str(tmp_path / run / "rollouts"),
        "rows": str(tmp_path / run / "swift/data/stage2_train.jsonl"),
        "image_root": str(tmp_path / run / "data"),
        "base_model": str(tmp_path / base),
    }
    assert settings["b_ratio"] == 0.25 and settings["dump"]["every"] == 3


# --- run.py: what a Stage-2 job launches and records ----------------------------------------------------------


def test_launch_command_runs_the_module_it_is_given():
    command = train_run.launch_command(["--model", "m"], 2, use_gpu=False)
    assert command[command.index("--max-restarts=0") + 1 :][:2] == ["-m", "swift.cli.sft"]
    command = train_run.launch_command(["--model", "m"], 1, use_gpu=True, module=train_run.STAGE2_MODULE)
    assert command[-4:] == ["-m", "vlqc.train.stage2.main", "--model", "m"]


class Lengths:
    """The run's row lengths (vlqc.train.over_length.RowLengths) without a model: every prompt is 40 tokens."""

    def __call__(self, row: dict) -> int:
        return 100

    def prompt(self, row: dict) -> int:
        return 40


def dense_row() -> dict:
    return {
        "messages": [
            {"role": "system", "content": "你是通信安装质检员。"},
            {"role": "user", "content": "<image>检测图中所有对象。"},
            {"role": "assistant", "content": '<DOMAIN=BBU>, <TASK=DETECTION>\n{"objects": []}'},
        ],
        "images": ["images/source/demo/train/a.jpg"],
        "meta": {"mode": "dense", "epoch": 0, "split": "demo/train", "index": 0, "source": "s0"},
    }


@pytest.fixture
def stage2_job(tmp_path, monkeypatch):
    """train() of a Stage-2 config up to the launch, which is recorded (and fails, ending the job): the length
    gate against a base model of `positions` max_position_embeddings."""
    cfg_path = stage2_config(tmp_path, "global_max_length: 64\nstage2_ab: {rollout: {max_new_tokens: 60}}\n")
    data = tmp_path / "data"
    write_jsonl(data / "train.jsonl", [dense_row()] * 3, schema="sft_record")
    launched = {}

    def fake_run(command, env):
        launched.update(command=command, env=env)
        return subprocess.CompletedProcess(command, 3)

    monkeypatch.setattr(train_run, "length_counter", lambda base, data_dir, cfg: Lengths())
    monkeypatch.setattr(train_run, "fit_dataset", lambda d, w, b, cfg, count: (d / "train.jsonl", None, {}))
    monkeypatch.setattr(train_run, "subprocess", SimpleNamespace(run=fake_run))  # only run.py's launch

    def job(positions: int) -> tuple[Path, dict, str]:
        """The run folder, what was launched, and the job's error."""
        base = tmp_path / f"base{positions}"
        base.mkdir()
        config = {"text_config": {"max_position_embeddings": positions}}
        (base / "config.json").write_text(json.dumps(config), encoding="utf-8")
        out = tmp_path / "results/train/stage2/ab"
        with pytest.raises(VlqcError) as error:
            train_run.train(cfg_path, base, data, out, nproc=1, gpus=0, threads=1)
        return out, launched, str(error.value)

    return job


def test_a_stage2_job_runs_the_stage2_module_with_its_settings_and_records_them(stage2_job):
    out, launched, error = stage2_job(4096)
    assert "ms-swift training failed (exit 3)" in error
    assert launched["command"][launched["command"].index("-m", 3) + 1] == "vlqc.train.stage2.main"
    settings = json.loads(launched["env"]["VLQC_STAGE2_AB"])
    assert settings["dump_dir"] == str((out / "rollouts").resolve()) and settings["rollout"]["max_new_tokens"] == 60
    assert (out / "rollouts").is_dir() and not any((out / "rollouts").iterdir())
    metadata = json.loads((out / "run_metadata.json").read_text(encoding="utf-8"))
    assert metadata["init_from"] == "sft_run"
    assert metadata["stage2_env"] == {"VLQC_STAGE2_AB": launched["env"]["VLQC_STAGE2_AB"]}
    gate = metadata["length_gate"]
    assert (gate["max_position_embeddings"], gate["max_new_tokens"]) == (4096, 60)
    assert list(gate["files"].values()) == [{"rows": 3, "longest_prompt": 40}]


def test_a_stage2_job_whose_rows_leave_no_room_for_a_rollout_stops_before_launching(stage2_job):
    out, launched, error = stage2_job(99)
    assert "data/train.jsonl: 3 of 3 rows: row 0: prompt 40 + 60 = 100 tokens" in error and not launched
    assert not (out / "run_metadata.json").exists()
    out, launched, error = stage2_job(100)  # exactly enough
    assert "ms-swift training failed" in error and launched


# --- the plan: a Stage-2 run after its SFT run --------------------------------------------------------------


def dry_run(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / "snakemake"), "-n", "--forceall", "--cores", "2", *args],
        cwd=workdir,
        capture_output=True,
        text=True,
    )


def jobs(plan: str) -> dict[tuple[str, str], dict[str, str]]:
    """(rule, output) → the job's fields (input, output, wildcards, ...) of a dry run's plan."""
    found = {}
    for match in re.finditer(r"^(?:rule|checkpoint) (\w+):\n((?:    .*\n)+)", plan, flags=re.M):
        fields = dict(re.findall(r"^    (\w+): (.*)$", match[2], flags=re.M))
        found[match[1], fields.get("output", "").split(", ")[0]] = fields  # rule all has no output
    return found


@pytest.fixture(scope="module")
def workflow(tmp_path_factory) -> Path:
    """A workflow copy with a fresh Stage-2 config `ab` on the demo SFT run, named in the overlay e2e.yaml."""
    workdir = copy_workflow(tmp_path_factory.mktemp("stage2"))
    write(workdir / "config/train", "fresh_ab.yaml", "extends: stage2_demo.yaml\nstage2_ab: {b_ratio: 0.25}\n")
    write(workdir, "e2e.yaml", "train:\n  run: ab\n  stage2_runs: {ab: config/train/fresh_ab.yaml}\n")
    return workdir


def test_a_stage2_run_is_planned_after_its_sft_runs_merged_model(workflow):
    result = dry_run(workflow, "results/train/stage2/ab/eval.json", "--configfile", "e2e.yaml")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    plan = jobs(result.stdout)
    sft_merge = plan["merge_adapter", "results/train/sft/demo/merged"]
    assert sft_merge["input"] == "results/train/sft/demo/checkpoint, results/train/base/tiny"
    train = plan["train_stage2", "results/train/stage2/ab/checkpoint"]
    inputs = train["input"].split(", ")
    assert inputs[:2] == ["results/train/sft/demo/merged", "results/train/stage2/ab/data"]
    assert {"config/train/fresh_ab.yaml", "config/train/stage2_demo.yaml", "config/train/stage2_ab.yaml"} <= set(inputs)
    assert "results/train/stage2/ab/rollouts" in train["output"] and "results/train/stage2/ab/steps" in train["output"]
    assert "--base results/train/sft/demo/merged" in result.stdout and "--out results/train/stage2/ab " in result.stdout
    # Its adapter merges into the model it trained on; its eval reads its own merged model.
    merge = plan["merge_adapter", "results/train/stage2/ab/merged"]
    assert merge["input"] == "results/train/stage2/ab/checkpoint, results/train/sft/demo/merged"
    assert plan["eval_sft", "results/train/stage2/ab/eval.json"]["input"].startswith("results/train/stage2/ab/merged,")
    assert plan["sft_dataset", "results/train/stage2/ab/data"]["log"] == "results/logs/stage2_dataset/ab.log"
    assert ("train_sft", "results/train/sft/demo/checkpoint") in plan


def test_train_run_names_a_stage2_run_that_stage_a_then_serves(workflow):
    result = dry_run(workflow, "results/挡风板安装检查_stage_a.jsonl", "--configfile", "e2e.yaml")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    infer = next(fields for (rule, _), fields in jobs(result.stdout).items() if rule == "stage_a_infer")
    assert "results/train/stage2/ab/merged" in infer["input"].split(", ")


def test_the_default_target_builds_every_stage2_run(workflow):
    result = dry_run(workflow, "--configfile", "e2e.yaml")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert ("eval_sft", "results/train/stage2/ab/eval.json") in jobs(result.stdout)


@pytest.mark.parametrize(
    ("overlay", "message"),
    [
        (
            "train: {stage2_runs: {ab: config/train/fresh_ab.yaml}, runs: {lora: config/train/lora.yaml}, run: lora}",
            "train.stage2_runs.ab (config/train/fresh_ab.yaml): init_from 'demo' is no SFT run of train.runs (lora)",
        ),
        (
            "train: {runs: {demo: config/train/demo.yaml, ab: config/train/fresh_ab.yaml}}",
            "train.runs.ab (config/train/fresh_ab.yaml): a Stage-2 AB config (init_from, stage2_ab): name it under "
            "train.stage2_runs",
        ),
        ("train: {stage2_runs: {demo: config/train/fresh_ab.yaml}}", "'demo' is named in both train.runs and"),
        ("train: {run: nope}", "train.run: 'nope' is no run of train.runs or train.stage2_runs"),
    ],
)
def test_a_misnamed_run_fails_the_plan_naming_it(workflow, overlay, message):
    (workflow / "bad.yaml").write_text(overlay + "\n", encoding="utf-8")
    result = dry_run(workflow, "results/train/sft/demo/data", "--configfile", "bad.yaml")
    assert result.returncode != 0 and message in result.stdout + result.stderr


def test_an_sft_run_is_no_stage2_target(workflow):
    result = dry_run(workflow, "results/train/stage2/demo/merged")
    assert result.returncode != 0
    assert "results/train/stage2/demo: 'demo' is no stage2 run of train" in result.stdout + result.stderr
