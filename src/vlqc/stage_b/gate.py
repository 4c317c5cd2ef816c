"""The rule-search gate: accept a guidance change only when it measurably helps (docs/guidance.md#rule-search-gate).

The candidate guidance is rolled out on the same train pool as the current one, giving each ticket a
verdict before and after. The change is accepted when all hold:

    RER = (err0 − err1) / err0 ≥ min_rer                  relative error reduction
    changed fraction ≤ max_changed_fraction               share of tickets whose verdict changed
    P(RER ≥ min_rer) ≥ min_bootstrap_prob                 paired bootstrap over tickets, seeded
    false-pass rise ≤ max_false_pass_rise                 update / merge / delete only

err0 = 0: there is no error to reduce. RER is then 0 when err1 is 0 too and −1 when the change
introduces errors (a full regression); both stay below any positive `min_rer`, so a change is never
accepted on a pool the current guidance already gets right. Bootstrap resamples use the same rule.

A false pass is a ticket labelled fail that gets verdict pass; its rate is over the fail-labelled
tickets (0 when there are none). Only changes to existing rules are guarded: they can loosen a rule
that kept bad installations out, while an add only constrains further.

Rates are compared as exact fractions of ticket counts, so 1 fix in 10 errors is an RER of exactly 0.1.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from vlqc.errors import VlqcError
from vlqc.schemas import defaults
from vlqc.stage_b.guidance import OPS
from vlqc.stage_b.reflection import KEYED_OPS

# Changes to an existing rule can loosen it; an add only constrains further.
GUARDED_OPS = KEYED_OPS
VERDICTS = frozenset({"pass", "fail"})
# The config schema's `stage_b.gate` section is the one home of these defaults.
DEFAULTS = defaults("config", "stage_b.gate")


class Judged(NamedTuple):
    """A ticket's ground-truth label and the verdict the guidance produced for it."""

    label: str
    verdict: str


