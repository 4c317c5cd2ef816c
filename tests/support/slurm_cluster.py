"""A real one-node SLURM cluster for tests: munge, slurmctld and slurmd on this machine, configured in a folder.

`one_node_cluster(folder)` installs the Debian packages when they are missing (apt-get, as root or through sudo),
writes slurm.conf under `folder`, starts the daemons (slurmd "configless": it fetches the configuration from
slurmctld, as job steps then do from slurmd), waits until the node takes jobs, yields the environment the client
tools need (SLURM_CONF) and stops the daemons (and munged, if it started it) by their pid files afterwards.
No accounting daemon runs, so `sacct` has nothing to answer: jobs are followed with `squeue`, and MinJobAge keeps
finished jobs visible to it long enough for Snakemake's status checks and the test's own.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

PACKAGES = ("slurm-wlm", "munge")
DAEMONS = ("slurmctld", "slurmd")
# Seconds a finished job stays in squeue's answers (the plugin's squeue status command needs >= 120).
MIN_JOB_AGE = 3600
MUNGE_RUN = Path("/run/munge")


class ClusterError(RuntimeError):
    """The cluster could not be installed or started; the message names the log to read."""


def install_packages() -> None:
    """apt-get install the Slurm daemons and munge unless every program is already there."""
    if all(shutil.which(tool) for tool in ("slurmctld", "slurmd", "sbatch", "squeue", "munged")):
        return
    sudo = [] if os.geteuid() == 0 else ["sudo"]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run([*sudo, "apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run([*sudo, "apt-get", "install", "-y", "-qq", *PACKAGES], check=True, env=env)


def start_munge() -> Path | None:
    """munged signs the daemons' messages (the package creates its key). Start it unless one answers already;
    return its pid file when this call started it, for the caller to stop."""
    if subprocess.run(["munge", "-n"], capture_output=True).returncode == 0:
        return None
    # systemd's tmpfiles would create the socket folder; a container without systemd has none.
    MUNGE_RUN.mkdir(mode=0o755, exist_ok=True)
    # --force: munged refuses to start over the root-owned log folder otherwise (it only warns then).
    started = subprocess.run(["munged", "--force"], capture_output=True, text=True)
    if started.returncode != 0 or subprocess.run(["munge", "-n"], capture_output=True).returncode != 0:
        raise ClusterError(f"munged did not start ({started.stderr.strip()}): see /var/log/munge/munged.log")
    return MUNGE_RUN / "munged.pid"


def memory_mb() -> int:
    with open("/proc/meminfo", encoding="ascii") as meminfo:
        for line in meminfo:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) // 1024
    raise ClusterError("/proc/meminfo has no MemTotal line")


def slurm_conf(folder: Path, node: str, cpus: int, real_memory_mb: int, partition: str) -> str:
    """slurm.conf of one node that is its own controller, every path inside `folder`."""
    return f"""ClusterName=vlqc-test
SlurmctldHost={node}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation={folder}/state
SlurmdSpoolDir={folder}/spool
SlurmctldPidFile={folder}/slurmctld.pid
SlurmdPidFile={folder}/slurmd.pid
SlurmctldLogFile={folder}/slurmctld.log
SlurmdLogFile={folder}/slurmd.log
SlurmctldPort=6817
SlurmdPort=6818
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
MinJobAge={MIN_JOB_AGE}
# slurmd fetches this file from slurmctld and caches it where job steps find it (/run/slurm/conf): the
# plugin's job step runs srun with every SLURM_* variable but the job's ids removed, SLURM_CONF too.
SlurmctldParameters=enable_configless
KillWait=5
NodeName={node} CPUs={cpus} RealMemory={real_memory_mb} State=UNKNOWN
PartitionName={partition} Nodes={node} Default=YES MaxTime=INFINITE State=UP
"""


def _stop(pid_files: list[Path]) -> None:
    for pid_file in pid_files:
        if not pid_file.exists():
            continue
        pid = int(pid_file.read_text().strip())
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        # Wait for it to go, so that the next cluster can bind the same ports.
        for _ in range(100):
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.1)
        else:
            os.kill(pid, signal.SIGKILL)


def _cancel_all(env: dict) -> None:
    """Cancel what is left (a failed test's jobs): their steps would outlive slurmd otherwise."""
    subprocess.run(["scancel", "--user", getpass.getuser()], env=env, check=True)
    for _ in range(60):
        active = subprocess.run(
            ["squeue", "--noheader", "--states=RUNNING,COMPLETING,PENDING", "--format=%i"],
            env=env,
            capture_output=True,
            text=True,
        )
        if active.returncode == 0 and not active.stdout.strip():
            return
        time.sleep(0.5)
    raise ClusterError(f"jobs still active 30 s after scancel: {active.stdout.split()}")


def _wait_for_node(env: dict, folder: Path, node: str) -> None:
    state = ""
    for _ in range(60):
        probe = subprocess.run(["sinfo", "-h", "-n", node, "-o", "%t"], env=env, capture_output=True, text=True)
        state = probe.stdout.strip()
        if probe.returncode == 0 and state in ("idle", "mix", "alloc"):
            return
        time.sleep(0.5)
    raise ClusterError(f"node {node} is {state or 'unknown'} after 30 s: see {folder}/slurmctld.log and slurmd.log")


@contextlib.contextmanager
def one_node_cluster(folder: Path, partition: str = "debug") -> Iterator[dict]:
    """Start a one-node cluster configured under `folder`; yield os.environ plus SLURM_CONF; stop it on exit."""
    install_packages()
    munge_pid = start_munge()
    node = socket.gethostname().split(".")[0]
    for sub in ("state", "spool"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    conf = folder / "slurm.conf"
    # Leave the machine some memory of its own.
    conf.write_text(slurm_conf(folder, node, os.cpu_count() or 1, memory_mb() * 9 // 10, partition), "utf-8")
    env = {**os.environ, "SLURM_CONF": str(conf)}
    ready = False
    try:
        # -c: a clean start, no jobs or node state from an earlier cluster.
        subprocess.run(["slurmctld", "-c", "-f", str(conf)], check=True, env=env, capture_output=True)
        subprocess.run(["slurmd", "-c", "--conf-server", node], check=True, env=env, capture_output=True)
        _wait_for_node(env, folder, node)
        ready = True
        yield env
    finally:
        try:
            if ready:
                _cancel_all(env)
        finally:
            _stop([folder / f"{daemon}.pid" for daemon in DAEMONS] + ([munge_pid] if munge_pid else []))
