"""The run manifest written beside every training output.

`resolved_config.json` (the merged, defaulted config), copies of the source YAML
files, `runtime_env.json` (a whitelist of launcher variables, never secrets) and
`run_metadata.json` (git revision, dirty flag, package versions).
"""

from __future__ import annotations

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


def write_manifest(
    out_dir: Path,
    resolved: dict,
    sources: list[Path],
    repo: Path,
    extra: dict | None = None,
    environ: dict[str, str] | None = None,
) -> None:
    """Write the manifest files; `environ` is the environment the job is launched with."""
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "resolved_config.json", resolved)
    source_dir = out_dir / "sources"
    source_dir.mkdir(exist_ok=True)
    for index, source in enumerate(sources):
        # Numbered in merge order: parents first, the run's own file last.
        shutil.copy2(source, source_dir / f"{index:02d}-{source.name}")
    write_json(out_dir / "runtime_env.json", runtime_env(environ))
    write_json(
        out_dir / "run_metadata.json",
        {
            "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "git": git_state(repo),
            "python": sys.version.split()[0],
            "platform": platform.platform(),
            "packages": package_versions(),
            **(extra or {}),
        },
    )
