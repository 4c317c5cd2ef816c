"""Run manifest: whitelisted environment, git state, copied sources."""

import json

import pytest

from vlqc.errors import SchemaError
from vlqc.jsonl import read_json
from vlqc.manifest import MANIFEST_FILES, METADATA_FILE, SOURCES_DIR, runtime_env, write_manifest


def test_runtime_env_keeps_launcher_variables_and_drops_secrets():
    env = {
        "CUDA_VISIBLE_DEVICES": "0,1",
        "WORLD_SIZE": "2",
        "MASTER_PORT": "29500",
        "SLURM_JOB_ID": "7",
        "IMAGE_MAX_TOKEN_NUM": "144",
        "HF_HOME": "/cache",
        "HF_TOKEN": "hf_secret",
        "SLURM_JOB_TOKEN": "x",
        "CUDA_API_KEY": "k",
        "AWS_SECRET_ACCESS_KEY": "s",
        "HOME": "/root",
    }
    kept = runtime_env(env)
    assert kept == {
        "CUDA_VISIBLE_DEVICES": "0,1",
        "HF_HOME": "/cache",
        "IMAGE_MAX_TOKEN_NUM": "144",
        "MASTER_PORT": "29500",
        "SLURM_JOB_ID": "7",
        "WORLD_SIZE": "2",
    }


def test_manifest_files(tmp_path):
    first, second = tmp_path / "base.yaml", tmp_path / "run.yaml"
    first.write_text("a: 1\n")
    second.write_text("extends: base.yaml\n")
    out = tmp_path / "out"
    write_manifest(out, {"a": 1}, [first, second], tmp_path, extra={"nproc": 1})
    assert json.loads((out / "resolved_config.json").read_text()) == {"a": 1}
    assert sorted(p.name for p in (out / "sources").iterdir()) == ["00-base.yaml", "01-run.yaml"]
    metadata = json.loads((out / "run_metadata.json").read_text())
    assert metadata["git"]["sha"] is None  # tmp_path is no git checkout
    assert metadata["packages"]["transformers"] and metadata["nproc"] == 1


def test_a_source_that_cannot_be_copied_is_a_warning_and_listed_not_a_failure(tmp_path, caplog):
    there = tmp_path / "missions.yaml"
    there.write_text("m: 1\n")
    gone = tmp_path / "gone.json"
    out = tmp_path / "run"
    write_manifest(out, {"s": 1}, [gone, there], extra={"job": "stage_b"})
    assert [p.name for p in (out / SOURCES_DIR).iterdir()] == ["01-missions.yaml"]
    metadata = read_json(out / METADATA_FILE, schema="run_metadata")
    assert [f["source"] for f in metadata["copy_failures"]] == [str(gone)]
    assert f"could not copy {gone}" in caplog.text and "WARNING" in caplog.text
    assert metadata["job"] == "stage_b" and sorted(p.name for p in out.iterdir()) == sorted(
        [*MANIFEST_FILES, SOURCES_DIR]
    )


def test_the_metadata_schema_refuses_a_malformed_checkpoint_identity(tmp_path):
    identity = {"path": "x", "kind": "model", "fingerprint": "abc", "base": None}
    with pytest.raises(SchemaError, match="checkpoint.fingerprint"):
        write_manifest(tmp_path, {}, [], extra={"checkpoint": identity})
