"""Stage-B for one mission (rules stage_b_eval, stage_b_train): verdicts, review queue, metrics and reports
in a run folder, from the mission's Stage-A file and the guidance file the run starts from.

Settings: the `stage_b` config section (`--settings`; a missing key takes its schema default). Exit status 0
with the run summary (one JSON line) on stdout; a bad input or setting stops the run with a message naming it
(exit status 1). Bad Stage-A lines and tickets without a valid vote do not stop it: they go to
<run-dir>/failure_malformed.jsonl.

With the hf backend the rule launches it under torchrun (`python -m torch.distributed.run
--nproc_per_node=N scripts/stage_b.py ...`): every process loads the checkpoint, rank 0 runs Stage-B and
splits each batch of prompts over all of them (vlqc.stage_b.sharded). Each line a process writes then
starts with `rank <r>: `; rank 0 prints the summary, and a failure of any rank fails the job.

Example:
    python scripts/stage_b.py --mode eval --mission 挡风板安装检查 --stage-a results/挡风板安装检查_stage_a.jsonl \
        --missions config/missions.yaml --guidance config/stage_b/挡风板安装检查.json \
        --checkpoint results/train/sft/demo/merged --run-dir results/stage_b/挡风板安装检查/eval/demo \
        --settings '{"eval_grid": [{"temperature": 0.1}]}'
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Any

from vlqc import cli
from vlqc.errors import VlqcError
from vlqc.inference.checkpoint import checkpoint_identity
from vlqc.manifest import write_manifest
from vlqc.missions import load_missions
from vlqc.stage_b.backends import make_backend
from vlqc.stage_b.engine import MODES, Settings, backend_config, run_stage_b
from vlqc.stage_b.rollout import ChatBackend
from vlqc.stage_b.sharded import ShardedBackend, init_group, leave_group
from vlqc.torchrun import torchrun_rank


def arguments() -> cli.Parser:
    parser = cli.Parser(__doc__, settings="stage_b")
    parser.add_argument("--mode", choices=MODES, required=True)
    parser.add_argument("--mission", required=True)
    parser.add_argument("--stage-a", type=Path, required=True, help="results/<mission>_stage_a.jsonl")
    parser.add_argument("--missions", type=Path, required=True, help="missions file")
    parser.add_argument(
        "--guidance", type=Path, required=True, help="guidance file the run starts from (schema stage_b_guidance)"
    )
    parser.add_argument(
        "--checkpoint", type=Path, required=True, help="model or LoRA adapter folder (hf), or tokenizer folder (openai)"
    )
    parser.add_argument("--base", type=Path, help="base model folder of a LoRA adapter checkpoint")
    parser.add_argument("--run-dir", type=Path, required=True, help="without the files of an earlier run")
    return parser


def main(argv: list[str] | None = None) -> int:
    rank, world, local_rank = torchrun_rank()

    def run(args: argparse.Namespace) -> dict[str, Any] | None:
        section = args.settings
        if world > 1 and section["backend"] != "hf":
            raise VlqcError(f"only the hf backend runs under torchrun, not {section['backend']} ({world} processes)")
        backend = make_backend(backend_config(section, args.checkpoint, local_rank, args.base))
        settings = Settings.from_config(section, args.mode)
        if world == 1:
            return _run_stage_b(args, backend, settings)
        sharded = ShardedBackend(backend, rank, world)
        init_group()
        if rank:
            # A serving rank that fails leaves without the barrier: rank 0 waits in another collective, and
            # torchrun (--max-restarts=0) stops it once this process exits non-zero.
            sharded.serve()
            leave_group()
            return None
        try:
            # Each process generates batch_size prompts at a time: a call hands out that many per process.
            return _run_stage_b(args, sharded, dataclasses.replace(settings, batch_size=settings.batch_size * world))
        finally:
            # Also after an error: the serving ranks stop serving, and every rank leaves the group together.
            sharded.close()
            leave_group()

    # Ranks share one log: under torchrun each line says whose it is.
    return cli.main(run, arguments(), argv, prefix=f"rank {rank}: " if world > 1 else "")


def _run_stage_b(args: argparse.Namespace, backend: ChatBackend, settings: Settings) -> dict[str, Any]:
    def manifest(run_dir: Path) -> None:
        # The run's manifest (vlqc.manifest), written once the folder is known to be fresh.
        write_manifest(
            run_dir,
            {"mode": args.mode, "mission": args.mission, "stage_b": args.settings},
            [args.guidance, args.missions],
            extra={
                "job": "stage_b",
                "checkpoint": checkpoint_identity(args.checkpoint, args.base),
                "world": torchrun_rank()[1],
            },
        )

    return run_stage_b(
        args.stage_a,
        args.mission,
        load_missions(args.missions),
        args.guidance,
        args.run_dir,
        backend,
        settings,
        mode=args.mode,
        manifest=manifest,
    )


if __name__ == "__main__":
    sys.exit(main())
