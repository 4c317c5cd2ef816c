"""Training keeps every checkpoint it saves: steps/step_<S>/ each, the last one also at checkpoint/ (hard links)."""

from __future__ import annotations

import os

import pytest

from vlqc.errors import VlqcError
from vlqc.train.run import keep_checkpoints


def saved(work, step: int, weights: bytes) -> None:
    folder = work / f"checkpoint-{step}"
    (folder / "sub").mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(weights)
    (folder / "sub" / "extra.json").write_text("{}")


def test_every_checkpoint_lands_in_steps_and_the_last_is_linked_as_checkpoint(tmp_path):
    work, out = tmp_path / "run/swift", tmp_path / "run"
    work.mkdir(parents=True)
    for step, weights in ((20, b"early"), (100, b"middle"), (9, b"first")):
        saved(work, step, weights)
    (work / "logging.jsonl").write_text("")
    (work / "checkpoint-x").mkdir()  # not ms-swift's name: left alone

    final = keep_checkpoints(work, out)

    assert final == out / "checkpoint"
    assert sorted(p.name for p in (out / "steps").iterdir()) == ["step_100", "step_20", "step_9"]
    assert (out / "steps/step_9/model.safetensors").read_bytes() == b"first"
    assert (final / "model.safetensors").read_bytes() == b"middle"  # 100 is the last step, not the last name
    for name in ("model.safetensors", "sub/extra.json"):
        assert os.path.samefile(final / name, out / "steps/step_100" / name), f"{name} is a copy, not a link"
    assert not list(work.glob("checkpoint-[0-9]*")) and (work / "checkpoint-x").is_dir()


def test_a_rerun_replaces_the_steps_of_the_earlier_run(tmp_path):
    work, out = tmp_path / "swift", tmp_path
    work.mkdir()
    saved(work, 5, b"old")
    saved(work, 10, b"old")
    keep_checkpoints(work, out)
    saved(work, 7, b"new")
    keep_checkpoints(work, out)
    assert [p.name for p in (out / "steps").iterdir()] == ["step_7"]
    assert (out / "checkpoint/model.safetensors").read_bytes() == b"new"


def test_no_checkpoint_is_an_error_naming_the_work_folder(tmp_path):
    (tmp_path / "swift").mkdir()
    with pytest.raises(VlqcError, match="swift: ms-swift finished without writing a checkpoint"):
        keep_checkpoints(tmp_path / "swift", tmp_path)
