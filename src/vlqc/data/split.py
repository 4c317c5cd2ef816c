"""Seeded train/val split at ticket level, and the tiny subsets.

All photos of one ticket land on the same side, so no image (and no ticket) is
in both splits and val tickets can be scored as whole tickets. Tickets are
stratified by (mission, label) so every mission keeps both labels in val.
"""

from __future__ import annotations

import random
from collections import defaultdict


def split_key(record: dict) -> tuple[str, str]:
    """(stratum, unit): a ticket for ticket-layout photos, else the photo itself."""
    ticket = record.get("ticket")
    if ticket:
        return f"{ticket['mission']}/{ticket['label']}", f"{ticket['mission']}/{ticket['label']}/{ticket['group_id']}"
    return "-", record["sample_id"]


def split_records(records: list[dict], val_fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    units_by_stratum: dict[str, set[str]] = defaultdict(set)
    for record in records:
        stratum, unit = split_key(record)
        units_by_stratum[stratum].add(unit)
    rng = random.Random(seed)
    val_units: set[str] = set()
    for stratum in sorted(units_by_stratum):
        units = sorted(units_by_stratum[stratum])
        rng.shuffle(units)
        n_val = round(len(units) * val_fraction)
        if len(units) >= 2:
            n_val = min(max(n_val, 1), len(units) - 1)
        val_units.update(units[:n_val])
    train = [r for r in records if split_key(r)[1] not in val_units]
    val = [r for r in records if split_key(r)[1] in val_units]
    return train, val


def tiny_subset(records: list[dict], n: int, seed: int) -> list[dict]:
    """A seeded sample of `n` records, kept in their original order."""
    if len(records) <= n:
        return list(records)
    keep = set(random.Random(seed).sample(range(len(records)), n))
    return [r for i, r in enumerate(records) if i in keep]
