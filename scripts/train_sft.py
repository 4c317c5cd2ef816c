"""Training through ms-swift under torchrun: SFT (rule train_sft), or Stage-2 AB for a config with stage2_ab
(rule train_stage2, docs/stage2.md).

Settings: the `train` config section (cpu_ranks, gpus); what is trained comes from --config.
"""

import argparse
import sys
from pathlib import Path

from vlqc import cli
from vlqc.train.run import train


def arguments() -> cli.Parser:
    parser = cli.Parser(__doc__, settings="train")
    parser.add_argument("--config", type=Path, required=True, help="training config YAML (extends allowed)")
    parser.add_argument(
        "--base", type=Path, required=True, help="base model folder (Stage-2: the init_from run's merged model)"
    )
    parser.add_argument("--data", type=Path, required=True, help="folder with the ms-swift train.jsonl / val.jsonl")
    parser.add_argument("--out", type=Path, required=True, help="run folder results/train/{sft,stage2}/<run>")
    parser.add_argument("--threads", type=int, required=True, help="CPU threads shared by the processes")
    return parser


def run(args: argparse.Namespace) -> dict:
    s = args.settings
    checkpoint = train(args.config, args.base, args.data, args.out, s["cpu_ranks"], s["gpus"], args.threads)
    return {"checkpoint": str(checkpoint)}


def main(argv: list[str] | None = None) -> int:
    return cli.main(run, arguments(), argv)


if __name__ == "__main__":
    sys.exit(main())
