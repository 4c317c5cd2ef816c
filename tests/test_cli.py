"""vlqc.cli: settings checked and defaulted from the schema, errors as one line and exit status 1,
the summary as one JSON line."""

from __future__ import annotations

import json
import logging

import pytest

from vlqc import cli
from vlqc.errors import VlqcError
from vlqc.schemas import defaults


def parser() -> cli.Parser:
    parser = cli.Parser("Split a dataset.\n\nMore words for --help.", settings="convert")
    parser.add_argument("--out", required=True)
    return parser


def test_settings_arrive_checked_and_with_the_schema_defaults(capsys):
    seen = {}

    def run(args):
        seen.update(args.settings)
        logging.getLogger("x").info("working")
        return {"out": args.out, "任务": "挡风板安装检查"}

    assert cli.main(run, parser(), ["--out", "o", "--settings", '{"split_seed": 5}']) == 0
    assert seen == {**defaults("config", "convert"), "split_seed": 5}
    captured = capsys.readouterr()
    assert json.loads(captured.out) == {"out": "o", "任务": "挡风板安装检查"}
    assert "挡风板安装检查" in captured.out  # not \u-escaped


def test_bad_settings_name_the_key_and_exit_1(capsys):
    def run(args):
        raise AssertionError("not reached")

    assert cli.main(run, parser(), ["--out", "o", "--settings", '{"split_sed": 5, "tiny_val": 0}']) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: --settings does not match schema config:")
    assert "convert.split_sed: unknown key" in err and "convert.tiny_val: 0 is less than the minimum of 1" in err


def test_settings_must_be_json():
    with pytest.raises(SystemExit) as exit:
        cli.main(lambda args: None, parser(), ["--out", "o", "--settings", "{split_seed: 5}"])
    assert exit.value.code == 2  # argparse's usage error


def test_errors_become_one_line_with_the_prefix(capsys):
    problem = "results/x.jsonl:3: label: 'maybe' is not one of ['pass', 'fail']"

    def run(args):
        raise VlqcError(problem)

    assert cli.main(run, parser(), ["--out", "o", "--settings", "{}"], prefix="rank 1: ") == 1
    assert capsys.readouterr().err == f"rank 1: error: {problem}\n"
    assert cli.main(lambda args: {"images": 3}, parser(), ["--out", "o", "--settings", "{}"], prefix="rank 1: ") == 0
    assert capsys.readouterr().out == 'rank 1: {"images": 3}\n'  # ranks share a log: each line says whose it is

    def missing(args):
        open(args.out, encoding="utf-8")

    assert cli.main(missing, parser(), ["--out", "no/such/file", "--settings", "{}"]) == 1
    assert "error: [Errno 2] No such file or directory: 'no/such/file'" in capsys.readouterr().err


def test_a_parser_without_settings_has_no_settings_option(capsys):
    plain = cli.Parser("Merge.")
    plain.add_argument("--out", required=True)
    assert cli.main(lambda args: None, plain, ["--out", "o"]) == 0
    assert capsys.readouterr().out == ""  # no summary, no line
    with pytest.raises(SystemExit):
        plain.parse_args(["--out", "o", "--settings", "{}"])


def test_other_exceptions_are_not_swallowed():
    def run(args):
        raise KeyError("a bug shows its traceback")

    with pytest.raises(KeyError):
        cli.main(run, parser(), ["--out", "o", "--settings", "{}"])
