"""Stage-B for one mission (rules stage_b_eval, stage_b_train): verdicts, review queue, metrics and reports
in a run folder, from the mission's Stage-A file and the guidance file the run starts from.

Exit status 0 with the run summary (JSON) on stdout; a bad input or setting stops the run with a message
naming it (exit status 1). Bad Stage-A lines and tickets without a valid vote do not stop it: they go to
<run-dir>/failure_malformed.jsonl.

With the hf backend the rule launches it under torchrun (`python -m torch.distributed.run
--nproc_per_node=N scripts/stage_b.py ...`): every process loads the checkpoint, rank 0 runs Stage-B and
splits each batch of prompts over all of them (vlqc.stage_b.sharded).

Example:
    python scripts/stage_b.py --mode eval --mission 挡风板安装检查 --stage-a results/挡风板安装检查_stage_a.jsonl \
        --guidance config/stage_b/挡风板安装检查.json --checkpoint results/train/sft/demo/merged \
        --run-dir results/stage_b/挡风板安装检查/eval/demo --settings '{"eval_grid": [{"temperature": 0.1}]}'
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from pathlib import Path

from vlqc.errors import VlqcError
from vlqc.missions import load_missions
from vlqc.stage_b.backends import make_backend
from vlqc.stage_b.engine import MODES, Settings, backend_config, run_stage_b, stage_b_config
from vlqc.stage_b.sharded import ShardedBackend, init_group, leave_group
from vlqc.torchrun import torchrun_rank


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mode", choices=MODES, required=True)
    parser.add_argument("--mission", required=True)
    parser.add_argument("--stage-a", type=Path, required=True, help="results/<mission>_stage_a.jsonl")
    parser.add_argument("--missions", type=Path, default=Path("config/missions.yaml"))
    parser.add_argument(
        "--guidance", type=Path, required=True, help="guidance file the run starts from (schema stage_b_guidance)"
    )
    parser.add_argument("--checkpoint", type=Path, required=True, help="model folder (hf) or tokenizer folder (openai)")
    parser.add_argument("--run-dir", type=Path, required=True, help="without the files of an earlier run")
    parser.add_argument("--settings", type=json.loads, default={}, help="JSON object: the stage_b config section")
    args = parser.parse_args(argv)
    rank, world, local_rank = torchrun_rank()
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s rank {rank} %(levelname)s %(message)s")
    try:
        section = stage_b_config(args.settings, "--settings")
        if world > 1 and section["backend"] != "hf":
            raise VlqcError(f"only the hf backend runs under torchrun, not {section['backend']} ({world} processes)")
        backend = make_backend(backend_config(section, args.checkpoint, local_rank))
        settings = Settings.from_config(section, args.mode)
    except (VlqcError, OSError) as exc:
        print(f"rank {rank}: error: {exc}", file=sys.stderr)
        return 1
    if world == 1:
        return _drive(args, backend, settings)
    init_group()
    sharded = ShardedBackend(backend, rank, world)
    if rank:
        sharded.serve()
        leave_group()
        return 0
    try:
        # Each process generates batch_size prompts at a time: a call hands out that many per process.
        status = _drive(args, sharded, dataclasses.replace(settings, batch_size=settings.batch_size * world))
    finally:
        sharded.close()
    leave_group()
    return status


def _drive(args: argparse.Namespace, backend, settings: Settings) -> int:
    try:
        summary = run_stage_b(
            args.stage_a,
            args.mission,
            load_missions(args.missions),
            args.guidance,
            args.run_dir,
            backend,
            settings,
            mode=args.mode,
        )
    except (VlqcError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(summary, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
