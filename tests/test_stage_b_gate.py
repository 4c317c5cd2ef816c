"""The rule-search gate: each acceptance criterion, the err0 = 0 rule, bootstrap seeding, early stop."""

import numpy as np
import pytest

from vlqc.errors import VlqcError
from vlqc.stage_b.gate import EarlyStop, Judged, Thresholds, bootstrap_probability, decide

ISOLATED = Thresholds(min_bootstrap_prob=0.0)  # to look at one criterion without the bootstrap's noise


def pool(wrong, n: int = 100, n_fail: int = 50) -> dict[str, Judged]:
    """Tickets t000… labelled fail for the first `n_fail`, pass after; those in `wrong` get the other verdict."""
    judged = {}
    for i in range(n):
        label = "fail" if i < n_fail else "pass"
        other = "pass" if label == "fail" else "fail"
        judged[f"t{i:03d}"] = Judged(label, other if i in wrong else label)
    return judged


TEN_FALSE_FAILS = set(range(50, 60))
TWENTY_FALSE_FAILS = set(range(50, 70))


def test_a_change_that_fixes_half_the_errors_is_accepted():
    result = decide(pool(TEN_FALSE_FAILS), pool(set(range(55, 60))), "update", Thresholds(), seed=0)
    assert result.accepted and result.reasons == []
    numbers = result.numbers
    assert (numbers["n"], numbers["err0"], numbers["err1"], numbers["rer"]) == (100, 0.1, 0.05, 0.5)
    assert numbers["changed_fraction"] == 0.05  # at the limit, inclusive
    assert numbers["bootstrap_prob"] >= 0.8


def test_rejected_when_the_relative_error_reduction_is_small():
    result = decide(pool(TWENTY_FALSE_FAILS), pool(TWENTY_FALSE_FAILS - {50}), "add", ISOLATED, seed=0)
    assert result.numbers["rer"] == 0.05
    assert [reason.split()[0] for reason in result.reasons] == ["rer"]


def test_rer_boundary_is_exact():
    # 1 fix in 10 errors is exactly 0.1, not 0.0999…
    result = decide(pool(TEN_FALSE_FAILS), pool(TEN_FALSE_FAILS - {50}), "add", ISOLATED, seed=0)
    assert result.numbers["rer"] == 0.1 and result.accepted


def test_rejected_when_too_many_verdicts_change():
    result = decide(pool(TWENTY_FALSE_FAILS), pool(set(range(58, 70))), "add", Thresholds(), seed=0)
    assert result.numbers["changed_fraction"] == 0.08
    assert [reason.split()[0] for reason in result.reasons] == ["changed_fraction"]


def test_rejected_when_the_bootstrap_is_not_confident():
    # 3 fixes and 1 new error out of 20: RER is 0.1 on the pool, but resamples often fall short.
    after = pool(set(range(53, 70)) | {70})
    result = decide(pool(TWENTY_FALSE_FAILS), after, "add", Thresholds(), seed=0)
    assert result.numbers["rer"] == 0.1 and result.numbers["changed_fraction"] == 0.04
    assert 0.0 < result.numbers["bootstrap_prob"] < 0.8
    assert [reason.split()[0] for reason in result.reasons] == ["bootstrap_prob"]


FIXES_FOUR_BREAKS_ONE_FAIL = (TEN_FALSE_FAILS, set(range(54, 60)) | {0})  # ticket 0 (label fail) now passes


@pytest.mark.parametrize("op_kind", ["update", "merge", "delete"])
def test_a_rise_in_false_passes_rejects_changes_to_existing_rules(op_kind):
    before, after = FIXES_FOUR_BREAKS_ONE_FAIL
    result = decide(pool(before), pool(after), op_kind, ISOLATED, seed=0)
    numbers = result.numbers
    assert (numbers["false_pass_rate_before"], numbers["false_pass_rate_after"], numbers["false_pass_rise"]) == (
        0.0,
        0.02,
        0.02,
    )  # 1 of 50 fail-labelled tickets
    assert [reason.split()[0] for reason in result.reasons] == ["false_pass_rise"]


def test_the_false_pass_guard_does_not_apply_to_add():
    before, after = FIXES_FOUR_BREAKS_ONE_FAIL
    assert decide(pool(before), pool(after), "add", ISOLATED, seed=0).accepted


