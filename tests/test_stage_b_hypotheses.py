"""The hypothesis pool: signatures, support across cycles, promotion, events, hypotheses.json."""

import json

import pytest

from vlqc.errors import SchemaError, VlqcError
from vlqc.schemas import validate
from vlqc.stage_b.hypotheses import EVENT_SCHEMA, HypothesisPool, signature
from vlqc.stage_b.reflection import Hypothesis

TEXT = "若挡风板方向与BBU进风方向相反，则判不通过。"


def tickets(start: int, stop: int) -> tuple[str, ...]:
    return tuple(f"QC-A-{n}::fail" for n in range(start, stop))


def sighting(evidence: tuple[str, ...], text: str = TEXT) -> Hypothesis:
    return Hypothesis(text, "方向正确的工单被判不通过", evidence, "安装方向")


def test_signature_ignores_width_case_spacing_and_punctuation():
    variants = [TEXT, "若挡风板方向与bbu进风方向相反 则判不通过", "若挡风板方向与ＢＢＵ进风方向相反,则判不通过!"]
    assert len({signature(text) for text in variants}) == 1
    assert signature(TEXT) != signature("若挡风板方向与BBU进风方向相同，则判通过。")
    assert signature("数量≥2则判通过") != signature("数量2则判通过")  # symbols carry meaning
    assert len(signature(TEXT)) == 16 and int(signature(TEXT), 16) >= 0


def test_promotion_needs_the_cycles_and_distinct_tickets_it_is_given():
    pool = HypothesisPool()
    pool.observe(sighting(tickets(0, 12)), cycle=1, reflection_id="r1")
    assert pool.promotable(2, 12) == []  # one cycle only
    pool.observe(sighting(tickets(0, 12)), cycle=1, reflection_id="r2")
    assert pool.promotable(2, 12) == []  # the same cycle again is still one cycle
    pool.observe(sighting(tickets(0, 3)), cycle=2, reflection_id="r3")
    (ready,) = pool.promotable(2, 12)
    assert ready.signature == signature(TEXT) and ready.cycles == {1, 2} and len(ready.tickets) == 12


def test_tickets_seen_twice_count_once():
    pool = HypothesisPool()
    pool.observe(sighting(tickets(0, 8)), cycle=1, reflection_id="r1")
    pool.observe(sighting(tickets(5, 11)), cycle=2, reflection_id="r2")  # 11 distinct
    assert pool.promotable(2, 12) == []
    assert len(pool.promotable(min_cycles=2, min_tickets=11)) == 1


def test_same_signature_merges_and_keeps_the_first_wording():
    pool = HypothesisPool()
    first = pool.observe(sighting(tickets(0, 2)), cycle=1, reflection_id="r1")
    second = pool.observe(sighting(tickets(2, 4), text="若挡风板方向与BBU进风方向相反 则判不通过"), 2, "r2")
    pool.observe(sighting(tickets(4, 5)), 2, "r2")  # a second sighting in the same answer
    other = pool.observe(sighting(tickets(0, 1), text="若BBU未配备挡风板，则判不通过"), 2, "r2")
    assert second is first and other is not first and len(pool) == 2
    assert first.text == TEXT and first.tickets == set(tickets(0, 5)) and first.reflection_ids == ["r1", "r2"]


def test_promotable_orders_by_support():
    pool = HypothesisPool()
    for cycle in (1, 2):
        pool.observe(sighting(tickets(0, 12), text="若BBU未配备挡风板，则判不通过"), cycle, f"a{cycle}")
        pool.observe(sighting(tickets(0, 20)), cycle, f"b{cycle}")
    assert [entry.text for entry in pool.promotable(2, 12)] == [TEXT, "若BBU未配备挡风板，则判不通过"]


