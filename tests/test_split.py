"""Ticket-level seeded split and tiny subsets."""

from __future__ import annotations

from collections import Counter

from vlqc.data.split import split_key, split_records, tiny_subset


def records(n_tickets=20, photos=3):
    out = []
    for t in range(n_tickets):
        mission = "挡风板安装检查" if t % 2 else "BBU接地线检查"
        label = "fail" if t % 3 == 0 else "pass"
        for k in range(photos):
            out.append(
                {"sample_id": f"{mission}/{t}/{k}", "ticket": {"mission": mission, "label": label, "group_id": f"G{t}"}}
            )
    return out


def test_same_seed_same_split_and_other_seed_differs():
    data = records()
    first = split_records(data, 0.25, seed=3)
    assert first == split_records(data, 0.25, seed=3)
    assert first != split_records(data, 0.25, seed=4)


def test_no_image_and_no_ticket_on_both_sides():
    train, val = split_records(records(), 0.25, seed=3)
    assert {r["sample_id"] for r in train}.isdisjoint(r["sample_id"] for r in val)
    assert {split_key(r)[1] for r in train}.isdisjoint(split_key(r)[1] for r in val)
    assert len(train) + len(val) == 60


def test_every_mission_and_label_is_in_val():
    _, val = split_records(records(), 0.2, seed=5)
    strata = Counter(split_key(r)[0] for r in val)
    assert set(strata) == {f"{m}/{label}" for m in ("挡风板安装检查", "BBU接地线检查") for label in ("pass", "fail")}


def test_photos_outside_tickets_split_one_by_one():
    data = [{"sample_id": f"img{i}"} for i in range(50)]
    train, val = split_records(data, 0.2, seed=1)
    assert len(val) == 10 and len(train) == 40


def test_tiny_subset_is_seeded_and_keeps_order():
    data = records()
    tiny = tiny_subset(data, 7, seed=2)
    assert tiny == tiny_subset(data, 7, seed=2)
    assert len(tiny) == 7
    positions = [data.index(r) for r in tiny]
    assert positions == sorted(positions)
    assert tiny_subset(data[:3], 7, seed=2) == data[:3]