@dataclass(frozen=True)
class Thresholds:
    min_rer: float = DEFAULTS["min_rer"]
    max_changed_fraction: float = DEFAULTS["max_changed_fraction"]
    min_bootstrap_prob: float = DEFAULTS["min_bootstrap_prob"]
    max_false_pass_rise: float = DEFAULTS["max_false_pass_rise"]
    bootstrap_resamples: int = DEFAULTS["bootstrap_resamples"]

    def __post_init__(self):
        for name in ("max_changed_fraction", "min_bootstrap_prob", "max_false_pass_rise"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise VlqcError(f"gate threshold {name} must be within [0, 1], not {getattr(self, name)}")
        if self.min_rer > 1.0:
            raise VlqcError(f"gate threshold min_rer must be at most 1 (no error left), not {self.min_rer}")
        if self.bootstrap_resamples < 1:
            raise VlqcError(f"gate bootstrap_resamples must be >= 1, not {self.bootstrap_resamples}")


@dataclass(frozen=True)
class GateDecision:
    accepted: bool
    reasons: list[str]  # one line per failed criterion; empty when accepted
    numbers: dict[str, float | int]


def decide(
    before: Mapping[str, Judged],
    after: Mapping[str, Judged],
    op_kind: str,
    thresholds: Thresholds,
    seed: int,
) -> GateDecision:
    """Judge a candidate change from per-ticket (label, verdict) before and after it, keyed by ticket."""
    if op_kind not in OPS:
        raise VlqcError(f"op_kind must be one of {', '.join(OPS)}, not {op_kind!r}")
    numbers = measure(before, after, thresholds.min_rer, thresholds.bootstrap_resamples, seed)
    reasons = _failed_criteria(numbers, op_kind, thresholds)
    return GateDecision(accepted=not reasons, reasons=reasons, numbers=numbers)


def measure(
    before: Mapping[str, Judged], after: Mapping[str, Judged], min_rer: float, resamples: int, seed: int
) -> dict[str, float | int]:
    failed, wrong0, wrong1, passed0, passed1 = _outcomes(before, after)
    n, n_fail = len(failed), int(failed.sum())
    false_pass0, false_pass1 = int((failed & passed0).sum()), int((failed & passed1).sum())
    return {
        "n": n,
        "err0": int(wrong0.sum()) / n,
        "err1": int(wrong1.sum()) / n,
        "rer": float(_rer(wrong0.sum(), wrong1.sum())),
        "changed_fraction": int((passed0 != passed1).sum()) / n,
        "bootstrap_prob": bootstrap_probability(wrong0, wrong1, min_rer, resamples, seed),
        "false_pass_rate_before": false_pass0 / n_fail if n_fail else 0.0,
        "false_pass_rate_after": false_pass1 / n_fail if n_fail else 0.0,
        "false_pass_rise": (false_pass1 - false_pass0) / n_fail if n_fail else 0.0,
    }


def bootstrap_probability(wrong0: np.ndarray, wrong1: np.ndarray, min_rer: float, resamples: int, seed: int) -> float:
    """Share of paired resamples of the tickets (with replacement) whose RER reaches `min_rer`."""
    rows = np.random.default_rng(seed).integers(0, len(wrong0), size=(resamples, len(wrong0)))
    return float(np.mean(_rer(wrong0[rows].sum(axis=1), wrong1[rows].sum(axis=1)) >= min_rer))


def _rer(errors0, errors1):
    """RER from error counts (scalars or arrays), with the err0 = 0 rule of the module docstring."""
    errors0, errors1 = np.asarray(errors0, dtype=float), np.asarray(errors1, dtype=float)
    regression = np.where(errors1 > 0, -1.0, 0.0)
    return np.where(errors0 > 0, (errors0 - errors1) / np.maximum(errors0, 1.0), regression)


def _outcomes(before: Mapping[str, Judged], after: Mapping[str, Judged]) -> tuple[np.ndarray, ...]:
    """Boolean arrays over the tickets in key order: labelled fail, wrong before/after, passed before/after."""
    if not before:
        raise VlqcError("the gate needs at least one ticket")
    if set(before) != set(after):
        differ = sorted(set(before) ^ set(after))
        raise VlqcError(f"the gate needs the same tickets before and after; {len(differ)} differ, e.g. {differ[0]}")
    keys = sorted(before)
    for key in keys:
        _check(key, before[key], after[key])
    failed = np.array([before[k].label == "fail" for k in keys])
    passed0 = np.array([before[k].verdict == "pass" for k in keys])
    passed1 = np.array([after[k].verdict == "pass" for k in keys])
    return failed, passed0 == failed, passed1 == failed, passed0, passed1


def _check(key: str, before: Judged, after: Judged) -> None:
    if before.label != after.label:
        raise VlqcError(f"ticket {key}: label {before.label!r} before but {after.label!r} after")
    if not {before.label, before.verdict, after.verdict} <= VERDICTS:
        raise VlqcError(f"ticket {key}: labels and verdicts must be pass or fail, got {before} and {after}")


def _failed_criteria(numbers: Mapping[str, float | int], op_kind: str, t: Thresholds) -> list[str]:
    reasons = []
    if numbers["rer"] < t.min_rer:
        reasons.append(f"rer {numbers['rer']:.4f} < min_rer {t.min_rer}")
    if numbers["changed_fraction"] > t.max_changed_fraction:
        reasons.append(f"changed_fraction {numbers['changed_fraction']:.4f} > max {t.max_changed_fraction}")
    if numbers["bootstrap_prob"] < t.min_bootstrap_prob:
        reasons.append(f"bootstrap_prob {numbers['bootstrap_prob']:.4f} < min {t.min_bootstrap_prob}")
    if op_kind in GUARDED_OPS and numbers["false_pass_rise"] > t.max_false_pass_rise:
        reasons.append(f"false_pass_rise {numbers['false_pass_rise']:.4f} > max {t.max_false_pass_rise} ({op_kind})")
    return reasons


@dataclass
class EarlyStop:
    """Counts consecutive rounds without an accepted change; stop once `patience` is reached."""

    patience: int
    idle_rounds: int = 0

    def __post_init__(self):
        if self.patience < 1:
            raise VlqcError(f"early-stop patience must be >= 1, not {self.patience}")

    def record(self, accepted: bool) -> bool:
        """Count one round; True when the search should stop."""
        self.idle_rounds = 0 if accepted else self.idle_rounds + 1
        return self.should_stop

    @property
    def should_stop(self) -> bool:
        return self.idle_rounds >= self.patience
