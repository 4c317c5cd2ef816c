"""Stage-A records from the canonical samples' ground-truth summaries, in place of a model's.

This is Stage-B's input as a perfect Stage-A would write it: Stage-B's end-to-end test and its
benchmark use it to exercise Stage-B alone.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from vlqc.tickets import natural_key


def ground_truth_records(samples: Iterable[Mapping[str, Any]], mission: str) -> list[dict[str, Any]]:
    """One `stage_a_group` record per ticket of `mission`, sorted by (group_id, label), its photos in
    discovery (natural) order. Samples outside the ticket layout (no `ticket`) belong to no ticket."""
    tickets: dict[tuple[str, str], list[Mapping[str, Any]]] = defaultdict(list)
    for sample in samples:
        ticket = sample.get("ticket")
        if ticket and ticket["mission"] == mission:
            tickets[ticket["group_id"], ticket["label"]].append(sample)
    records = []
    for (group_id, label), of_ticket in sorted(tickets.items()):
        ordered = sorted(of_ticket, key=lambda s: natural_key(s["sample_id"]))
        records.append(
            {
                "group_id": group_id,
                "mission": mission,
                "label": label,
                "images": [Path(s["images"][0]).name for s in ordered],
                "per_image": {f"image_{n}": s["summary"] for n, s in enumerate(ordered, start=1)},
            }
        )
    return records
