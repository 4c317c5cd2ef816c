"""Merge the Stage-A rank files into <mission>_stage_a.jsonl and its failure file (rule stage_a_merge).

Groups that cannot be merged go to the failure file with a reason code; the exit status is 0 then
too. Unreadable or invalid inputs stop the merge with a message naming the file (exit status 1).

Example:
    python scripts/stage_a_merge.py --mission 挡风板安装检查 \
        --selection results/stage_a/挡风板安装检查/selection.jsonl \
        --out results/挡风板安装检查_stage_a.jsonl --failures results/挡风板安装检查_stage_a.failures.jsonl \
        --stats results/stage_a/挡风板安装检查/stats.json \
        results/stage_a/挡风板安装检查/挡风板安装检查_stage_a.images.rank0.jsonl ... \
        --rank-stats results/stage_a/挡风板安装检查/rank0.stats.json ...

With stage_a.shards K > 1 the rank files and rank stats of shard s lie in results/stage_a/<mission>/shard<s>/,
and --ranks-per-shard gives the ranks of each shard job (docs/stage-a.md#shards).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from vlqc import cli
from vlqc.errors import SchemaError, VlqcError
from vlqc.jsonl import read_jsonl
from vlqc.stage_a.merge import merge, merge_stats, write_merge, write_stats

log = logging.getLogger("stage_a_merge")


def _selection(path: Path) -> list[dict]:
    try:
        return list(read_jsonl(path, schema="stage_a_group_selection"))
    except UnicodeDecodeError as exc:
        raise SchemaError(f"{path}: not UTF-8: {exc.reason}") from exc


def arguments() -> cli.Parser:
    parser = cli.Parser(__doc__)
    parser.add_argument("--selection", type=Path, required=True, help="selected groups (stage_a_group_selection)")
    parser.add_argument("--out", type=Path, required=True, help="merged records: results/<mission>_stage_a.jsonl")
    parser.add_argument("--failures", type=Path, required=True, help="groups left out, with a reason code")
    parser.add_argument("--mission", required=True)
    parser.add_argument("--stats", type=Path, help="throughput and failure counts (stage_a_stats), with --rank-stats")
    parser.add_argument("--rank-stats", type=Path, nargs="+", help="the ranks' stats files (stage_a_rank_stats)")
    parser.add_argument(
        "--ranks-per-shard", type=int, help="ranks of each shard job: needed for rank files in shard<s>/ folders"
    )
    parser.add_argument("rank_files", type=Path, nargs="+", help="per-image rows: …rank<r>.jsonl")
    return parser


def run(args: argparse.Namespace) -> dict:
    if (args.stats is None) != (args.rank_stats is None):
        raise VlqcError("--stats and --rank-stats go together: the stats sum the ranks' stats files")
    result = merge(_selection(args.selection), args.rank_files, args.mission, args.ranks_per_shard)
    stats = merge_stats(result, args.mission, args.rank_stats) if args.stats else None
    write_merge(result, args.out, args.failures)
    if stats is not None:
        write_stats(stats, args.stats)
    counts = result.counts
    reasons = ", ".join(f"{reason} {n}" for reason, n in counts["failed_by_reason"].items()) or "none"
    log.info(
        "%s: selected %d, written %d, failed %d (%s)",
        args.mission,
        counts["selected"],
        counts["written"],
        counts["failed"],
        reasons,
    )
    return counts


def main(argv: list[str] | None = None) -> int:
    return cli.main(run, arguments(), argv)


if __name__ == "__main__":
    sys.exit(main())
