"""The hypothesis pool behind `hypotheses.json` and `hypothesis_events.jsonl`.

A hypothesis from the ops pass is not a rule yet. The pool gathers every sighting of the same
hypothesis — the same text up to width, case, spacing and punctuation, named by `signature` — across
reflection cycles, with the distinct tickets that support it. One that is supported in enough cycles
by enough tickets (stage_b.reflection.promote_min_cycles, promote_min_tickets) is `promotable`; the
caller turns it into a rule within its change cap and marks it `promote`d, or `reject`s it (the gate or
the guidance refused it).
Promoted and rejected hypotheses keep collecting sightings but never become promotable again.

Every observation, promotion and rejection is recorded as an event row (schema
`stage_b_hypothesis_event`); `drain_events` hands them to the writer of `hypothesis_events.jsonl`.
"""

from __future__ import annotations

import hashlib
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from vlqc.errors import VlqcError
from vlqc.schemas import validate
from vlqc.stage_b.reflection import Hypothesis
from vlqc.tickets import natural_key

POOL_SCHEMA = "stage_b_hypotheses"
EVENT_SCHEMA = "stage_b_hypothesis_event"
OPEN, PROMOTED, REJECTED = "open", "promoted", "rejected"


def signature(text: str) -> str:
    """16 hex digits naming a hypothesis text regardless of width, case, spacing and punctuation."""
    folded = unicodedata.normalize("NFKC", text).casefold()
    # Drop punctuation (P), separators (Z) and control characters (C); symbols such as ≥ carry meaning.
    kept = "".join(ch for ch in folded if unicodedata.category(ch)[0] not in "PZC")
    return hashlib.sha256(kept.encode("utf-8")).hexdigest()[:16]


def _ticket_order(keys: Iterable[str]) -> list[str]:
    return sorted(keys, key=lambda key: (natural_key(key), key))


@dataclass
class PooledHypothesis:
    """One hypothesis as first worded, with everything that supported it so far."""

    signature: str
    text: str
    falsifier: str
    dimension: str | None
    cycles: set[int] = field(default_factory=set)
    tickets: set[str] = field(default_factory=set)
    reflection_ids: list[str] = field(default_factory=list)
    status: str = OPEN

    def ready(self, min_cycles: int, min_tickets: int) -> bool:
        return self.status == OPEN and len(self.cycles) >= min_cycles and len(self.tickets) >= min_tickets

    def to_json(self) -> dict[str, Any]:
        return {
            "signature": self.signature,
            "text": self.text,
            "falsifier": self.falsifier,
            "dimension": self.dimension,
            "status": self.status,
            "cycles": sorted(self.cycles),
            "tickets": _ticket_order(self.tickets),
            "reflection_ids": list(self.reflection_ids),
        }

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> PooledHypothesis:
        return cls(
            signature=doc["signature"],
            text=doc["text"],
            falsifier=doc["falsifier"],
            dimension=doc["dimension"],
            cycles=set(doc["cycles"]),
            tickets=set(doc["tickets"]),
            reflection_ids=list(doc["reflection_ids"]),
            status=doc["status"],
        )


class HypothesisPool:
    """The run's hypotheses by signature, plus the event rows not yet written."""

    def __init__(self, entries: Iterable[PooledHypothesis] = ()):
        self._entries: dict[str, PooledHypothesis] = {}
        for entry in entries:
            if entry.signature in self._entries:
                raise VlqcError(f"hypothesis pool: signature {entry.signature} appears twice")
            if entry.signature != signature(entry.text):
                raise VlqcError(f"hypothesis pool: signature {entry.signature} does not match its text {entry.text!r}")
            self._entries[entry.signature] = entry
        self._events: list[dict[str, Any]] = []

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: str) -> PooledHypothesis:
        if key not in self._entries:
            raise VlqcError(f"no hypothesis with signature {key}")
        return self._entries[key]

    def observe(self, hypothesis: Hypothesis, cycle: int, reflection_id: str) -> PooledHypothesis:
        """Count one sighting: its cycle, its evidence tickets and the reflection that proposed it."""
        key = signature(hypothesis.text)
        row = _event("observed", key, hypothesis.text, cycle, hypothesis.evidence, reflection_id=reflection_id)
        entry = self._entries.setdefault(
            key, PooledHypothesis(key, hypothesis.text, hypothesis.falsifier, hypothesis.dimension)
        )
        entry.cycles.add(cycle)
        entry.tickets.update(hypothesis.evidence)
        if reflection_id not in entry.reflection_ids:
            entry.reflection_ids.append(reflection_id)
        self._events.append(row)
        return entry

    def promotable(self, min_cycles: int, min_tickets: int) -> list[PooledHypothesis]:
        """Open hypotheses with enough support, best supported first (ties by signature)."""
        ready = [entry for entry in self._entries.values() if entry.ready(min_cycles, min_tickets)]
        return sorted(ready, key=lambda e: (-len(e.tickets), -len(e.cycles), e.signature))

    def promote(self, key: str, cycle: int) -> PooledHypothesis:
        """Mark an open hypothesis as turned into a rule."""
        return self._close(key, PROMOTED, cycle)

    def reject(self, key: str, cycle: int, reason: str) -> PooledHypothesis:
        """Mark an open hypothesis as refused (by the gate or the guidance), saying why."""
        return self._close(key, REJECTED, cycle, reason=reason)

    def drain_events(self) -> list[dict[str, Any]]:
        """Event rows recorded since the last drain, oldest first."""
        events, self._events = self._events, []
        return events

    def to_json(self) -> dict[str, Any]:
        doc = {"hypotheses": [self._entries[key].to_json() for key in sorted(self._entries)]}
        validate(doc, POOL_SCHEMA, "hypotheses.json")
        return doc

    @classmethod
    def from_json(cls, doc: Any, where: str = "hypotheses.json") -> HypothesisPool:
        validate(doc, POOL_SCHEMA, where)
        return cls(PooledHypothesis.from_json(entry) for entry in doc["hypotheses"])

    def _close(self, key: str, status: str, cycle: int, **extra: str) -> PooledHypothesis:
        entry = self.get(key)
        if entry.status != OPEN:
            raise VlqcError(f"hypothesis {key} is already {entry.status}")
        row = _event(status, key, entry.text, cycle, entry.tickets, **extra)
        entry.status = status
        self._events.append(row)
        return entry


def _event(event: str, key: str, text: str, cycle: int, tickets: Iterable[str], **extra: str) -> dict[str, Any]:
    """A validated `hypothesis_events.jsonl` row; built before the pool changes, so a bad one changes nothing."""
    row = {"event": event, "signature": key, "text": text, "cycle": cycle, "tickets": _ticket_order(set(tickets))}
    row.update(extra)
    validate(row, EVENT_SCHEMA, f"hypothesis event {event} of {key}")
    return row
