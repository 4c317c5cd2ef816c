"""What each Stage-A rank works on: the selection file, image jobs and per-rank batches.

The select step writes the sampled groups once (`selection.jsonl`); every rank reads the same
file, so all ranks agree on the groups without talking to each other. Sharding:

- `per_group`: groups `[rank::world]`, each group's images batched on their own (a batch never
  mixes groups);
- `per_image`: every image of every group is one job `(group_seq, image_index)`, jobs
  `[rank::world]` in batches of `batch_size`, so groups of very different sizes spread evenly.

Shards (`stage_a.shards`, docs/stage-a.md#shards): a mission's inference may run as K jobs, each its
own torchrun of `world` ranks. They deal as one world of K × world ranks, in which rank r of shard s
is rank s × world + r (`dealing_rank`); one shard is the plain case, its ranks keeping their numbers.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from vlqc.errors import VlqcError
from vlqc.jsonl import read_jsonl, write_jsonl
from vlqc.stage_a.discover import Group

SHARDING_MODES = ("per_group", "per_image")


@dataclass(frozen=True)
class ImageJob:
    group_seq: int
    group_id: str
    label: str
    image_index: int  # 1-based: the image's key in the merged record is image_<image_index>
    path: Path

    def row(self) -> dict:
        """The identifying part of this job's rank row (stage_a_image_row)."""
        return {
            "group_seq": self.group_seq,
            "group_id": self.group_id,
            "label": self.label,
            "image_index": self.image_index,
            "image_name": self.path.name,
        }


def write_selection(path: Path, groups: Sequence[Group]) -> int:
    rows = (
        {
            "group_seq": g.seq,
            "group_id": g.group_id,
            "mission": g.mission,
            "label": g.label,
            "folder": str(g.folder),
            "images": [p.name for p in g.images],
        }
        for g in groups
    )
    return write_jsonl(path, rows, schema="stage_a_group_selection")


def read_selection(path: Path) -> list[Group]:
    groups = [
        Group(
            r["group_seq"],
            r["mission"],
            r["label"],
            r["group_id"],
            Path(r["folder"]),
            tuple(Path(r["folder"]) / name for name in r["images"]),
        )
        for r in read_jsonl(path, schema="stage_a_group_selection")
    ]
    if [g.seq for g in groups] != list(range(len(groups))):
        raise VlqcError(f"{path}: group_seq must run 0..{len(groups) - 1} in order")
    return groups


def image_jobs(group: Group) -> list[ImageJob]:
    return [ImageJob(group.seq, group.group_id, group.label, i, p) for i, p in enumerate(group.images, start=1)]


def _chunks(jobs: Sequence[ImageJob], size: int) -> Iterator[list[ImageJob]]:
    for start in range(0, len(jobs), size):
        yield list(jobs[start : start + size])


def dealing_rank(rank: int, world: int, shard: int, shards: int) -> tuple[int, int]:
    """(rank, world) of torchrun rank `rank` of `world` in shard `shard` of `shards`, among the ranks of all shards."""
    if not 0 <= rank < world or not 0 <= shard < shards:
        raise VlqcError(
            f"need 0 <= rank < world and 0 <= shard < shards (rank {rank} of {world}, shard {shard} of {shards})"
        )
    return shard * world + rank, shards * world


def rank_batches(groups: Sequence[Group], mode: str, rank: int, world: int, batch_size: int) -> list[list[ImageJob]]:
    """The batches rank `rank` of `world` generates, in order (with shards: the dealing rank and world)."""
    if mode not in SHARDING_MODES:
        raise VlqcError(f"sharding_mode must be one of {', '.join(SHARDING_MODES)}, not {mode!r}")
    if not 0 <= rank < world or batch_size < 1:
        raise VlqcError(f"need 0 <= rank < world and batch_size >= 1 (rank {rank}, world {world}, batch {batch_size})")
    if mode == "per_group":
        return [batch for g in groups[rank::world] for batch in _chunks(image_jobs(g), batch_size)]
    everything = [job for g in groups for job in image_jobs(g)]
    return list(_chunks(everything[rank::world], batch_size))