def test_promote_and_reject_close_a_hypothesis_and_record_events():
    pool = HypothesisPool()
    for cycle in (1, 2):
        pool.observe(sighting(tickets(0, 12)), cycle, f"r{cycle}")
        pool.observe(sighting(tickets(0, 12), text="若BBU未配备挡风板，则判不通过"), cycle, f"r{cycle}")
    promoted, rejected = (entry.signature for entry in pool.promotable(2, 12))
    pool.drain_events()
    assert pool.promote(promoted, cycle=3).status == "promoted"
    assert pool.reject(rejected, cycle=3, reason="gate_rejected").status == "rejected"
    assert pool.promotable(2, 12) == []
    pool.observe(sighting(tickets(40, 52)), cycle=4, reflection_id="r4")
    assert pool.promotable(2, 12) == []  # a promoted hypothesis never comes back
    events = pool.drain_events()
    assert [(e["event"], e["cycle"]) for e in events] == [("promoted", 3), ("rejected", 3), ("observed", 4)]
    assert events[0]["tickets"] == list(tickets(0, 12)) and events[1]["reason"] == "gate_rejected"
    with pytest.raises(VlqcError, match="already promoted"):
        pool.promote(promoted, cycle=5)
    with pytest.raises(VlqcError, match="no hypothesis"):
        pool.reject("0" * 16, cycle=5, reason="x")


def test_observed_events_carry_the_sighting_and_validate():
    pool = HypothesisPool()
    pool.observe(sighting(("QC-A-10::fail", "QC-A-2::fail")), cycle=0, reflection_id="e0-c0-b1")
    (event,) = pool.drain_events()
    assert event == {
        "event": "observed",
        "signature": signature(TEXT),
        "text": TEXT,
        "cycle": 0,
        "tickets": ["QC-A-2::fail", "QC-A-10::fail"],
        "reflection_id": "e0-c0-b1",
    }
    validate(event, EVENT_SCHEMA)
    assert pool.drain_events() == []


def test_event_schema_ties_fields_to_the_event_kind():
    observed = {"event": "observed", "signature": "0" * 16, "text": TEXT, "cycle": 1, "tickets": ["QC-A-1::fail"]}
    with pytest.raises(SchemaError):
        validate(observed, EVENT_SCHEMA)  # no reflection_id
    with pytest.raises(SchemaError):
        validate({**observed, "event": "rejected"}, EVENT_SCHEMA)  # no reason
    validate({**observed, "event": "promoted"}, EVENT_SCHEMA)


def test_an_invalid_sighting_changes_nothing():
    pool = HypothesisPool()
    with pytest.raises(SchemaError):
        pool.observe(sighting(tickets(0, 3)), cycle=-1, reflection_id="r1")
    with pytest.raises(SchemaError):
        pool.observe(sighting(()), cycle=1, reflection_id="r1")
    assert len(pool) == 0 and pool.drain_events() == []


def test_json_round_trip_is_validated():
    pool = HypothesisPool()
    for cycle in (1, 2):
        pool.observe(sighting(tickets(cycle, cycle + 12)), cycle, f"r{cycle}")
    pool.observe(Hypothesis("若BBU未配备挡风板，则判不通过", "配备齐全仍被判不通过", tickets(0, 1)), 2, "r2")
    pool.promote(signature(TEXT), cycle=2)
    doc = json.loads(json.dumps(pool.to_json(), ensure_ascii=False))
    again = HypothesisPool.from_json(doc)
    assert again.to_json() == doc
    entry = again.get(signature(TEXT))
    assert entry.status == "promoted" and entry.cycles == {1, 2} and len(entry.tickets) == 13
    assert again.get(signature("若BBU未配备挡风板，则判不通过")).dimension is None


def test_from_json_refuses_bad_documents():
    pool = HypothesisPool()
    pool.observe(sighting(tickets(0, 2)), cycle=1, reflection_id="r1")
    doc = pool.to_json()
    (entry,) = doc["hypotheses"]
    with pytest.raises(SchemaError, match="hypotheses.json"):
        HypothesisPool.from_json({"hypotheses": [{**entry, "status": "maybe"}]})
    with pytest.raises(SchemaError):
        HypothesisPool.from_json({"hypotheses": [{k: v for k, v in entry.items() if k != "falsifier"}]})
    with pytest.raises(VlqcError, match="does not match its text"):
        HypothesisPool.from_json({"hypotheses": [{**entry, "text": "若BBU未配备挡风板，则判不通过"}]})
    with pytest.raises(VlqcError, match="appears twice"):
        HypothesisPool.from_json({"hypotheses": [entry, entry]})
