"""One Stage-A rank under torchrun (rule stage_a_infer): summarise this rank's share of the
selected photos and write its rank file.

Launched as `python -m torch.distributed.run --standalone --nproc_per_node=N --max-restarts=0
scripts/stage_a_infer.py ...`; RANK, WORLD_SIZE and LOCAL_RANK come from torchrun. A rank that
fails exits non-zero, which fails the whole job with the rank named. Settings: the `stage_a`
config section (generation settings, sharding_mode, gpus, shards; max_pixels resolved by the rule).
With `stage_a.shards` K > 1 the job is shard --shard of K: its ranks take their share of the images dealt
over the ranks of all K shards (vlqc.stage_a.jobs.dealing_rank); rank files keep the job's own rank in
their names. With --stats, each rank also writes what it did (stage_a_rank_stats, rank and world among all
shards' ranks), which the merge sums.
--checkpoint is a model folder or a LoRA adapter folder, whose base is --base (else the folder its
adapter_config.json names). With --manifest-dir, rank 0 writes the job's run manifest there first
(vlqc.manifest: resolved settings, checkpoint identity, versions, git sha).
"""

import argparse
import sys
from pathlib import Path

import torch

from vlqc import cli
from vlqc.errors import VlqcError
from vlqc.inference.checkpoint import checkpoint_identity
from vlqc.jsonl import write_json
from vlqc.manifest import write_manifest
from vlqc.missions import load_missions
from vlqc.stage_a.infer import Settings, run_rank
from vlqc.stage_a.jobs import dealing_rank, read_selection
from vlqc.torchrun import torchrun_rank


def arguments() -> cli.Parser:
    parser = cli.Parser(__doc__, settings="stage_a")
    parser.add_argument("--selection", type=Path, required=True)
    parser.add_argument("--mission", required=True)
    parser.add_argument("--missions", type=Path, required=True, help="missions file")
    parser.add_argument("--checkpoint", type=Path, required=True, help="model folder or LoRA adapter folder")
    parser.add_argument("--base", type=Path, help="base model folder of a LoRA adapter checkpoint")
    parser.add_argument("--out", required=True, help="rank file path with {rank} in it")
    parser.add_argument("--resume-dir", type=Path, required=True, help="finished items of earlier attempts")
    parser.add_argument("--stats", help="rank stats path with {rank} in it (stage_a_rank_stats)")
    parser.add_argument("--manifest-dir", type=Path, help="folder of the job's run manifest (written by rank 0)")
    parser.add_argument("--shard", type=int, help="which of the stage_a.shards jobs this is, from 0 (with shards > 1)")
    return parser


def main(argv: list[str] | None = None) -> int:
    rank, world, local_rank = torchrun_rank()

    def run(args: argparse.Namespace) -> dict:
        cuda = args.settings["gpus"] > 0
        shards = args.settings["shards"]
        if (args.shard is None) != (shards == 1):
            raise VlqcError(f"--shard goes with stage_a.shards > 1 (shards {shards}, --shard {args.shard})")
        shard = args.shard or 0
        dealt_rank, dealt_world = dealing_rank(rank, world, shard, shards)
        if args.manifest_dir and rank == 0:
            extra = {"job": "stage_a", "checkpoint": checkpoint_identity(args.checkpoint, args.base), "world": world}
            write_manifest(
                args.manifest_dir,
                {"mission": args.mission, "stage_a": args.settings},
                [args.missions],
                extra=extra | ({"shard": shard} if shards > 1 else {}),
            )
        counts = run_rank(
            read_selection(args.selection),
            mission=args.mission,
            missions=load_missions(args.missions),
            checkpoint=args.checkpoint,
            base=args.base,
            settings=Settings.from_config(args.settings),
            mode=args.settings["sharding_mode"],
            rank=rank,
            world=world,
            shard=shard,
            shards=shards,
            out=Path(args.out.format(rank=rank)),
            resume_dir=args.resume_dir,
            device=f"cuda:{local_rank}" if cuda else "cpu",
            dtype=torch.bfloat16 if cuda else torch.float32,
        )
        if args.stats:
            stats = {"rank": dealt_rank, "world": dealt_world, **counts}
            write_json(args.stats.format(rank=rank), stats, "stage_a_rank_stats")
        return counts

    return cli.main(run, arguments(), argv, prefix=f"rank {rank}: ")


if __name__ == "__main__":
    sys.exit(main())
