"""Length buckets and the balanced, seeded draw of the eval and golden sets."""

from __future__ import annotations

from collections import Counter

import pytest

from vlqc.evaluation.buckets import BUCKETS, balanced_draw, bucket_of, bucket_quotas


def rows(short, medium, long):
    counts = {"short": short, "medium": medium, "long": long}
    return [{"id": f"{b}{i}", "bucket": b} for b in BUCKETS for i in range(counts[b])]


def test_bucket_edges():
    assert [bucket_of(n, [48, 128]) for n in (0, 47, 48, 127, 128, 500)] == [
        "short",
        "short",
        "medium",
        "medium",
        "long",
        "long",
    ]
    assert bucket_of(5, [5, 5]) == "long"
    with pytest.raises(ValueError, match="a ≤ b"):
        bucket_of(5, [10, 3])


def test_equal_thirds_and_remainder_in_bucket_order():
    assert Counter(r["bucket"] for r in balanced_draw(rows(50, 50, 50), 96, seed=1)) == {
        "short": 32,
        "medium": 32,
        "long": 32,
    }
    assert bucket_quotas([50, 50, 50], 98) == [33, 33, 32]
    assert bucket_quotas([50, 50, 50], 97) == [33, 32, 32]


def test_short_bucket_filled_by_the_next_one():
    # short has 10: medium takes its 22 missing rows.
    assert bucket_quotas([10, 60, 60], 96) == [10, 54, 32]
    # long has 5: its gap wraps around to short.
    assert bucket_quotas([60, 60, 5], 96) == [59, 32, 5]
    # medium too small to take short's gap: it passes on to long.
    assert bucket_quotas([10, 40, 60], 96) == [10, 40, 46]
    assert Counter(r["bucket"] for r in balanced_draw(rows(10, 60, 60), 96, seed=1)) == {
        "short": 10,
        "medium": 54,
        "long": 32,
    }


def test_more_rows_asked_than_exist_gives_all():
    data = rows(2, 3, 1)
    assert balanced_draw(data, 96, seed=0) == data


def test_empty_bucket():
    assert bucket_quotas([0, 10, 10], 9) == [0, 6, 3]


def test_seeded_deterministic_and_stable_order():
    data = rows(40, 40, 40)
    first = balanced_draw(data, 30, seed=7)
    assert first == balanced_draw(data, 30, seed=7)
    assert first != balanced_draw(data, 30, seed=8)
    position = {r["id"]: i for i, r in enumerate(data)}
    assert [position[r["id"]] for r in first] == sorted(position[r["id"]] for r in first)
    assert len({r["id"] for r in first}) == 30


def test_unknown_bucket_is_named():
    with pytest.raises(ValueError, match="'x1'.*'huge'"):
        balanced_draw([{"id": "x1", "bucket": "huge"}], 1, seed=0)
