"""End to end on the tiny model: the golden set, a golden dump of every saved step of both runs (LoRA adapters and
full models), reproduced exactly, and the diff of two dumps. The workflow is conftest's `trained` (steps 2 and 3)."""

from __future__ import annotations

import json
import runpy

import pytest
from conftest import REPO, TRAINED_STEPS
from workflow_env import snakemake

from vlqc.evaluation.golden import GOLDEN_FIELDS, golden_set, sha256
from vlqc.jsonl import read_jsonl

pytestmark = pytest.mark.e2e

ROWS = 6  # conftest.TRAINED_OVERLAY: eval.golden_rows
STEPS = (2, TRAINED_STEPS)


def qual(workdir, run: str, step: int):
    return workdir / f"results/train/sft/{run}/qual/step_{step}_golden{ROWS}.jsonl"


@pytest.fixture(scope="module")
def dumped(trained):
    """`snakemake golden`: the dumps of every saved step of every run (found through saved_steps)."""
    snakemake(trained, "--configfile", "e2e.yaml", "--", "golden")
    return trained


def test_the_golden_set_is_the_seeded_balanced_draw_of_the_candidates(dumped):
    candidates = list(read_jsonl(dumped / "results/eval/demo/candidates.jsonl", "eval_row"))
    golden = list(read_jsonl(dumped / f"results/eval/demo/golden{ROWS}.jsonl", "golden_row"))
    assert golden == golden_set(candidates, ROWS, seed=23, where="")  # eval.golden_seed's default
    assert {row["bucket"] for row in golden} == {"short", "medium", "long"}
    by_id = {row["id"]: row for row in candidates}
    assert all(row["gt_text"] == by_id[row["id"]]["messages"][2]["content"] for row in golden)


def test_every_saved_step_of_every_run_has_a_dump_of_the_golden_set(dumped):
    golden = list(read_jsonl(dumped / f"results/eval/demo/golden{ROWS}.jsonl", "golden_row"))
    for run in ("lora", "full"):
        assert sorted(p.name for p in qual(dumped, run, 2).parent.iterdir()) == [
            f"step_{step}_golden{ROWS}.jsonl" for step in STEPS
        ]
        for step in STEPS:
            rows = list(read_jsonl(qual(dumped, run, step), "golden_dump_row"))
            # The runs train with the default prompts, so the dump's rows are the golden rows as they are
            # (less the prompt spec, which only serves to reword them).
            assert [{key: row[key] for key in GOLDEN_FIELDS} for row in rows] == [
                {key: row[key] for key in GOLDEN_FIELDS} for row in golden
            ]
            assert all(row["pred_sha256"] == sha256(row["pred_text"]) for row in rows)
            log = dumped / f"results/logs/golden_dump/{run}/step_{step}_golden{ROWS}.log"
            assert "golden dump" in log.read_text()  # progress reaches the log
    lora, full = (list(read_jsonl(qual(dumped, run, TRAINED_STEPS))) for run in ("lora", "full"))
    assert [r["pred_sha256"] for r in lora] != [r["pred_sha256"] for r in full], "two runs, two models"
    plan = snakemake(dumped, "--configfile", "e2e.yaml", "-n", "--", "golden")
    assert "Nothing to be done" in plan.stdout + plan.stderr


def test_a_dump_is_reproduced_exactly_and_the_diff_lists_the_changed_answers(dumped, capsys):
    target = qual(dumped, "lora", 2)
    before = target.read_bytes()
    snakemake(dumped, "--configfile", "e2e.yaml", "--forcerun", "golden_dump", "--", str(target.relative_to(dumped)))
    assert target.read_bytes() == before
    a, b = qual(dumped, "lora", 2), qual(dumped, "lora", TRAINED_STEPS)
    diff = runpy.run_path(str(REPO / "scripts/golden_diff.py"))["main"]
    assert diff([str(a), str(b), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    old, new = list(read_jsonl(a)), list(read_jsonl(b))
    want = [x["id"] for x, y in zip(old, new) if x["pred_text"] != y["pred_text"]]
    assert doc["rows"] == ROWS and [row["id"] for row in doc["changed"]] == want
