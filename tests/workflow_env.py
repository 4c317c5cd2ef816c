"""Run real Snakemake targets in a scratch copy of the workflow."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from conftest import REPO

BIN = Path(sys.executable).parent
WORKFLOW_PARTS = ("Snakefile", "rules", "scripts", "src", "config", "schemas", "envs", "profiles", "report")


def copy_workflow(dest: Path) -> Path:
    for part in WORKFLOW_PARTS:
        source = REPO / part
        if source.is_dir():
            shutil.copytree(source, dest / part, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, dest / part)
    return dest


def trained_workflow(dest: Path, overlay: str, train_configs: dict[str, str]) -> Path:
    """A workflow copy with `overlay` as e2e.yaml and each run's merged model trained: run name → the text of
    its config/train/e2e_<run>.yaml (the overlay's train.runs names those files)."""
    workdir = copy_workflow(dest)
    (workdir / "e2e.yaml").write_text(overlay, encoding="utf-8")
    for run, text in train_configs.items():
        (workdir / f"config/train/e2e_{run}.yaml").write_text(text, encoding="utf-8")
    targets = [f"results/train/sft/{run}/merged" for run in train_configs]
    snakemake(workdir, "--configfile", "e2e.yaml", "--", *targets)
    return workdir


def snakemake(workdir: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [str(BIN / "snakemake"), "--cores", "2", *args],
        cwd=workdir,
        capture_output=True,
        text=True,
        # Jobs call `python`: the one of this venv, as in an activated environment.
        env={**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"},
    )
    if check and result.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}")
    return result
