"""Length buckets of eval rows and the balanced draw of an eval (or golden) set (docs/evaluation.md).

`label_len` is the token count of a row's assistant target; thresholds [a, b] split it into
short < a ≤ medium < b ≤ long. A draw of n rows takes n/3 per bucket (the remainder goes to the
first buckets); a bucket with too few rows gives all it has and the next one (short → medium →
long, then back to short) fills the gap.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

BUCKETS = ("short", "medium", "long")


def bucket_of(label_len: int, thresholds: Sequence[int]) -> str:
    short_below, long_from = thresholds
    if not short_below <= long_from:
        raise ValueError(f"length bucket thresholds must be [a, b] with a ≤ b, got {list(thresholds)}")
    if label_len < short_below:
        return "short"
    if label_len < long_from:
        return "medium"
    return "long"


def bucket_quotas(available: Sequence[int], n: int) -> list[int]:
    """Rows to take per bucket: equal thirds of n (remainder in bucket order); a bucket's shortfall
    moves to the next bucket, around the ring, until every quota fits (n is capped at the total)."""
    if n < 0:
        raise ValueError(f"cannot draw a negative number of rows ({n})")
    n = min(n, sum(available))
    quotas = [n // len(BUCKETS) + (1 if i < n % len(BUCKETS) else 0) for i in range(len(BUCKETS))]
    while any(q > a for q, a in zip(quotas, available)):
        for i, have in enumerate(available):
            excess = quotas[i] - have
            if excess > 0:
                quotas[i] = have
                quotas[(i + 1) % len(BUCKETS)] += excess
    return quotas


def balanced_draw(rows: Sequence[dict], n: int, seed: int) -> list[dict]:
    """n rows balanced across buckets (each row has a "bucket" key), drawn with `seed`. The result is
    grouped by bucket (BUCKETS order) and keeps the input order inside a bucket, so the same rows and
    seed always give the same list."""
    by_bucket: dict[str, list[int]] = {bucket: [] for bucket in BUCKETS}
    for index, row in enumerate(rows):
        if row["bucket"] not in by_bucket:
            raise ValueError(f"row {row.get('id', index)!r}: unknown bucket {row['bucket']!r} (one of {BUCKETS})")
        by_bucket[row["bucket"]].append(index)
    quotas = bucket_quotas([len(by_bucket[b]) for b in BUCKETS], n)
    rng = random.Random(seed)
    drawn = []
    for bucket, quota in zip(BUCKETS, quotas):
        drawn += sorted(rng.sample(by_bucket[bucket], quota))
    return [rows[i] for i in drawn]
