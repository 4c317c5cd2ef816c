"""The demo quality bar's scoring: exact match, category counts, and the prior baselines."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import REPO

from vlqc.train.evaluate import count_agreement, prior_baselines, summary_scores, targets_met


def summary(**counts: int) -> str:
    """A summary JSON with one entry per category, `n` objects each (all 完整)."""
    entries = [{"类别": name, "可见性": {"完整": n}} for name, n in counts.items()]
    return json.dumps({"统计": entries}, ensure_ascii=False, separators=(", ", ": "))


def photo(mission: str, label: str, group: str, n: int, text: str) -> dict:
    return {
        "images": [f"images/{mission}/{group}_{n}.jpg"],
        "summary": text,
        "ticket": {"mission": mission, "label": label, "group_id": group},
    }


def test_count_agreement_counts_categories_of_either_side():
    truth = summary(BBU设备=2, 挡风板=1)
    assert count_agreement(truth, truth) == (2, 2)
    assert count_agreement(truth, summary(BBU设备=2)) == (1, 2)  # 挡风板 missed
    assert count_agreement(truth, summary(BBU设备=1, 挡风板=1, 标签=1)) == (1, 3)  # wrong count, extra category
    assert count_agreement(truth, "not json") == (0, 2)


def test_summary_scores_sums_over_photos():
    truths = [summary(BBU设备=1), summary(BBU设备=2, 挡风板=1)]
    predictions = [summary(BBU设备=1), summary(BBU设备=2, 挡风板=2)]
    assert summary_scores(truths, predictions) == (1, 2, 3)


def test_prior_baselines_answer_from_the_mission_alone():
    a, b = "挡风板安装检查", "BBU接地线检查"
    one, two, three = summary(BBU设备=1), summary(BBU设备=2), summary(电线=1)
    train = [
        *(photo(a, "pass", "T1", n, one) for n in (1, 2, 3)),
        photo(a, "fail", "T2", 1, two),
        photo(a, "pass", "T5", 1, two),
        photo(b, "fail", "T3", 1, three),
        *(photo(b, "pass", "T4", n, three) for n in (1, 2, 3)),
    ]
    # Summary priors: a → one (3 of 5), b → three, any other mission → three (4 of 9 overall).
    # Label priors: a → pass (2 tickets of 3), b → a tie, so fail; any other mission → fail.
    val = [
        photo(a, "pass", "V1", 1, one),  # exact; verdict right
        photo(a, "fail", "V2", 1, two),  # BBU设备 count wrong; verdict wrong
        photo(b, "fail", "V3", 1, one),  # both categories wrong; verdict right
        photo("BBU安装方式检查（正装）", "pass", "V4", 1, three),  # exact; verdict wrong
    ]
    assert prior_baselines(train, val) == {
        "summary_exact_match": 0.5,
        "category_count_accuracy": 0.4,
        "verdict_accuracy_gt_summaries": 0.5,
    }


def test_targets_met_needs_every_bar_and_a_real_win_over_the_baseline():
    scores = {"summary_exact_match": 0.4, "category_count_accuracy": 0.8, "verdict_accuracy_gt_summaries": 0.85}
    assert all(targets_met(scores, baseline=0.2).values())
    assert targets_met(scores, baseline=0.21)["summary_vs_baseline"] is False
    low = {**scores, "category_count_accuracy": 0.79}
    assert targets_met(low, 0.1) == {
        "summary_exact_match": True,
        "category_count_accuracy": False,
        "verdict_accuracy_gt_summaries": True,
        "summary_vs_baseline": True,
    }
    assert targets_met({**scores, "summary_exact_match": 0.0}, baseline=0.0)["summary_vs_baseline"] is False


def test_eval_script_names_an_empty_val_split(tmp_path):
    val = tmp_path / "val.jsonl"
    val.write_text("")
    result = subprocess.run(
        [
            sys.executable,
            "scripts/eval_sft.py",
            "--model",
            str(tmp_path / "no-model"),
            "--config",
            "config/train/demo.yaml",
            "--train",
            str(val),
            "--val",
            str(val),
            "--missions",
            "config/missions.yaml",
            "--out",
            str(tmp_path / "eval.json"),
            "--settings",
            "{}",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 1
    assert f"error: {val}: no photos to evaluate on" in result.stderr
    assert not (tmp_path / "eval.json").exists()
