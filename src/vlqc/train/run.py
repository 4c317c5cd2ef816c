"""Run one training job (SFT or Stage-2 AB): row lengths, manifest, then ms-swift under torchrun, then the saved
checkpoints in place.

ms-swift is the training engine; this module only resolves the config, measures
every row against global_max_length and applies data.over_length
(vlqc.train.over_length, docs/prompts.md#over-length-rows), records the run,
launches `torchrun -m swift.cli.sft` (a Stage-2 AB run: `-m vlqc.train.stage2.main`,
the same arguments, its settings in environment variable VLQC_STAGE2_AB after the
length gate passed; docs/stage2.md) and moves every checkpoint it kept
(`training.save_steps`, `training.save_total_limit`) out of its work folder
`<out>/swift` (then removed): `<out>/steps/step_<S>/` for each, and the last one
also at `<out>/checkpoint` (hard links), so later rules have one fixed path for the
final model and one per step (docs/evaluation.md, "Golden set and dumps").
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from vlqc.errors import VlqcError
from vlqc.jsonl import read_jsonl, write_jsonl
from vlqc.manifest import write_manifest
from vlqc.train.config import config_sources, is_stage2, load_train_config, stage2_env, swift_invocation
from vlqc.train.over_length import fit_dataset, length_counter
from vlqc.train.sft_data import ROW_SCHEMA, data_config, swift_env
from vlqc.train.stage2.gate import check_lengths

REPO = Path(__file__).resolve().parents[3]
CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
# The module torchrun runs: ms-swift's `swift sft`, or the Stage-2 AB entry point, which takes the same
# arguments and runs ms-swift's sft pipeline with its own trainer.
SFT_MODULE = "swift.cli.sft"
STAGE2_MODULE = "vlqc.train.stage2.main"
# Where a Stage-2 run's rollout dumps go, in its run folder (an output of the rule, empty without dumps).
ROLLOUTS_DIR = "rollouts"
STAGE2_ROWS = "stage2_train.jsonl"  # under <work dir>/data/: the train rows with their line numbers


def launch_command(args: list[str], nproc: int, use_gpu: bool, module: str = SFT_MODULE) -> list[str]:
    device_args = [] if use_gpu else ["--use_cpu", "true", "--ddp_backend", "gloo"]
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        "--max-restarts=0",
        "-m",
        module,
        *args,
        *device_args,
    ]


def saved_checkpoints(work_dir: Path) -> list[tuple[int, Path]]:
    """(step, folder) of every `checkpoint-<step>` ms-swift left in `work_dir`, by step."""
    found = sorted(
        (int(m.group(1)), p) for p in work_dir.iterdir() if (m := CHECKPOINT_RE.match(p.name)) and p.is_dir()
    )
    if not found:
        raise VlqcError(f"{work_dir}: ms-swift finished without writing a checkpoint")
    return found


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:  # a file system without hard links: a copy reads the same
        shutil.copy2(src, dst)


def keep_checkpoints(work_dir: Path, out_dir: Path) -> Path:
    """Move the checkpoints of `work_dir` to `out_dir/steps/step_<S>/` and link the last one's files at
    `out_dir/checkpoint` (no second copy on disk); returns that folder. Each folder appears under its
    name only when complete."""
    found = saved_checkpoints(work_dir)
    steps, final = out_dir / "steps", out_dir / "checkpoint"
    for done in (steps, final):
        if done.exists():
            shutil.rmtree(done)
    building = work_dir / "steps"
    building.mkdir()
    for step, folder in found:
        folder.rename(building / f"step_{step}")
    last = building / f"step_{found[-1][0]}"
    shutil.copytree(last, work_dir / "checkpoint", copy_function=_link_or_copy)
    building.rename(steps)
    (work_dir / "checkpoint").rename(final)
    return final


def train(
    config_path: Path,
    base_model: Path,
    data_dir: Path,
    out_dir: Path,
    nproc: int,
    gpus: int,
    threads: int,
    extra_args: Sequence[str] = (),
) -> Path:
    """Run the training job (SFT, or Stage-2 AB for a config with stage2_ab, whose `base_model` is its
    init_from run's merged model); `extra_args` go to `swift sft` after the config's own (bench/train.py's
    step-timing plugin)."""
    cfg = load_train_config(config_path)
    if cfg["training"]["liger_kernel"] and not gpus:
        raise VlqcError(
            f"{config_path}: training.liger_kernel needs a GPU (Liger's kernels are Triton) and this run has "
            "train.gpus 0: set training.liger_kernel: false for a CPU run"
        )
    stage2 = is_stage2(cfg)
    work_dir = out_dir / "swift"
    if work_dir.exists():
        shutil.rmtree(work_dir)  # a rerun starts clean; Snakemake already removed the final outputs
    # Over-length rows redrawn (or an error) before ms-swift sees them: it would redraw them unseen.
    count = length_counter(base_model, data_dir, cfg)
    train_rows, val_rows, over_length = fit_dataset(data_dir, work_dir, base_model, cfg, count)
    extra: dict = {}
    if stage2:
        # Each row measured once: the gate reads the prompt lengths of the encodings fit_dataset made.
        files = {path: list(read_jsonl(path, ROW_SCHEMA)) for path in (train_rows, val_rows) if path}
        max_new = cfg["stage2_ab"]["rollout"]["max_new_tokens"]
        extra["length_gate"] = check_lengths(files, count.prompt, max_new, base_model)
        rollouts = out_dir / ROLLOUTS_DIR
        if rollouts.exists():
            shutil.rmtree(rollouts)  # no dump of an earlier run stays among this run's
        rollouts.mkdir(parents=True)  # always there (a rule output): empty while stage2_ab.dump.every is 0
        # Each row names itself (`channel`, its line): channel B looks up its messages and photo by it.
        numbered = work_dir / "data" / STAGE2_ROWS
        write_jsonl(
            numbered, ({**row, "channel": str(i)} for i, row in enumerate(files[train_rows])), schema=ROW_SCHEMA
        )
        train_rows = numbered
        settings = stage2_env(cfg, rollouts, numbered, data_dir, base_model)
        extra |= {"init_from": cfg["init_from"], "stage2_env": settings}
    args, env = swift_invocation(
        cfg,
        model_dir=base_model,
        dataset_paths=[train_rows],
        # ms-swift is not handed an empty file (a run configured without val data).
        val_dataset_paths=[val_rows] if val_rows else [],
        output_dir=work_dir,
    )
    nproc = gpus or nproc
    env = {
        **os.environ,
        **env,
        **swift_env(data_dir, data_config(cfg)),  # image paths resolve against the data folder
        "OMP_NUM_THREADS": str(max(1, threads // nproc)),
        **extra.get("stage2_env", {}),  # VLQC_STAGE2_AB: the Stage-2 trainer's settings
    }
    write_manifest(
        out_dir,
        cfg,
        config_sources(config_path),
        REPO,
        extra={
            "base_model": str(base_model),
            "data": str(data_dir),
            "nproc": nproc,
            "gpus": gpus,
            "swift_args": [*args, *extra_args],
            "over_length": over_length,
            **extra,
        },
        environ=env,
    )
    module = STAGE2_MODULE if stage2 else SFT_MODULE
    result = subprocess.run(launch_command([*args, *extra_args], nproc, use_gpu=gpus > 0, module=module), env=env)
    if result.returncode != 0:
        raise VlqcError(f"ms-swift training failed (exit {result.returncode}); its output is in the job log above")
    final = keep_checkpoints(work_dir, out_dir)
    shutil.copy2(work_dir / "logging.jsonl", out_dir / "logging.jsonl")
    # Removed here, not as Snakemake's temp(): train_sft is a Snakemake checkpoint, whose temp outputs stay.
    # A failed run leaves the folder for a look; the next run starts by removing it.
    shutil.rmtree(work_dir)
    return final
