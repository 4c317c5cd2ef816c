"""One Stage-A rank under torchrun (rule stage_a_infer): summarise this rank's share of the
selected photos and write its rank file.

Launched as `python -m torch.distributed.run --standalone --nproc_per_node=N --max-restarts=0
scripts/stage_a_infer.py ...`; RANK, WORLD_SIZE and LOCAL_RANK come from torchrun. A rank that
fails exits non-zero, which fails the whole job with the rank named.
"""

import argparse
import json
import logging
import sys
from pathlib import Path

import torch

from vlqc.errors import VlqcError
from vlqc.missions import load_missions
from vlqc.stage_a.infer import Settings, run_rank
from vlqc.stage_a.jobs import SHARDING_MODES, read_selection
from vlqc.torchrun import torchrun_rank


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--selection", type=Path, required=True)
    parser.add_argument("--mission", required=True)
    parser.add_argument("--missions", type=Path, default=Path("config/missions.yaml"))
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--mode", choices=SHARDING_MODES, default="per_group")
    parser.add_argument("--out", required=True, help="rank file path with {rank} in it")
    parser.add_argument("--resume-dir", type=Path, required=True, help="finished items of earlier attempts")
    parser.add_argument("--gpus", type=int, default=0, help="0: CPU ranks")
    parser.add_argument("--settings", type=json.loads, default={}, help="JSON object of Settings fields")
    args = parser.parse_args()
    rank, world, local_rank = torchrun_rank()
    logging.basicConfig(level=logging.INFO, format=f"rank {rank}: %(levelname)s %(message)s")
    cuda = args.gpus > 0
    device = f"cuda:{local_rank}" if cuda else "cpu"
    try:
        counts = run_rank(
            read_selection(args.selection),
            mission=args.mission,
            missions=load_missions(args.missions),
            checkpoint=args.checkpoint,
            settings=Settings(**args.settings),
            mode=args.mode,
            rank=rank,
            world=world,
            out=Path(args.out.format(rank=rank)),
            resume_dir=args.resume_dir,
            device=device,
            dtype=torch.bfloat16 if cuda else torch.float32,
        )
    except VlqcError as exc:
        print(f"rank {rank}: error: {exc}", file=sys.stderr)
        return 1
    logging.info("%s", json.dumps(counts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
