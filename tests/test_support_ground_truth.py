"""Stage-A records from ground-truth summaries: one per ticket, photos in discovery order."""

from support.ground_truth import ground_truth_records

from vlqc.schemas import validate

MISSION = "挡风板安装检查"


def sample(group: str, label: str, k: int, mission: str = MISSION) -> dict:
    stem = f"{group}_{k}"
    return {
        "sample_id": f"{mission}/{label}/{group}/{stem}",
        "images": [f"images/{mission}/{group}/{stem}.jpg"],
        "summary": f"s{k}",
        "ticket": {"mission": mission, "label": label, "group_id": group},
    }


def test_one_record_per_ticket_in_natural_photo_order():
    outside_tickets = sample("G3", "pass", 1)
    del outside_tickets["ticket"]
    samples = [
        sample("G1", "pass", 10),
        sample("G1", "pass", 2),
        sample("G1", "fail", 1),
        sample("G2", "pass", 1, mission="BBU接地线检查"),
        outside_tickets,
    ]
    records = ground_truth_records(samples, MISSION)
    assert [(r["group_id"], r["label"]) for r in records] == [("G1", "fail"), ("G1", "pass")]
    assert records[1]["images"] == ["G1_2.jpg", "G1_10.jpg"]
    assert records[1]["per_image"] == {"image_1": "s2", "image_2": "s10"}
    for record in records:
        validate(record, "stage_a_group")
