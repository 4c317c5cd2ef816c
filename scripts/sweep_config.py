"""Write the resolved training config of one sweep point (rule sweep_config).

Settings: the sweep narrowed to this point, `{"<sweep>": {"base": …, "axes": {key: [value]}, "max_steps": …}}`
(the `sweeps` section with one entry whose axes hold one value each; vlqc.evaluation.sweep.one_point).

Example:
    python scripts/sweep_config.py --sweep demo --point learning_rate-0.001__train_vit_norms-false \
        --settings '{"demo": {"base": "config/train/align.yaml", "max_steps": 24,
                     "axes": {"tuner.learning_rate": [0.001], "tuner.train_vit_norms": [false]}}}' \
        --out results/sweeps/demo/learning_rate-0.001__train_vit_norms-false/config.json
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from vlqc import cli
from vlqc.errors import VlqcError
from vlqc.evaluation.sweep import find_point, point_config
from vlqc.jsonl import write_json


def arguments() -> cli.Parser:
    parser = cli.Parser(__doc__, settings="sweeps")
    parser.add_argument("--sweep", required=True, help="the sweep's name (a key of the settings)")
    parser.add_argument("--point", required=True, help="the point's name (results/sweeps/<sweep>/<point>/)")
    parser.add_argument("--out", type=Path, required=True, help="the point's config.json")
    return parser


def run(args: argparse.Namespace) -> dict:
    if args.sweep not in args.settings:
        raise VlqcError(f"--settings has no sweep {args.sweep!r}: {', '.join(args.settings) or 'none'}")
    sweep = args.settings[args.sweep]
    point = find_point(args.sweep, sweep, args.point)
    write_json(args.out, point_config(args.sweep, sweep, point))
    return {"point": point.name, "config": str(args.out), "overrides": dict(point.values)}


def main(argv: list[str] | None = None) -> int:
    return cli.main(run, arguments(), argv)


if __name__ == "__main__":
    sys.exit(main())
