"""scripts/stage_b.py: settings through vlqc.cli, and the torchrun group on every path (real gloo ranks).

The backend is the scripted one of test_stage_b_engine (`make_backend` replaced in the script's globals), so
these tests load no model; the Stage-B run itself is covered there and end to end in test_e2e_stage_b.py.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import runpy
import socket
from pathlib import Path

import pytest
import torch.multiprocessing as mp
from conftest import REPO
from test_stage_b_engine import MISSION, ScriptedBackend, write_seed, write_stage_a

from vlqc.jsonl import read_json, read_jsonl
from vlqc.schemas import defaults

SCRIPT = REPO / "scripts" / "stage_b.py"
WORLD = 2


def script_main(backend: ScriptedBackend):
    """The script's `main`, building `backend` whatever the settings say."""
    main = runpy.run_path(str(SCRIPT))["main"]
    main.__globals__["make_backend"] = lambda config: backend
    return main


def argv(tmp_path: Path, run_dir: Path, settings: dict, stage_a: Path | None = None) -> list[str]:
    return [
        *("--mode", "eval", "--mission", MISSION, "--missions", str(REPO / "config" / "missions.yaml")),
        *("--stage-a", str(stage_a or write_stage_a(tmp_path / "stage_a.jsonl"))),
        *("--guidance", str(write_seed(tmp_path / "seed.json")), "--checkpoint", str(tmp_path)),
        *("--run-dir", str(run_dir), "--settings", json.dumps(settings)),
    ]


def test_one_process_takes_the_schema_defaults_and_prints_the_summary(tmp_path, monkeypatch, capsys):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    backend = ScriptedBackend()
    assert script_main(backend)(argv(tmp_path, tmp_path / "run", {})) == 0
    summary = json.loads(capsys.readouterr().out)  # one JSON line, no rank prefix outside torchrun
    assert (summary["mode"], summary["tickets"]) == ("eval", 10)
    # The eval grid and the batch size are the schema's, as no setting was given.
    grid = [row["sampler"]["temperature"] for row in read_jsonl(tmp_path / "run" / "trajectories.jsonl")]
    assert grid == [entry["temperature"] for entry in defaults("config", "stage_b")["eval_grid"]] * 10
    assert len(backend.calls["verdict"]) == 10
    # The run manifest: the settings as read (defaults filled), the checkpoint, the guidance and missions copied.
    metadata = read_json(tmp_path / "run" / "run_metadata.json", schema="run_metadata")
    assert (metadata["job"], metadata["world"], metadata["checkpoint"]["path"]) == ("stage_b", 1, str(tmp_path))
    resolved = read_json(tmp_path / "run" / "resolved_config.json")
    assert resolved["mode"] == "eval" and resolved["stage_b"]["eval_grid"] == defaults("config", "stage_b")["eval_grid"]
    assert sorted(p.name for p in (tmp_path / "run" / "sources").iterdir()) == ["00-seed.json", "01-missions.yaml"]


def test_only_hf_runs_under_torchrun_and_the_error_names_the_rank(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    settings = {"backend": "openai"}
    assert script_main(ScriptedBackend())(argv(tmp_path, tmp_path / "run", settings)) == 1
    error = "rank 1: error: only the hf backend runs under torchrun, not openai (2 processes)\n"
    assert capsys.readouterr().err == error


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank: int, ports: list[int], tmp: str) -> None:
    """Two script runs on this rank: one whose Stage-A file is missing, then a good one."""
    tmp_path = Path(tmp)
    results = {}
    for name, port in zip(("failing", "good"), ports):
        os.environ.update(
            MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2"
        )
        stage_a = tmp_path / "missing.jsonl" if name == "failing" else None
        args = argv(tmp_path / f"rank{rank}", tmp_path / name, {"batch_size": 2}, stage_a)
        backend = ScriptedBackend()
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            status = script_main(backend)(args)
        results[name] = {"status": status, "out": out.getvalue(), "err": err.getvalue(), "answered": backend.calls}
    (tmp_path / f"rank{rank}.json").write_text(json.dumps(results, ensure_ascii=False), encoding="utf-8")


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ranks")
    for rank in range(WORLD):
        (tmp / f"rank{rank}").mkdir()
    # Both runs return on every rank (the group is left on every path), or this never ends.
    mp.spawn(_rank_main, args=([_free_port(), _free_port()], str(tmp)), nprocs=WORLD, join=True)
    return [json.loads((tmp / f"rank{rank}.json").read_text(encoding="utf-8")) for rank in range(WORLD)]


def test_under_torchrun_rank_0_prints_the_summary_and_every_rank_answers_prompts(ranks):
    zero, one = ranks[0]["good"], ranks[1]["good"]
    assert (zero["status"], one["status"]) == (0, 0)
    assert zero["out"].startswith("rank 0: ") and json.loads(zero["out"].removeprefix("rank 0: "))["tickets"] == 10
    assert one["out"] == ""  # a serving rank has no summary
    # The 10 verdict prompts went out 4 a call (batch_size 2 per process), split over both ranks.
    assert len(zero["answered"]["verdict"]) == len(one["answered"]["verdict"]) == 5


def test_an_error_on_rank_0_fails_it_with_a_message_and_releases_the_serving_rank(ranks):
    zero, one = ranks[0]["failing"], ranks[1]["failing"]
    assert zero["status"] == 1 and zero["err"].startswith("rank 0: error: Stage-A file ")
    assert "missing.jsonl does not exist" in zero["err"]
    assert (one["status"], one["out"]) == (0, "") and "error" not in one["err"]
