"""The run manifest written beside the outputs of a training run, a Stage-A inference job and a Stage-B run.

`resolved_config.json` (the merged, defaulted config or settings the job ran with), copies of its source
files in `sources/` (training: the config YAML and its parents; Stage-A: the missions file; Stage-B: the
guidance it starts from and the missions file), `runtime_env.json` (a whitelist of launcher variables, never
secrets) and `run_metadata.json` (schema `run_metadata`: git revision, dirty flag, package versions, and what
the caller adds, e.g. the checkpoint's identity from `vlqc.inference.checkpoint.checkpoint_identity`).

The copies are a convenience (the resolved settings are what the job ran with), so they are best-effort: a
copy that fails is logged as a warning and listed in `run_metadata.json` (`copy_failures`), never silent.
"""

from __future__ import annotations

import logging
import os
import platform
import re
import shutil
import subprocess
import sys
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

from vlqc.jsonl import write_json

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]
RESOLVED_FILE = "resolved_config.json"
ENV_FILE = "runtime_env.json"
METADATA_FILE = "run_metadata.json"
SOURCES_DIR = "sources"
# The files of a manifest (with the folder SOURCES_DIR): what a rule declares as outputs.
MANIFEST_FILES = (RESOLVED_FILE, ENV_FILE, METADATA_FILE)

# Variables that shape a run's placement and caching; anything else stays out.
ENV_NAMES = {
    "NVIDIA_VISIBLE_DEVICES",
    "RANK",
    "LOCAL_RANK",
    "WORLD_SIZE",
    "LOCAL_WORLD_SIZE",
    "GROUP_RANK",
    "MASTER_ADDR",
    "MASTER_PORT",
    "NPROC_PER_NODE",
    "NNODES",
    "NODE_RANK",
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "HF_HOME",
    "HF_HUB_OFFLINE",
    "TRANSFORMERS_OFFLINE",
    "HF_DATASETS_OFFLINE",
    "TORCH_HOME",
    "MAX_PIXELS",
    "MIN_PIXELS",
    "IMAGE_MAX_TOKEN_NUM",
    "ROOT_IMAGE_DIR",
    "TORCH_DISTRIBUTED_DEBUG",
    "PYTORCH_CUDA_ALLOC_CONF",
}
ENV_FAMILIES = ("CUDA_", "SLURM_", "NCCL_")
# A family may hold a credential (e.g. a job token); those names never leave the process.
SECRET_HINT = re.compile(r"TOKEN|SECRET|PASSWORD|KEY|CREDENTIAL", re.I)
PACKAGES = ("torch", "torchvision", "transformers", "ms-swift", "peft", "accelerate", "datasets", "trl", "snakemake")


def runtime_env(environ: dict[str, str] | None = None) -> dict[str, str]:
    environ = os.environ if environ is None else environ
    return {
        k: v
        for k, v in sorted(environ.items())
        if k in ENV_NAMES or (k.startswith(ENV_FAMILIES) and not SECRET_HINT.search(k))
    }


def git_state(repo: Path) -> dict:
    def git(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True)

    head = git("rev-parse", "HEAD")
    if head.returncode != 0:
        return {"sha": None, "dirty": None, "note": head.stderr.strip() or "not a git checkout"}
    dirty = git("status", "--porcelain", "--untracked-files=no")
    return {"sha": head.stdout.strip(), "dirty": bool(dirty.stdout.strip())}


def package_versions() -> dict[str, str | None]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def copy_sources(sources: list[Path], source_dir: Path) -> list[dict[str, str]]:
    """Copy `sources` into `source_dir`, numbered in the given order (training: parents first, the run's own
    file last); best-effort: each copy that fails is logged and returned as {source, error}."""
    source_dir.mkdir(parents=True, exist_ok=True)
    failures = []
    for index, source in enumerate(map(Path, sources)):
        target = source_dir / f"{index:02d}-{source.name}"
        try:
            shutil.copy2(source, target)
        except OSError as exc:
            log.warning(
                "manifest: could not copy %s to %s (%s); the run goes on without that copy", source, target, exc
            )
            failures.append({"source": str(source), "error": str(exc)})
    return failures


def write_manifest(
    out_dir: Path,
    resolved: dict,
    sources: list[Path],
    repo: Path = REPO,
    extra: dict | None = None,
    environ: dict[str, str] | None = None,
) -> None:
    """Write the manifest files; `environ` is the environment the job is launched with (default: this
    process's), `extra` goes into run_metadata.json."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / RESOLVED_FILE, resolved)
    failures = copy_sources(sources, out_dir / SOURCES_DIR)
    write_json(out_dir / ENV_FILE, runtime_env(environ))
    write_json(
        out_dir / METADATA_FILE,
        {
            "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "git": git_state(repo),
            "python": sys.version.split()[0],
            "platform": platform.platform(),
            "packages": package_versions(),
            "copy_failures": failures,
            **(extra or {}),
        },
        schema="run_metadata",
    )
