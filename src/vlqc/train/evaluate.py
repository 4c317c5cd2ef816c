"""How well a checkpoint learned the demo: the issue-3 quality bar, measured on val.

- summary exact match per photo (and the most-frequent-summary baseline),
- per-category object-count accuracy per photo,
- verdict accuracy per val ticket when the model is fed ground-truth summaries.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

from PIL import Image, ImageOps
from tqdm import tqdm

from vlqc.generation import Generator, Request, Sampling
from vlqc.prompts import category_count, summary_entries, summary_messages, strip_summary_header, verdict_messages
from vlqc.train.sft_data import group_tickets
from vlqc.verdict import parse_verdict


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


def batched(items: list, size: int):
    for start in range(0, len(items), size):
        yield items[start:start + size]


def evaluate(model_dir: Path, train: list[dict], val: list[dict], data_root: Path, missions: dict,
             max_pixels: int, batch_size: int = 8, max_new_tokens: int = 256) -> dict:
    started = time.perf_counter()
    generator = Generator(model_dir, max_pixels=max_pixels)
    greedy = Sampling(max_new_tokens=max_new_tokens)

    exact = matched = total = 0
    examples = []
    for chunk in tqdm(list(batched(val, batch_size)), desc="eval summaries", mininterval=5):
        requests = []
        for record in chunk:
            system, user = summary_messages(record.get("ticket", {}).get("mission"), record["domain"] or "BBU", missions)
            image = ImageOps.exif_transpose(Image.open(data_root / record["images"][0])).convert("RGB")
            requests.append(Request(system, user, [image]))
        for record, text in zip(chunk, generator.generate(requests, greedy)):
            predicted = strip_summary_header(text).strip()
            exact += predicted == record["summary"]
            m, t = count_agreement(record["summary"], predicted)
            matched, total = matched + m, total + t
            if len(examples) < 5:
                examples.append({"sample_id": record["sample_id"], "truth": record["summary"], "predicted": predicted})

    most_common, _ = Counter(r["summary"] for r in train).most_common(1)[0]
    baseline = sum(r["summary"] == most_common for r in val) / len(val)

    # Photos in the order training prompts used (natural order of file names).
    tickets = list(group_tickets(val).values())
    correct = invalid = 0
    for chunk in tqdm(list(batched(tickets, batch_size)), desc="eval verdicts", mininterval=5):
        requests = [
            Request(*verdict_messages(t.mission, None, [val[i]["summary"] for i in t.indices], missions))
            for t in chunk
        ]
        for ticket, text in zip(chunk, generator.generate(requests, greedy)):
            parsed = parse_verdict(text)
            invalid += parsed.verdict is None
            correct += parsed.verdict == ticket.label

    n_val = len(val)
    return {
        "model": str(model_dir),
        "val_photos": n_val,
        "val_tickets": len(tickets),
        "summary_exact_match": round(exact / n_val, 4),
        "most_frequent_summary_baseline": round(baseline, 4),
        "category_count_accuracy": round(matched / max(total, 1), 4),
        "verdict_accuracy_gt_summaries": round(correct / max(len(tickets), 1), 4),
        "verdict_invalid": invalid,
        "targets": {"summary_exact_match": 0.4, "summary_vs_baseline": 2.0, "category_count_accuracy": 0.8,
                    "verdict_accuracy_gt_summaries": 0.85},
        "examples": examples,
        "seconds": round(time.perf_counter() - started, 1),
    }
