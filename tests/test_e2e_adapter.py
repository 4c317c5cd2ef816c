"""End to end on the tiny model: the LoRA adapter folder that ms-swift saved for the `lora` run of the shared
trained workflow (conftest `trained`) serves Stage-A without a merge step, through scripts/stage_a_infer.py as
the rule runs it, and summarises every photo exactly as the run's merged folder does (docs/stage-a.md#checkpoint).
"""

from __future__ import annotations

import json
import runpy
from pathlib import Path

import pytest
from conftest import REPO

from vlqc.jsonl import read_json, read_jsonl
from vlqc.stage_a.discover import discover, sample_groups
from vlqc.stage_a.jobs import write_selection

pytestmark = pytest.mark.e2e

MISSION = "挡风板安装检查"
SETTINGS = {"max_new_tokens": 32, "batch_size": 4}


def stage_a(trained: Path, tmp_path: Path, name: str, checkpoint: Path, selection: Path) -> tuple[list, dict]:
    """One Stage-A rank (world 1) over `selection`: its rows and its run manifest's metadata."""
    main = runpy.run_path(str(REPO / "scripts" / "stage_a_infer.py"))["main"]
    argv = [
        *("--selection", str(selection), "--mission", MISSION, "--missions", str(trained / "config/missions.yaml")),
        *("--checkpoint", str(checkpoint), "--out", str(tmp_path / f"{name}.rank{{rank}}.jsonl")),
        *("--resume-dir", str(tmp_path / name / "resume"), "--manifest-dir", str(tmp_path / name)),
        *("--settings", json.dumps(SETTINGS)),
    ]
    assert main(argv) == 0
    rows = list(read_jsonl(tmp_path / f"{name}.rank0.jsonl", schema="stage_a_image_row"))
    return rows, read_json(tmp_path / name / "run_metadata.json", schema="run_metadata")


def test_the_lora_adapter_folder_summarises_as_its_merged_folder(trained, tmp_path, monkeypatch):
    for variable in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(variable, raising=False)
    run = trained / "results/train/sft/lora"
    adapter = run / "checkpoint"
    assert (adapter / "adapter_config.json").is_file() and not (adapter / "config.json").exists()
    groups = sample_groups(discover(trained / "resources/demo/tickets", MISSION), 1, 1, seed=0)
    selection = tmp_path / "selection.jsonl"
    write_selection(selection, groups)

    merged_rows, merged_meta = stage_a(trained, tmp_path, "merged", run / "merged", selection)
    adapter_rows, adapter_meta = stage_a(trained, tmp_path, "adapter", adapter, selection)
    assert len(adapter_rows) == sum(len(g.images) for g in groups) >= 2
    assert adapter_rows == merged_rows  # summaries and failures alike, text for text
    # The base came from the adapter's own adapter_config.json; the manifest names both.
    assert merged_meta["checkpoint"]["kind"] == "model" and merged_meta["checkpoint"]["base"] is None
    identity = adapter_meta["checkpoint"]
    assert identity["kind"] == "lora_adapter"
    assert Path(identity["base"]["path"]).resolve() == (trained / "results/train/base/tiny").resolve()
