"""One Stage-A rank: summarise its share of the selected images and write its rank file.

Every image job ends as one `stage_a_image_row`: `ok` with the cleaned summary, or an error
with a reason code (a photo that will not load, a summary that is empty or not a summary; with engine
openai also a photo the servers did not answer, vlqc.inference.openai_engine).
Bad items never stop the rank; a crash does, and then no rank file appears (atomic write).

Resume: each answer of the model (the raw text, whether or not it cleans to a summary) is
appended, flushed, to `<resume_dir>/rank<r>.jsonl` (r: the rank among the ranks of all shards, so shard
jobs share the folder without sharing a file) under a fingerprint of the checkpoint and the
generation settings. A rerun reuses every answer that any earlier rank already got with the same
fingerprint (the world size and the shard count may differ), so a killed job over thousands of groups does not start
over; the same checkpoint and settings would give the same answer again. Photos that failed to
load are always retried, and a changed photo (size or mtime) is a new item.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from vlqc.errors import SampleError, VlqcError
from vlqc.inference.answers import strip_summary_header, summary_entries
from vlqc.inference.checkpoint import adapter_base, folder_fingerprint
from vlqc.inference.fast_generation import COMPILE_CHOICES, FastGenerator
from vlqc.inference.generation import Generator, Request, Sampling, check_attn_implementation
from vlqc.inference.openai_engine import OpenAIGenerator, Servers
from vlqc.inference.profiles import PromptConfig
from vlqc.inference.prompts import IRRELEVANT, summary_messages
from vlqc.jsonl import dumps, write_jsonl
from vlqc.schemas import defaults, section
from vlqc.stage_a.discover import Group
from vlqc.stage_a.images import load_image
from vlqc.stage_a.jobs import ImageJob, dealing_rank, rank_batches

log = logging.getLogger(__name__)

# How summaries are generated: plain transformers `generate` (the reference), the fast greedy loop, or
# OpenAI-compatible servers (settings.openai; a photo they do not answer fails alone).
ENGINES: dict[str, Callable[..., Generator]] = {"plain": Generator, "fast": FastGenerator, "openai": OpenAIGenerator}


# Settings that say how the work is batched, not what is generated.
BATCHING = ("batch_size", "wave_rows", "wave_memory_fraction")
# The config schema's `stage_a` section is the one home of these defaults.
DEFAULTS = defaults("config", "stage_a")


@dataclass(frozen=True)
class Settings:
    batch_size: int = DEFAULTS["batch_size"]
    max_new_tokens: int = DEFAULTS["max_new_tokens"]
    temperature: float = DEFAULTS["temperature"]
    top_p: float = DEFAULTS["top_p"]
    repetition_penalty: float = DEFAULTS["repetition_penalty"]
    max_pixels: int | None = DEFAULTS["max_pixels"]  # the processor's pixel budget; None keeps the checkpoint's
    no_mission: bool = DEFAULTS["no_mission"]
    seed: int = DEFAULTS["sample_seed"]  # of sampled decoding (temperature > 0)
    engine: str = DEFAULTS["engine"]  # a key of ENGINES; part of the fingerprint, bf16 outputs may differ
    # transformers' attention kernels (vlqc.inference.generation.ATTN_IMPLEMENTATIONS); in the fingerprint.
    attn_implementation: str = DEFAULTS["attn_implementation"]
    # Engine fast only: rows decoded together at most, and the share of free GPU memory their KV cache may take.
    wave_rows: int = DEFAULTS["wave_rows"]
    wave_memory_fraction: float = DEFAULTS["wave_memory_fraction"]
    # Engine fast only: compiled small ops (auto: on CUDA); part of the fingerprint, as bf16 outputs may change.
    compile: str = DEFAULTS["compile"]
    # The summary prompt's profile and overrides (docs/prompts.md); the rule resolves stage_a.prompts null
    # to the serving run's training prompts.
    prompts: PromptConfig = field(default_factory=PromptConfig)
    # Engine openai only: the servers and the client's transport settings; of these only the served model's
    # name is in the fingerprint (the checkpoint stands for the weights the servers serve).
    openai: Servers = field(default_factory=Servers)

    @classmethod
    def from_config(cls, stage_a: Mapping[str, Any], where: str = "stage_a settings") -> Settings:
        """From a `stage_a` config section (checked here; a missing key takes the schema default).
        Its sample_seed seeds sampled decoding too."""
        stage_a = section("config", "stage_a", stage_a, where)
        names = [name for name in cls.__dataclass_fields__ if name not in ("seed", "prompts", "openai")]
        prompts = PromptConfig.of(stage_a["prompts"])
        return cls(
            **{name: stage_a[name] for name in names},
            seed=stage_a["sample_seed"],
            prompts=prompts,
            openai=Servers.of(stage_a["openai"]),
        )

    def __post_init__(self):
        if self.engine not in ENGINES:
            raise VlqcError(f"stage_a engine must be one of {sorted(ENGINES)}, not {self.engine!r}")
        check_attn_implementation(self.attn_implementation)
        if self.compile not in COMPILE_CHOICES:
            raise VlqcError(f"stage_a compile must be one of {list(COMPILE_CHOICES)}, not {self.compile!r}")
        if self.wave_rows < 1 or not 0 < self.wave_memory_fraction <= 1:
            raise VlqcError(
                f"stage_a wave_rows must be >= 1 and wave_memory_fraction in (0, 1], "
                f"not {self.wave_rows} and {self.wave_memory_fraction}"
            )

    def sampling(self) -> Sampling:
        return Sampling(self.max_new_tokens, self.temperature, self.top_p, self.repetition_penalty, self.seed)


def clean_summary(text: str) -> str:
    """The summary in a model answer (header line stripped), or a SampleError saying why there is none."""
    summary = strip_summary_header(text)
    if not summary:
        raise SampleError("empty_summary", "the model wrote no summary")
    if summary != IRRELEVANT and summary_entries(summary) is None:
        raise SampleError("unparseable_summary", f"not a summary JSON line: {summary[:120]!r}")
    return summary


def fingerprint(checkpoint: Path, prompt: tuple[str, str], settings: Settings, base: Path | None = None) -> str:
    """Identity of what produced a summary: checkpoint files (an adapter's base too), prompt and generation
    settings. How the work is batched is left out (batch size, wave size): left-padded batches give the
    outputs of one-by-one generation, and a rerun after running out of memory should be free to lower them."""
    digest = hashlib.sha256()
    digest.update(folder_fingerprint(checkpoint).encode())
    if (resolved := adapter_base(checkpoint, base)) is not None:
        digest.update(folder_fingerprint(resolved).encode())
    knobs = {k: v for k, v in asdict(settings).items() if k not in (*BATCHING, "openai")}
    if settings.engine == "openai":
        knobs["served_model"] = settings.openai.model
    digest.update(dumps({"prompt": prompt, "settings": knobs}).encode())
    return digest.hexdigest()


def _image_key(job: ImageJob) -> str | None:
    """Which photo a resume entry is for: its path, size and modification time (None if gone)."""
    try:
        stat = job.path.stat()
    except OSError:
        return None
    return f"{job.group_id}::{job.label}::{job.path}:{stat.st_size}:{stat.st_mtime_ns}"


class ResumeLog:
    """Finished summaries of earlier attempts (any rank), and this rank's append-only record."""

    def __init__(self, folder: Path, rank: int, fingerprint: str):
        self.folder, self.fingerprint = folder, fingerprint
        self.path = folder / f"rank{rank}.jsonl"

    def load(self) -> dict[str, str]:
        """Raw model answers by image key."""
        done: dict[str, str] = {}
        for path in sorted(self.folder.glob("rank*.jsonl")):
            with open(path, encoding="utf-8") as fh:
                for lineno, line in enumerate(fh, start=1):
                    try:
                        entry = json.loads(line)
                    except json.JSONDecodeError:
                        # A crash can tear the last line; that item is simply done again.
                        log.warning("%s:%d: torn resume entry ignored", path, lineno)
                        continue
                    if entry.get("fingerprint") == self.fingerprint:
                        done[entry["key"]] = entry["text"]
        return done

    def add(self, key: str, text: str) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(dumps({"fingerprint": self.fingerprint, "key": key, "text": text}) + "\n")
            fh.flush()
            os.fsync(fh.fileno())


def _ok(job: ImageJob, summary: str) -> dict[str, Any]:
    return {**job.row(), "ok": True, "summary": summary}


def _failed(job: ImageJob, error: SampleError) -> dict[str, Any]:
    return {**job.row(), "ok": False, "error": {"code": error.code, "message": str(error)}}


def _answer_row(job: ImageJob, text: str) -> dict[str, Any]:
    """The row for a model answer: its summary, or why the answer is not one."""
    try:
        return _ok(job, clean_summary(text))
    except SampleError as error:
        return _failed(job, error)


def run_rank(
    groups: Sequence[Group],
    *,
    mission: str,
    missions: Mapping[str, Mapping[str, Any]],
    checkpoint: Path,
    base: Path | None = None,
    settings: Settings,
    mode: str,
    rank: int,
    world: int,
    shard: int = 0,
    shards: int = DEFAULTS["shards"],
    out: Path,
    resume_dir: Path,
    device: str = "cpu",
    dtype: torch.dtype = torch.float32,
    load_generator: Callable[..., Generator] | None = None,
) -> dict[str, Any]:
    """Summarise this rank's images and write `out` (stage_a_image_row); returns counts, and the seconds
    spent in the model's generate calls (`generate_s`, what bench/stage_a_multi_gpu.py compares across ranks).
    `checkpoint` is a model folder or a LoRA adapter folder on `base` (vlqc.inference.checkpoint).
    `load_generator(checkpoint, device=, dtype=, max_pixels=, base=, attn_implementation=)` builds the model
    backend; by default the settings' engine. `rank` and `world` are torchrun's; with shards, the images are dealt
    over the ranks of all shards and the resume file is named by the rank among them (vlqc.stage_a.jobs)."""
    load_generator = load_generator or _engine(settings)
    dealt_rank, dealt_world = dealing_rank(rank, world, shard, shards)
    batches = rank_batches(groups, mode, dealt_rank, dealt_world, settings.batch_size)
    prompt = summary_messages(
        mission, missions[mission]["domain"], missions, settings.no_mission, prompts=settings.prompts
    )
    resume = ResumeLog(resume_dir, dealt_rank, fingerprint(checkpoint, prompt, settings, base))
    done = resume.load()
    generator: Generator | None = None  # loaded only when something is left to generate
    rows: list[dict[str, Any]] = []
    counts = {"images": sum(map(len, batches)), "resumed": 0, "generated": 0, "failed": 0}
    generate_s = 0.0
    for batch in tqdm(batches, desc=f"stage-a rank {rank}", unit="batch", position=rank, mininterval=5):
        todo: list[tuple[ImageJob, str | None, Any]] = []
        for job in batch:
            key = _image_key(job)
            if key in done:
                rows.append(_answer_row(job, done[key]))
                counts["resumed"] += 1
                continue
            try:
                todo.append((job, key, load_image(job.path)))
            except SampleError as error:
                rows.append(_failed(job, error))
        if not todo:
            continue
        if generator is None:
            generator = load_generator(
                checkpoint,
                device=device,
                dtype=dtype,
                max_pixels=settings.max_pixels,
                base=base,
                attn_implementation=settings.attn_implementation,
            )
            if isinstance(generator, FastGenerator):
                generator.max_wave_rows = settings.wave_rows
                generator.memory_fraction = settings.wave_memory_fraction
                generator.compile = settings.compile
        todo = _drop_unprocessable(generator, todo, rows)
        started = time.perf_counter()
        texts = generator.generate([Request(*prompt, [image]) for _, _, image in todo], settings.sampling())
        generate_s += time.perf_counter() - started
        for (job, key, _), text in zip(todo, texts):
            if isinstance(text, SampleError):  # engine openai: the servers gave this photo no answer
                rows.append(_failed(job, text))
                continue
            rows.append(_answer_row(job, text))
            counts["generated"] += 1
            if key is not None:
                resume.add(key, text)
    counts["failed"] = sum(not row["ok"] for row in rows)
    write_jsonl(out, rows, schema="stage_a_image_row")
    return {**counts, "generate_s": round(generate_s, 3)}


def _engine(settings: Settings) -> Callable[..., Generator]:
    """The loader of the settings' engine, called as `run_rank` documents."""
    if settings.engine != "openai":
        return ENGINES[settings.engine]

    def served(checkpoint: Path, *, max_pixels: int | None, base: Path | None, **in_process: Any) -> Generator:
        # device, dtype and attention kernels are the servers' business
        return OpenAIGenerator(checkpoint, servers=settings.openai, max_pixels=max_pixels, base=base)

    return served


def _drop_unprocessable(generator: Generator, todo: list, rows: list[dict[str, Any]]) -> list:
    """Images the processor would reject (absurd aspect ratios) fail alone instead of their batch."""
    kept = []
    for job, key, image in todo:
        try:
            generator.check_image(image, str(job.path))
        except SampleError as error:
            rows.append(_failed(job, error))
            continue
        kept.append((job, key, image))
    return kept
