"""Find the ticket photo groups of a mission and draw a reproducible sample of them.

Layout (docs/stage-a.md#input-layout): `<root>/<mission>/{审核通过|审核不通过}/<group_dir>/*.{jpg,jpeg,png}`.
审核不通过 is scanned before 审核通过, group folders in name order, images in natural order of
their file names. A group without images is kept (with `images=()`) so that the caller records
it as a failure instead of dropping it silently.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from vlqc.errors import VlqcError
from vlqc.tickets import LABEL_DIRS, group_id_from, natural_key

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png"})


@dataclass(frozen=True)
class Group:
    seq: int  # position in the list the group belongs to
    mission: str
    label: str  # "pass" | "fail"
    group_id: str
    folder: Path
    images: tuple[Path, ...]


def discover(root: Path, mission: str) -> list[Group]:
    """Every group of `mission` under `root`, fail groups first, numbered 0..n-1."""
    mission_dir = _mission_dir(Path(root), mission)
    _warn_unknown_entries(mission_dir)
    folders = [(label, folder) for name, label in LABEL_DIRS.items() for folder in _group_dirs(mission_dir / name)]
    return [_group(seq, mission, label, folder) for seq, (label, folder) in enumerate(folders)]


def _mission_dir(root: Path, mission: str) -> Path:
    if not root.is_dir():
        raise VlqcError(f"Stage-A input root not found (or not a folder): {root}")
    mission_dir = root / mission
    if not mission_dir.is_dir():
        raise VlqcError(f"mission folder not found (or not a folder): {mission_dir}")
    return mission_dir


def _warn_unknown_entries(mission_dir: Path) -> None:
    for entry in sorted(mission_dir.iterdir(), key=lambda p: p.name):
        if entry.name not in LABEL_DIRS or not entry.is_dir():
            log.warning("skipping %s: not a label folder (%s)", entry, " or ".join(LABEL_DIRS))


def _group_dirs(label_dir: Path) -> list[Path]:
    """Group folders of one label in name order; a label folder may be absent (no such tickets)."""
    if not label_dir.is_dir():
        return []
    folders = []
    for entry in sorted(label_dir.iterdir(), key=lambda p: p.name):
        if entry.is_dir():
            folders.append(entry)
        else:
            log.warning("skipping %s: not a group folder", entry)
    return folders


def _images(folder: Path) -> tuple[Path, ...]:
    # Keep anything with an image suffix that is not a folder: a broken link then fails
    # later as missing_file instead of vanishing. The plain name breaks natural-key ties
    # (x_2 vs x_02) so the order never depends on the file system.
    found = [p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and not p.is_dir()]
    return tuple(sorted(found, key=lambda p: (natural_key(p.name), p.name)))


def _group(seq: int, mission: str, label: str, folder: Path) -> Group:
    images = _images(folder)
    group_id = group_id_from(images[0].stem, folder.name) if images else folder.name
    return Group(seq=seq, mission=mission, label=label, group_id=group_id, folder=folder, images=images)


def sample_groups(groups: Sequence[Group], pass_n: int | None, fail_n: int | None, seed: int) -> list[Group]:
    """`pass_n` pass and `fail_n` fail groups (None = all), in discovery order, renumbered 0..m-1.

    The draw depends only on the list and the seed, so every process of a distributed run
    picks the same groups.
    """
    chosen = _draw(groups, "pass", pass_n, random.Random(seed)) | _draw(groups, "fail", fail_n, random.Random(seed + 1))
    kept = [group for index, group in enumerate(groups) if index in chosen]
    return [replace(group, seq=seq) for seq, group in enumerate(kept)]


def _draw(groups: Sequence[Group], label: str, n: int | None, rng: random.Random) -> set[int]:
    """Indices into `groups` of the drawn groups of one label."""
    indices = [index for index, group in enumerate(groups) if group.label == label]
    if n is None:
        return set(indices)
    if n < 0:
        raise VlqcError(f"number of {label} groups to sample must be >= 0, got {n}")
    if n > len(indices):
        log.warning("asked for %d %s groups but only %d exist; taking all of them", n, label, len(indices))
        return set(indices)
    return set(rng.sample(indices, n))
