"""How well a checkpoint learned the demo: the issue-3 quality bar, measured on val.

- summary exact match per photo (and the most-frequent-summary baseline),
- per-category object-count accuracy per photo,
- verdict accuracy per val ticket when the model is fed ground-truth summaries.

Each metric also gets a baseline that never looks at a photo or a summary: the mission's most
frequent train summary for the photo metrics, the mission's most frequent train label (ties: fail,
as the fail-first guardrails) for verdicts. A model that does not beat them has learned the
answer format and the priors, nothing from its input.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

from PIL import Image, ImageOps
from tqdm import tqdm

from vlqc.inference.answers import parse_verdict, strip_summary_header, summary_entries
from vlqc.inference.generation import Generator, Request, Sampling
from vlqc.inference.profiles import PromptConfig
from vlqc.inference.prompts import category_count, summary_messages, verdict_messages
from vlqc.schemas import defaults
from vlqc.train.sft_data import Ticket, group_tickets

TARGETS = {"summary_exact_match": 0.4, "category_count_accuracy": 0.8, "verdict_accuracy_gt_summaries": 0.85}
SUMMARY_VS_BASELINE = 2.0  # exact match must also be at least this multiple of the most-frequent-summary baseline


def category_counts(summary: str) -> dict[str, int] | None:
    entries = summary_entries(summary)
    return None if entries is None else {e["类别"]: category_count(e) for e in entries}


def count_agreement(truth: str, predicted: str) -> tuple[int, int]:
    """(matching, total) over the categories in either summary; unparseable → all wrong."""
    want, got = category_counts(truth) or {}, category_counts(predicted)
    keys = set(want) | set(got or {})
    if got is None:
        return 0, max(len(keys), 1)
    return sum(want.get(k) == got.get(k) for k in keys), len(keys)


def summary_scores(truths: list[str], predictions: list[str]) -> tuple[int, int, int]:
    """(exact matches, matching categories, categories) of predicted summaries against the truths."""
    exact = matched = total = 0
    for truth, predicted in zip(truths, predictions, strict=True):
        exact += predicted == truth
        m, t = count_agreement(truth, predicted)
        matched, total = matched + m, total + t
    return exact, matched, total


def bar_scores(val: list[dict], tickets: list[Ticket], predictions: list[str], verdicts: list[str | None]) -> dict:
    """The three metrics of the bar: a predicted summary per val photo, a verdict per ticket of `tickets`."""
    exact, matched, total = summary_scores([r["summary"] for r in val], predictions)
    right = sum(verdict == ticket.label for verdict, ticket in zip(verdicts, tickets, strict=True))
    return {
        "summary_exact_match": round(exact / len(val), 4),
        "category_count_accuracy": round(matched / max(total, 1), 4),
        "verdict_accuracy_gt_summaries": round(right / max(len(tickets), 1), 4),
    }


def targets_met(scores: dict[str, float], baseline: float) -> dict[str, bool]:
    """Per target, whether `scores` reach it; `baseline` is the most-frequent-summary exact match."""
    met = {name: scores[name] >= goal for name, goal in TARGETS.items()}
    # Zero exact matches beat nothing, even a baseline of zero.
    met["summary_vs_baseline"] = 0 < scores["summary_exact_match"] >= SUMMARY_VS_BASELINE * baseline
    return met


def _most_frequent_summary(records: list[dict]) -> str:
    return Counter(r["summary"] for r in records).most_common(1)[0][0]


def _mission(record: dict) -> str | None:
    return record.get("ticket", {}).get("mission")


def prior_baselines(train: list[dict], val: list[dict]) -> dict[str, float]:
    """The metrics of answering from the mission alone (see the module docstring)."""
    overall = _most_frequent_summary(train)
    by_mission: dict[str | None, Counter] = {}
    for record in train:
        by_mission.setdefault(_mission(record), Counter())[record["summary"]] += 1
    summary_prior = {mission: counts.most_common(1)[0][0] for mission, counts in by_mission.items()}
    labels: dict[str, Counter] = {}
    for ticket in group_tickets(train).values():
        labels.setdefault(ticket.mission, Counter())[ticket.label] += 1
    label_prior = {mission: max(("fail", "pass"), key=lambda label: c[label]) for mission, c in labels.items()}
    tickets = list(group_tickets(val).values())
    return bar_scores(
        val,
        tickets,
        [summary_prior.get(_mission(r), overall) for r in val],
        [label_prior.get(t.mission, "fail") for t in tickets],
    )


# eval_* of the config schema's `train` section are the one home of these defaults.
DEFAULTS = defaults("config", "train")


def batched(items: list, size: int):
    for start in range(0, len(items), size):
        yield items[start : start + size]


def evaluate(
    model_dir: Path,
    train: list[dict],
    val: list[dict],
    data_root: Path,
    missions: dict,
    max_pixels: int,
    batch_size: int = DEFAULTS["eval_batch_size"],
    max_new_tokens: int = DEFAULTS["eval_max_new_tokens"],
    prompts: PromptConfig | None = None,
) -> dict:
    started = time.perf_counter()
    generator = Generator(model_dir, max_pixels=max_pixels)
    greedy = Sampling(max_new_tokens=max_new_tokens)

    predictions = []
    for chunk in tqdm(list(batched(val, batch_size)), desc="eval summaries", mininterval=5):
        requests = []
        for record in chunk:
            system, user = summary_messages(_mission(record), record["domain"] or "BBU", missions, prompts=prompts)
            image = ImageOps.exif_transpose(Image.open(data_root / record["images"][0])).convert("RGB")
            requests.append(Request(system, user, [image]))
        predictions += [strip_summary_header(text).strip() for text in generator.generate(requests, greedy)]
    examples = [
        {"sample_id": r["sample_id"], "truth": r["summary"], "predicted": p} for r, p in zip(val[:5], predictions)
    ]

    most_common = _most_frequent_summary(train)
    baseline = sum(r["summary"] == most_common for r in val) / len(val)

    # Photos in the order training prompts used (natural order of file names).
    tickets = list(group_tickets(val).values())
    verdicts = []
    for chunk in tqdm(list(batched(tickets, batch_size)), desc="eval verdicts", mininterval=5):
        requests = [
            Request(
                *verdict_messages(t.mission, None, [val[i]["summary"] for i in t.indices], missions, prompts=prompts)
            )
            for t in chunk
        ]
        verdicts += [parse_verdict(text).verdict for text in generator.generate(requests, greedy)]

    scores = bar_scores(val, tickets, predictions, verdicts)
    return {
        "model": str(model_dir),
        "val_photos": len(val),
        "val_tickets": len(tickets),
        **scores,
        "most_frequent_summary_baseline": round(baseline, 4),
        "verdict_invalid": verdicts.count(None),
        "targets": {**TARGETS, "summary_vs_baseline": SUMMARY_VS_BASELINE},
        "target_met": targets_met(scores, baseline),
        "prior_baselines": prior_baselines(train, val),
        "examples": examples,
        "seconds": round(time.perf_counter() - started, 1),
    }
