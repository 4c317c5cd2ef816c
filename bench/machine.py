"""What a benchmark ran on, for its JSON report (imported by the scripts beside it)."""

from __future__ import annotations

import platform
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def repo_path(path: Path) -> str:
    """`path` relative to the repository when it lies inside it: results stay comparable across checkouts."""
    path = path.resolve()
    return str(path.relative_to(REPO) if path.is_relative_to(REPO) else path)


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def nvidia_smi() -> dict[str, str]:
    """Name, driver and total memory of the first GPU, as nvidia-smi reports them."""
    query = ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"]
    answer = subprocess.run(query, capture_output=True, text=True, check=True).stdout
    name, driver, memory = answer.splitlines()[0].split(", ")
    return {"name": name, "driver": driver, "memory": memory}
