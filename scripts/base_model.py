"""Build the tiny Qwen3-VL base model, or check and link a real local checkpoint (rule base_model).

Settings: the `base_model` config section. With `checkpoint` set, that folder is checked and
linked; otherwise the tiny model of `sizes` is built from `seed`.
"""

import argparse
import sys
from pathlib import Path

from vlqc import cli
from vlqc.train.base_model import build_tiny_base, link_real_checkpoint


def arguments() -> cli.Parser:
    parser = cli.Parser(__doc__, settings="base_model")
    parser.add_argument("--out", type=Path, required=True, help="output folder results/train/base/<name>")
    return parser


def run(args: argparse.Namespace) -> dict:
    settings = args.settings
    if settings["checkpoint"] is not None:
        manifest = link_real_checkpoint(Path(settings["checkpoint"]), args.out)
    else:
        manifest = build_tiny_base(args.out, settings["sizes"], settings["seed"])
    return {"out": str(args.out), "kind": manifest["kind"], "parameters": manifest["parameters"]}


def main(argv: list[str] | None = None) -> int:
    return cli.main(run, arguments(), argv)


if __name__ == "__main__":
    sys.exit(main())
