"""The Stage-B guidance store: one mission's rules, the reflection ops that change them, snapshots.

A guidance file (schema `stage_b_guidance`, docs/guidance.md#the-guidance-file) maps mission → section
`{step, updated_at, experiences, metadata}`. `experiences` holds `S<n>` (structural invariants, never
touched by ops), `G0` (the mission checklist: may be updated or merged into, never deleted or merged
away) and `G1+` (learnable rules). A legacy `focus` is promoted to G0 when G0 is missing or is the
placeholder text. The experiences map is exactly what `vlqc.inference.prompts.verdict_messages` renders.

Engine rules for ops (docs/guidance.md#applying-operations), and the choices made where the origin is loose:
- An op that is not applied returns `Applied(accepted=False, reason=<code>)`; nothing is dropped
  silently. Codes: no_op, unknown_op, add_has_key, missing_key, bad_key, structural_key, unknown_key,
  g0_protected, merge_into_self, missing_merged_from, missing_text, text_too_long, forbidden_phrase,
  ambiguous_negation, summary_chain, duplicates_structural.
- Rule text over 160 characters is rejected, not truncated as in the origin: a cut rule can lose
  the condition or exception that makes it right, and the reflection is asked again anyway.
- Similarity is difflib's SequenceMatcher ratio on normalized text (NFKC, whitespace removed). An add
  whose text is ≥ 0.9 similar to a G rule (identical text included) updates the most similar one
  instead of creating a key; an add identical to an S rule is rejected.
- A new key is one above the highest G number in use.
- Every applied op adds 1 to `step`; the changed rule's metadata gets the op's evidence plus the
  batch's group ids as `sources`, one more hit, and confidence = hit / (hit + miss + 1e-5).
  A merged rule keeps the target rule's counts; the rules merged into it are removed.
- `prune` removes learnable rules (never G0 or S*) under a confidence after a number of misses
  (stage_b.reflection.prune_min_confidence and prune_min_misses), one step per removed rule.

Timestamps: a change is stamped with the guidance's own `updated_at` (the seed's, carried through
every run), never with the clock, so that the same inputs give the same file; when a run changed a rule
is told by its `reflection_id` and `step`, and when the job ran by its log.

Snapshots: `save` copies the previous `guidance.json` of the run folder to `snapshots/guidance-<n>.json`
(n counts the copies: 1, 2, …) before writing the new one, keeping the newest `retention` copies.
Nothing here reads a run folder to start from: a run gets the guidance it starts with as an input.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from difflib import SequenceMatcher
from pathlib import Path
from typing import Any

from vlqc.data.desc import normalize
from vlqc.errors import VlqcError
from vlqc.jsonl import atomic_open, read_json, write_json

SCHEMA = "stage_b_guidance"
GUIDANCE_FILE = "guidance.json"
SNAPSHOT_DIR = "snapshots"
PLACEHOLDER_G0 = "Initial guidance placeholder"
SEED_REFLECTION_ID = "seed"  # reflection id of rules that came with the seed file
MAX_RULE_CHARS = 160
SIMILARITY_THRESHOLD = 0.9
CONFIDENCE_EPSILON = 1e-5

FORBIDDEN_PHRASES = (
    "复核",
    "需复核",
    "需要复核",
    "需人工复核",
    "人工复核",
    "need-review",
    "need review",
    "needs review",
    "证据不足",
    "待定",
    "不应直接",
    "不建议直接",
    "不得直接",
    "佐证",
    "需进一步",
    "需要进一步",
    "进一步确认",
    "不写不通过",
    "通过但需复核",
    "通过但需人工复核",
)
# A rule that only says what not to conclude (`不应判定为通过`) leaves the verdict open; a few words
# may stand between the two halves (`不要把它判为通过`).
_AMBIGUOUS_NEGATION = re.compile(r"(不应|不建议|不要|不得)[^，。；,;]{0,8}?(判定为|判断为|判为)")
# Summary text pasted into a rule instead of a rule about it.
_CHAIN_MARKER = re.compile(r"标签/|image_|image[0-9]", re.IGNORECASE)
CHAIN_VOCABULARY = ("显示完整", "符合要求", "无法判断", "需复核")
_KEY = re.compile(r"^([SG])(0|[1-9][0-9]*)$")

CHECKLIST = "G0"
OPS = ("add", "update", "delete", "merge")


@dataclass(frozen=True)
class Operation:
    """One reflection op, as the reflection parser builds it (docs/guidance.md#ops-pass)."""

    op: str  # add | update | delete | merge | none
    key: str | None = None  # G<n>; none for add
    text: str | None = None  # the new rule text; none for delete
    rationale: str = ""
    evidence: tuple[str, ...] = ()  # ticket keys `{group_id}::{label}`
    merged_from: tuple[str, ...] = ()  # merge only: G keys folded into `key`


@dataclass(frozen=True)
class Applied:
    """What became of an op: the rule it changed, or the reason code it was rejected with."""

    op: Operation
    key: str | None
    accepted: bool
    reason: str | None = None
    action: str | None = None  # the change made: `update` for an add that matched an existing rule


class _Rejected(Exception):
    def __init__(self, code: str):
        super().__init__(code)
        self.code = code


@dataclass(frozen=True)
class _Change:
    action: str
    key: str
    text: str | None
    removed: tuple[str, ...] = ()


def rule_key(key: str) -> tuple[str, int]:
    """(kind, number) of `S<n>`/`G<n>`, the sort order of rules (G2 before G10)."""
    match = _KEY.match(key)
    if match is None:
        raise VlqcError(f"a guidance key is S<n> or G<n>, not {key!r}")
    return match.group(1), int(match.group(2))


def confidence(hits: int, misses: int) -> float:
    return hits / (hits + misses + CONFIDENCE_EPSILON)


def rule_text_problem(text: str | None) -> str | None:
    """The reason code a rule text is refused with, or None when it may become a rule."""
    if not text or not text.strip():
        return "missing_text"
    if len(text.strip()) > MAX_RULE_CHARS:
        return "text_too_long"
    lowered = text.lower()
    if any(phrase in lowered for phrase in FORBIDDEN_PHRASES):
        return "forbidden_phrase"
    if _AMBIGUOUS_NEGATION.search(text):
        return "ambiguous_negation"
    if _looks_like_summary_chain(text):
        return "summary_chain"
    return None


def _looks_like_summary_chain(text: str) -> bool:
    if _CHAIN_MARKER.search(text):
        return True
    slashes = text.count("/")
    return (slashes >= 2 and any(word in text for word in CHAIN_VOCABULARY)) or (slashes >= 1 and "×" in text)


@dataclass
class Guidance:
    """The guidance of one mission; `experiences` is what `verdict_messages` takes."""

    mission: str
    step: int
    updated_at: str
    experiences: dict[str, str]
    metadata: dict[str, dict[str, Any]] = field(default_factory=dict)

    # --- reading -----------------------------------------------------------------------------

    @classmethod
    def from_section(cls, mission: str, section: dict[str, Any]) -> Guidance:
        """A section that already passed the schema; a legacy `focus` becomes G0 where needed."""
        experiences = dict(section["experiences"])
        focus = section.get("focus")
        if focus and experiences.get(CHECKLIST, PLACEHOLDER_G0) == PLACEHOLDER_G0:
            experiences[CHECKLIST] = focus
        metadata = {key: dict(meta) for key, meta in section.get("metadata", {}).items()}
        return cls(mission, int(section["step"]), section["updated_at"], experiences, metadata)

    def rules_sorted(self) -> list[tuple[str, str]]:
        """(key, text) by kind, then by number: G0, G1, G2, G10, S1, S2."""
        return [(key, self.experiences[key]) for key in sorted(self.experiences, key=rule_key)]

    def to_section(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "updated_at": self.updated_at,
            "experiences": dict(self.rules_sorted()),
            "metadata": {key: self.metadata[key] for key in sorted(self.metadata, key=rule_key)},
        }

    # --- ops ---------------------------------------------------------------------------------

    def apply(self, op: Operation, reflection_id: str, batch_group_ids: Sequence[str] = ()) -> Applied:
        """Apply one reflection op, or say why not; `batch_group_ids` join the rule's sources."""
        try:
            change = self._plan(op)
        except _Rejected as rejected:
            return Applied(op, op.key, accepted=False, reason=rejected.code)
        for key in change.removed:
            self._remove(key)
        if change.text is not None:
            self.experiences[change.key] = change.text
            self._credit(change.key, op, reflection_id, [*op.evidence, *batch_group_ids])
        self.step += 1
        return Applied(op, change.key, accepted=True, action=change.action)

    def _plan(self, op: Operation) -> _Change:
        if op.op == "none":
            raise _Rejected("no_op")
        if op.op not in OPS:
            raise _Rejected("unknown_op")
        if op.op == "add":
            return self._plan_add(op)
        key = self._learnable(op.key)
        if op.op == "delete":
            if key == CHECKLIST:
                raise _Rejected("g0_protected")
            return _Change("delete", key, None, (key,))
        text = _checked_text(op.text)
        if op.op == "update":
            return _Change("update", key, text)
        return _Change("merge", key, text, self._merged_away(key, op.merged_from))

    def _plan_add(self, op: Operation) -> _Change:
        if op.key is not None:
            raise _Rejected("add_has_key")
        text = _checked_text(op.text)
        wanted = normalize(text)
        if any(normalize(self.experiences[key]) == wanted for key in self._keys("S")):
            raise _Rejected("duplicates_structural")
        similar = self._most_similar(wanted)
        if similar is not None:
            return _Change("update", similar, text)
        return _Change("add", self._next_key(), text)

    def _most_similar(self, wanted: str) -> str | None:
        """The G rule most similar to `wanted`, if at least SIMILARITY_THRESHOLD similar."""
        ratios = {
            key: SequenceMatcher(None, wanted, normalize(self.experiences[key]), autojunk=False).ratio()
            for key in self._keys("G")
        }
        best = max(ratios, key=ratios.__getitem__, default=None)
        return best if best is not None and ratios[best] >= SIMILARITY_THRESHOLD else None

    def _learnable(self, key: str | None) -> str:
        """`key` if an op may change that rule (an existing G rule), else the rejection."""
        if key is None:
            raise _Rejected("missing_key")
        match = _KEY.match(key)
        if match is None:
            raise _Rejected("bad_key")
        if match.group(1) == "S":
            raise _Rejected("structural_key")
        if key not in self.experiences:
            raise _Rejected("unknown_key")
        return key

    def _merged_away(self, target: str, merged_from: Iterable[str]) -> tuple[str, ...]:
        sources = tuple(dict.fromkeys(merged_from))
        if not sources:
            raise _Rejected("missing_merged_from")
        for key in sources:
            if self._learnable(key) == CHECKLIST:
                raise _Rejected("g0_protected")
            if key == target:
                raise _Rejected("merge_into_self")
        return sources

    def _keys(self, kind: str) -> list[str]:
        return [key for key in self.experiences if rule_key(key)[0] == kind]

    def _next_key(self) -> str:
        return f"G{max(rule_key(key)[1] for key in self._keys('G')) + 1}"

    def _credit(self, key: str, op: Operation, reflection_id: str, sources: list[str]) -> None:
        """Metadata of a rule an op just wrote: new sources, one more hit."""
        previous = self.metadata.get(key, {})
        hits, misses = previous.get("hit_count", 0) + 1, previous.get("miss_count", 0)
        meta: dict[str, Any] = {
            "updated_at": self.updated_at,
            "reflection_id": reflection_id,
            "sources": list(dict.fromkeys(sources)),
        }
        if op.rationale:
            meta["rationale"] = op.rationale
        meta.update(hit_count=hits, miss_count=misses, confidence=confidence(hits, misses))
        self.metadata[key] = meta

    def _remove(self, key: str) -> None:
        del self.experiences[key]
        self.metadata.pop(key, None)

    # --- lifecycle ---------------------------------------------------------------------------

    def record_hit(self, key: str) -> None:
        self._count(key, "hit_count")

    def record_miss(self, key: str) -> None:
        self._count(key, "miss_count")

    def _count(self, key: str, counter: str) -> None:
        if key not in self.experiences:
            raise VlqcError(f"{self.mission}: no guidance rule {key!r}")
        meta = self.metadata.setdefault(key, {"updated_at": self.updated_at, "reflection_id": SEED_REFLECTION_ID})
        meta[counter] = meta.get(counter, 0) + 1
        meta["confidence"] = confidence(meta.get("hit_count", 0), meta.get("miss_count", 0))

    def prune(self, min_confidence: float, min_misses: int) -> list[str]:
        """Remove learnable rules that failed often enough; returns their keys."""
        doomed = [key for key in self._keys("G") if key != CHECKLIST and self._failing(key, min_confidence, min_misses)]
        for key in doomed:
            self._remove(key)
            self.step += 1
        return doomed

    def _failing(self, key: str, min_confidence: float, min_misses: int) -> bool:
        meta = self.metadata.get(key, {})
        misses = meta.get("miss_count", 0)
        return misses >= min_misses and confidence(meta.get("hit_count", 0), misses) < min_confidence

    # --- files -------------------------------------------------------------------------------

    def save(self, run_dir: str | Path, retention: int) -> Path:
        """Write `<run_dir>/guidance.json` atomically, first snapshotting the one it replaces."""
        if retention < 0:
            raise VlqcError(f"snapshot retention must be 0 or more, not {retention}")
        target = Path(run_dir) / GUIDANCE_FILE
        snapshots = Path(run_dir) / SNAPSHOT_DIR
        if target.is_file() and retention > 0:
            _snapshot(target, snapshots)
        _keep_newest(snapshots, retention)
        write_json(target, {self.mission: self.to_section()}, schema=SCHEMA)
        return target


def _checked_text(text: str | None) -> str:
    problem = rule_text_problem(text)
    if problem is not None:
        raise _Rejected(problem)
    return text.strip()


def _snapshot(source: Path, folder: Path) -> None:
    number = max(_snapshot_numbers(folder), default=0) + 1
    with atomic_open(folder / f"guidance-{number}.json", "wb") as fh:
        fh.write(source.read_bytes())


def _snapshot_numbers(folder: Path) -> dict[int, Path]:
    """Snapshot number → file, of the snapshots in `folder`."""
    found = {}
    for path in folder.glob("guidance-*.json"):
        number = path.stem.removeprefix("guidance-")
        if number.isdigit():
            found[int(number)] = path
    return found


def _keep_newest(folder: Path, retention: int) -> None:
    numbers = _snapshot_numbers(folder)
    for number in sorted(numbers, reverse=True)[retention:]:
        numbers[number].unlink()


def read_guidance_file(path: str | Path) -> dict[str, Guidance]:
    """Every mission's guidance in a file, validated; errors name the file and the problem."""
    path = Path(path)
    if not path.is_file():
        raise VlqcError(f"guidance file {path} does not exist")
    doc = read_json(path, schema=SCHEMA)
    return {mission: Guidance.from_section(mission, section) for mission, section in doc.items()}


def load_mission(path: str | Path, mission: str) -> Guidance:
    guidance = read_guidance_file(path)
    if mission not in guidance:
        raise VlqcError(f"guidance file {path} has no section for mission {mission!r}; it has: {', '.join(guidance)}")
    return guidance[mission]