def test_false_pass_rise_boundary_is_exact():
    # 1 new false pass among 100 fail-labelled tickets is a rise of exactly 0.01: allowed.
    before, after = set(range(100, 120)), set(range(105, 120)) | {0}
    result = decide(pool(before, n=200, n_fail=100), pool(after, n=200, n_fail=100), "update", ISOLATED, seed=0)
    assert result.numbers["false_pass_rise"] == 0.01 and result.accepted


def test_zero_max_changed_fraction_stays_zero():
    strict = Thresholds(max_changed_fraction=0.0, min_bootstrap_prob=0.0)
    assert strict.max_changed_fraction == 0.0
    one_change = decide(pool(TEN_FALSE_FAILS), pool(TEN_FALSE_FAILS - {50}), "add", strict, seed=0)
    assert one_change.numbers["changed_fraction"] == 0.01
    assert [reason.split()[0] for reason in one_change.reasons] == ["changed_fraction"]
    no_change = decide(pool(TEN_FALSE_FAILS), pool(TEN_FALSE_FAILS), "add", strict, seed=0)
    assert not any(reason.startswith("changed_fraction") for reason in no_change.reasons)


def test_no_baseline_error_means_nothing_to_gain():
    perfect = decide(pool(set()), pool(set()), "add", ISOLATED, seed=0)
    assert perfect.numbers["err0"] == 0.0 and perfect.numbers["rer"] == 0.0
    assert not perfect.accepted and perfect.reasons[0].startswith("rer")
    regressed = decide(pool(set()), pool({3}), "add", ISOLATED, seed=0)
    assert regressed.numbers["rer"] == -1.0 and not regressed.accepted


def test_bootstrap_is_deterministic_for_a_seed():
    before, after = pool(TWENTY_FALSE_FAILS), pool(set(range(53, 70)) | {70})
    runs = {seed: decide(before, after, "add", Thresholds(), seed=seed).numbers["bootstrap_prob"] for seed in range(5)}
    assert decide(before, after, "add", Thresholds(), seed=3).numbers["bootstrap_prob"] == runs[3]
    assert len(set(runs.values())) > 1  # the seed does drive the resampling


def test_bootstrap_uses_the_configured_resample_count():
    before, after = pool(TWENTY_FALSE_FAILS), pool(set(range(53, 70)) | {70})
    single = decide(before, after, "add", Thresholds(bootstrap_resamples=1), seed=0).numbers["bootstrap_prob"]
    assert single in (0.0, 1.0)


def test_bootstrap_probability_of_a_clear_win_and_a_clear_loss():
    wrong0 = np.array([True] * 10 + [False] * 90)
    assert bootstrap_probability(wrong0, np.zeros(100, dtype=bool), 0.1, 200, seed=0) == 1.0
    assert bootstrap_probability(wrong0, wrong0, 0.1, 200, seed=0) == 0.0


@pytest.mark.parametrize(
    "before, after, op_kind, match",
    [
        (pool(set()), pool(set(), n=99), "add", "same tickets"),
        (pool(set()), {**pool(set()), "t000": Judged("pass", "pass")}, "add", "label 'fail' before"),
        (pool(set()), {**pool(set()), "t000": Judged("fail", "review")}, "add", "pass or fail"),
        (pool(set()), pool(set()), "remove", "op_kind"),
        ({}, {}, "add", "at least one ticket"),
    ],
)
def test_bad_inputs_are_refused(before, after, op_kind, match):
    with pytest.raises(VlqcError, match=match):
        decide(before, after, op_kind, ISOLATED, seed=0)


@pytest.mark.parametrize(
    "fields",
    [{"max_changed_fraction": -0.1}, {"min_bootstrap_prob": 1.5}, {"min_rer": 1.2}, {"bootstrap_resamples": 0}],
)
def test_thresholds_out_of_range_are_refused(fields):
    with pytest.raises(VlqcError):
        Thresholds(**fields)


def test_thresholds_defaults_are_the_origin_values():
    assert Thresholds() == Thresholds(0.1, 0.05, 0.8, 0.01, 200)


def test_early_stop_after_patience_rounds_without_an_accepted_change():
    stop = EarlyStop(patience=3)
    assert [stop.record(False), stop.record(False), stop.record(True)] == [False, False, False]
    assert [stop.record(False), stop.record(False), stop.record(False)] == [False, False, True]
    assert stop.should_stop and stop.idle_rounds == 3
    assert EarlyStop(patience=1).record(False)
    with pytest.raises(VlqcError):
        EarlyStop(patience=0)
