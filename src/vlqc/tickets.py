"""Ticket layout shared by conversion and Stage-A: `<mission>/<审核通过|审核不通过>/<group>/`."""

from __future__ import annotations

import re

# Scan order matters downstream: 审核不通过 is visited before 审核通过.
LABEL_DIRS = {"审核不通过": "fail", "审核通过": "pass"}

GROUP_ID_RE = re.compile(r"^(QC-[A-Za-z]+-[0-9]{8}-[0-9]+)")


def group_id_from(stem: str, fallback: str) -> str:
    """The origin group id at the start of an image stem, else the group folder name."""
    match = GROUP_ID_RE.match(stem)
    return match.group(1) if match else fallback


def natural_key(name: str) -> list[str | int]:
    """Sort key that orders digit runs by value: `x_2.jpg` before `x_10.jpg`."""
    # re.split with a capture group alternates text (even index) and digit runs (odd index),
    # so keys compare position by position without mixing str and int.
    return [int(part) if index % 2 else part for index, part in enumerate(re.split(r"([0-9]+)", name))]
