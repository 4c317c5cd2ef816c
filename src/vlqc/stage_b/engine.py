"""A Stage-B run: one mission's Stage-A tickets and a guidance file → verdicts, review queue, metrics, reports.

    eval   one rollout with the guidance it is given, frozen: the mode for new tickets.
    train  `epochs` rollouts of the ticket pool, each followed by reflection on its mismatches
           (`vlqc.stage_b.reflect_loop`); every accepted guidance change passed the rule-search gate.

A rollout runs in windows of `logging_steps` tickets; after each window the run folder holds every row so
far: trajectories (every candidate), selections (one per ticket and epoch), a metrics row per window and per
epoch, and group_report_delta.jsonl with the window's tickets only (a live view, replaced every window).

Metrics blocks: `exclude_manual_review` leaves out the tickets the run flagged for review: the internal flag
(no valid vote, or low agreement) and the tickets already in the human review queue.

At the end: verdicts.jsonl and the ticket failures of failure_malformed.jsonl from the pool's rollout under
the final guidance (in train mode, the last epoch's rollout, or the gate rollout of a change accepted after
it), so every ticket is in exactly one of them; group_report.jsonl (one row per ticket), need_review.json
(the queue by reason code), hypotheses.json. failure_malformed.jsonl also holds every Stage-A line that is
not a ticket (`bad_stage_a_row`) and every reflection call that failed (`reflection_*`), never dropped.

A run is a function of its inputs (the Stage-A file, the guidance file it is given, the missions, the
checkpoint, the settings with their seeds): it reads nothing from an earlier run and refuses a folder that
holds one's files (OUTPUT_FILES, and snapshots/ in train mode; Snakemake deletes a job's outputs before it
runs). guidance.json starts as a copy of the given guidance; in train mode every accepted change, and every
epoch's new hit and miss counts, is saved over it, the version replaced going to snapshots/
(`vlqc.stage_b.guidance`). To continue learning, start a new run from an earlier run's guidance.json: its
hypothesis pool and cycle numbers start afresh. The same inputs give the same files, except the timing
fields of metrics.jsonl (elapsed_seconds, groups_per_second, eta_seconds) and, of the run manifest the
caller writes (`manifest`), run_metadata.json (its time) and runtime_env.json (launcher variables),
wherever the backend answers the same prompts and seeds alike (hf on the same hardware and software does;
a server may not).

False pass (human fail, model pass) is the headline risk: the final rate is logged last, with a warning
over FALSE_PASS_TARGET.
"""

from __future__ import annotations

import logging
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from vlqc import schemas
from vlqc.errors import VlqcError
from vlqc.inference.checkpoint import processor_dir
from vlqc.inference.profiles import PromptConfig
from vlqc.jsonl import write_json, write_jsonl
from vlqc.manifest import MANIFEST_FILES, SOURCES_DIR
from vlqc.stage_b.gate import Thresholds
from vlqc.stage_b.guidance import GUIDANCE_FILE, SNAPSHOT_DIR, Guidance, load_mission
from vlqc.stage_b.hypotheses import EVENT_SCHEMA, HypothesisPool
from vlqc.stage_b.metrics import Judgement, MetricsWindow, confusion
from vlqc.stage_b.reflect_loop import (
    EVENTS_FILE,
    FAILURE_FILE,
    REFLECTION_FILE,
    REVIEW_FILE,
    ReflectionSettings,
    Reflector,
)
from vlqc.stage_b.rollout import (
    SELECTION_SCHEMA,
    TRAJECTORY_SCHEMA,
    VERDICT_SCHEMA,
    ChatBackend,
    SamplerConfig,
    TicketRollout,
    outcome_rows,
    rollout,
    sampler_grid,
    selection_row,
    trajectory_rows,
)
from vlqc.stage_b.tickets import Ticket, TicketReject, load_tickets

log = logging.getLogger(__name__)

TRAIN, EVAL = "train", "eval"
MODES = (TRAIN, EVAL)

VERDICTS_FILE = "verdicts.jsonl"
TRAJECTORIES_FILE = "trajectories.jsonl"
SELECTIONS_FILE = "selections.jsonl"
METRICS_FILE = "metrics.jsonl"
DELTA_FILE = "group_report_delta.jsonl"
GROUP_REPORT_FILE = "group_report.jsonl"
NEED_REVIEW_FILE = "need_review.json"
HYPOTHESES_FILE = "hypotheses.json"
JSONL_SCHEMAS = {
    VERDICTS_FILE: VERDICT_SCHEMA,
    TRAJECTORIES_FILE: TRAJECTORY_SCHEMA,
    SELECTIONS_FILE: SELECTION_SCHEMA,
    METRICS_FILE: "stage_b_metrics",
    DELTA_FILE: "stage_b_group_report_delta",
    GROUP_REPORT_FILE: "stage_b_group_report",
    REFLECTION_FILE: "stage_b_reflection",
    REVIEW_FILE: "stage_b_review_item",
    FAILURE_FILE: "stage_b_failure_malformed",
    EVENTS_FILE: EVENT_SCHEMA,
}
# Every file a run writes (the Snakemake outputs); a train run writes snapshots/ as well.
OUTPUT_FILES = (*JSONL_SCHEMAS, NEED_REVIEW_FILE, GUIDANCE_FILE, HYPOTHESES_FILE)
TRAIN_OUTPUT_DIRS = (SNAPSHOT_DIR,)
# The run manifest (vlqc.manifest) the caller writes through run_stage_b's `manifest`; outputs of the rules too.
MANIFEST_OUTPUTS = (*MANIFEST_FILES, SOURCES_DIR)
BAD_STAGE_A_ROW = "bad_stage_a_row"
FALSE_PASS_TARGET = 0.05


# --- settings -----------------------------------------------------------------------------------


# The config schema's `stage_b` section is the one home of these defaults.
DEFAULTS = schemas.defaults("config", "stage_b")


@dataclass(frozen=True)
class Settings:
    grid: tuple[SamplerConfig, ...]
    samples_per_decode: int = DEFAULTS["samples_per_decode"]
    max_prompt_tokens: int = DEFAULTS["max_prompt_tokens"]
    min_verdict_agreement: float = DEFAULTS["min_verdict_agreement"]
    logging_steps: int = DEFAULTS["logging_steps"]
    batch_size: int = DEFAULTS["batch_size"]  # prompts per backend call
    epochs: int = DEFAULTS["epochs"]  # train mode only; eval rolls out once
    snapshot_retention: int = DEFAULTS["snapshot_retention"]
    reflection: ReflectionSettings = ReflectionSettings()
    # The verdict prompt's profile and overrides (docs/prompts.md); the rule resolves stage_b.prompts null.
    prompts: PromptConfig = field(default_factory=PromptConfig)

    def __post_init__(self):
        if self.logging_steps < 1 or self.epochs < 1:
            raise VlqcError(f"logging_steps and epochs must be >= 1, not {self.logging_steps} and {self.epochs}")

    @classmethod
    def from_config(cls, section: Mapping[str, Any], mode: str) -> Settings:
        """Settings of `mode` from the `stage_b` config section with its defaults filled (by `stage_b_config`,
        or as `vlqc.cli` hands a script its `--settings`). It reads the keys `config_keys` names: an eval run
        keeps the defaults of the train-only settings, which it does not use."""
        _check_mode(mode)
        train: dict[str, Any] = {}
        if mode == TRAIN:
            gate = dict(section["gate"])
            patience = gate.pop("patience")
            reflection = ReflectionSettings(
                **section["reflection"],
                max_prompt_tokens=section["max_prompt_tokens"],
                seed=section["seed"],
                gate=Thresholds(**gate),
                patience=patience,
            )
            train = {
                "epochs": section["epochs"],
                "snapshot_retention": section["snapshot_retention"],
                "reflection": reflection,
            }
        return cls(
            grid=sampler_grid(section[f"{mode}_grid"]),
            samples_per_decode=section["samples_per_decode"],
            max_prompt_tokens=section["max_prompt_tokens"],
            min_verdict_agreement=section["min_verdict_agreement"],
            logging_steps=section["logging_steps"],
            batch_size=section["batch_size"],
            prompts=PromptConfig.of(section["prompts"]),
            **train,
        )


# Read by every run (Settings.from_config, backend_config), and by train runs only.
_RUN_KEYS = (
    "backend",
    "batch_size",
    "samples_per_decode",
    "max_prompt_tokens",
    "min_verdict_agreement",
    "logging_steps",
    "prompts",
)
_TRAIN_KEYS = ("epochs", "seed", "snapshot_retention", "reflection", "gate")


def config_keys(section: Mapping[str, Any], mode: str) -> tuple[str, ...]:
    """The keys of the `stage_b` section a run of `mode` reads, with the section's backend: what the rule
    passes as `--settings`, so that Snakemake reruns the run when one of them changes, and only then."""
    _check_mode(mode)
    backend = ("openai",) if section["backend"] == "openai" else ("gpus", "attn_implementation")
    return (*_RUN_KEYS, *backend, f"{mode}_grid", *(_TRAIN_KEYS if mode == TRAIN else ()))


def stage_b_config(doc: Mapping[str, Any], where: str = "stage_b settings") -> dict[str, Any]:
    """`doc` checked as the `stage_b` section of the config schema, every missing key defaulted."""
    return schemas.section("config", "stage_b", doc, where)


def backend_config(
    section: Mapping[str, Any], checkpoint: str | Path, local_rank: int = 0, base: str | Path | None = None
) -> dict[str, Any]:
    """`vlqc.stage_b.backends.make_backend` arguments: the checkpoint in process (hf; on GPU
    `local_rank` under torchrun; a LoRA adapter on `base`), or an OpenAI-compatible server with the
    checkpoint's tokenizer counting prompt tokens (openai; an adapter folder without one: its base's)."""
    if section["backend"] == "openai":
        return {"backend": "openai", **section["openai"], "tokenizer_dir": str(processor_dir(checkpoint, base))}
    on_gpu = section["gpus"] > 0
    return {
        "backend": "hf",
        "checkpoint": str(checkpoint),
        "device": f"cuda:{local_rank}" if on_gpu else "cpu",
        "dtype": "bfloat16" if on_gpu else "float32",
        "batch_size": section["batch_size"],
        "base": None if base is None else str(base),
        "attn_implementation": section["attn_implementation"],
    }


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise VlqcError(f"mode must be one of {', '.join(MODES)}, not {mode!r}")


# --- run folder ---------------------------------------------------------------------------------


class RunFiles:
    """The run folder's JSONL files: rows validated when added, changed files rewritten atomically on flush.

    Every file is written at the first flush, empty ones included, so a run always leaves all of them.
    """

    def __init__(self, run_dir: str | Path):
        self.run_dir = Path(run_dir)
        self._rows: dict[str, list[dict[str, Any]]] = {name: [] for name in JSONL_SCHEMAS}
        self._dirty = set(JSONL_SCHEMAS)

    def add(self, name: str, rows: Iterable[dict[str, Any]]) -> None:
        kept = self._rows[name]
        for row in rows:
            schemas.validate(row, JSONL_SCHEMAS[name], f"{self.run_dir / name}: row {len(kept) + 1}")
            kept.append(row)
        self._dirty.add(name)

    def replace(self, name: str, rows: Iterable[dict[str, Any]]) -> None:
        self._rows[name] = []
        self.add(name, rows)

    def flush(self) -> None:
        for name in sorted(self._dirty):
            write_jsonl(self.run_dir / name, self._rows[name])
        self._dirty.clear()


# --- rollout epochs -----------------------------------------------------------------------------


class _Rollouts:
    """Rollouts of the ticket pool: logged epochs, and unlogged ones for the gate."""

    def __init__(
        self,
        tickets: Sequence[Ticket],
        missions: Mapping[str, Mapping[str, Any]],
        backend: ChatBackend,
        settings: Settings,
        files: RunFiles,
        epochs: int,
    ):
        self.tickets = list(tickets)
        self.missions = missions
        self.backend = backend
        self.settings = settings
        self.files = files
        self.metrics = MetricsWindow(len(self.tickets) * epochs, settings.logging_steps)
        self.history: dict[str, list[dict[str, Any]]] = defaultdict(list)  # ticket key → verdict per epoch

    def judge(self, experiences: Mapping[str, str]) -> dict[str, TicketRollout]:
        """The pool under `experiences`, by ticket key (a candidate guidance, for the gate)."""
        log.info("gate: rolling out %d tickets under the candidate guidance", len(self.tickets))
        return {result.ticket.ticket_key: result for result in self._rollout(self.tickets, experiences)}

    def _rollout(self, tickets: Sequence[Ticket], experiences: Mapping[str, str]) -> list[TicketRollout]:
        s = self.settings
        return rollout(
            tickets,
            experiences,
            self.missions,
            self.backend,
            s.grid,
            s.samples_per_decode,
            s.max_prompt_tokens,
            batch_size=s.batch_size,
            min_agreement=s.min_verdict_agreement,
            prompts=s.prompts,
        )

    def epoch(self, epoch: int, guidance: Guidance, queued: Mapping[str, Any]) -> dict[str, TicketRollout]:
        """One logged rollout of the pool, window by window."""
        results: dict[str, TicketRollout] = {}
        steps = self.settings.logging_steps
        with tqdm(total=len(self.tickets), desc=f"epoch {epoch}", unit="ticket") as progress:
            for start in range(0, len(self.tickets), steps):
                window = self._rollout(self.tickets[start : start + steps], guidance.experiences)
                self._log_window(epoch, window, guidance.step, queued)
                results.update((result.ticket.ticket_key, result) for result in window)
                progress.update(len(window))
        end = self.metrics.end_epoch(epoch)
        self.files.add(METRICS_FILE, [end])
        self.files.flush()
        _log_metrics(f"epoch {epoch}", end)
        return results

    def _log_window(
        self, epoch: int, window: Sequence[TicketRollout], guidance_step: int, queued: Mapping[str, Any]
    ) -> None:
        for result in window:
            key = result.ticket.ticket_key
            self.files.add(TRAJECTORIES_FILE, trajectory_rows(result, epoch))
            self.files.add(SELECTIONS_FILE, [selection_row(result, epoch)])
            self.history[key].append({"epoch": epoch, "verdict": result.selection.verdict})
            flagged = result.in_manual_review or key in queued
            judgement = Judgement(result.ticket.label, result.selection.verdict, flagged)
            if (row := self.metrics.add(epoch, judgement)) is not None:
                self.files.add(METRICS_FILE, [row])
        self.files.replace(
            DELTA_FILE,
            [
                {
                    "epoch": epoch,
                    "global_step": self.metrics.global_step,
                    "guidance_step": guidance_step,
                    "in_review_queue": result.ticket.ticket_key in queued,
                    **ticket_state(result),
                }
                for result in window
            ],
        )
        self.files.flush()


def ticket_state(result: TicketRollout) -> dict[str, Any]:
    """A ticket's selection and candidates as the group reports show them."""
    selection = result.selection
    return {
        "ticket_key": result.ticket.ticket_key,
        "group_id": result.ticket.group_id,
        "label": result.ticket.label,
        "verdict": selection.verdict,
        "source": selection.source,
        "vote_strength": selection.vote_strength,
        "low_agreement": selection.low_agreement,
        "failure": None if result.failure is None else result.failure.code,
        "in_manual_review": result.in_manual_review,
        "candidates": [
            {
                "grid_index": c.grid_index,
                "sample_index": c.sample_index,
                "temperature": c.sampler.temperature,
                "verdict": c.parsed.verdict,
                "error": c.parsed.error,
            }
            for c in result.candidates
        ],
    }


def _log_metrics(what: str, row: Mapping[str, Any]) -> None:
    block = row["include_manual_review"]
    log.info(
        "%s: acc %s, false pass %s (fp %d), false fail %s (fn %d), n %d",
        what,
        _percent(block["acc"]),
        _percent(block["fp_rate"]),
        block["fp"],
        _percent(block["fn_rate"]),
        block["fn"],
        block["n"],
    )


def _percent(rate: float | None) -> str:
    return "n/a" if rate is None else f"{rate:.1%}"


# --- the run ------------------------------------------------------------------------------------


def run_stage_b(
    stage_a_path: str | Path,
    mission: str,
    missions: Mapping[str, Mapping[str, Any]],
    guidance_path: str | Path,
    run_dir: str | Path,
    backend: ChatBackend,
    settings: Settings,
    mode: str = EVAL,
    manifest: Callable[[Path], None] | None = None,
) -> dict[str, Any]:
    """Run Stage-B for one mission into `run_dir`, starting from the guidance in `guidance_path` (see the
    module docstring); returns a summary. `manifest(run_dir)` writes the run manifest once the folder is
    known to hold no earlier run (scripts/stage_b.py: vlqc.manifest.write_manifest)."""
    _check_mode(mode)
    run_dir = Path(run_dir)
    _check_fresh(run_dir, mode)
    if manifest is not None:
        manifest(run_dir)
    loaded = load_tickets(stage_a_path, mission)
    log.info("%s: %d tickets, %d Stage-A lines rejected", mission, len(loaded.tickets), len(loaded.rejects))
    files = RunFiles(run_dir)
    files.add(FAILURE_FILE, [_reject_row(reject) for reject in loaded.rejects])
    guidance = load_mission(guidance_path, mission)
    guidance.save(run_dir, settings.snapshot_retention)
    log.info("%s: guidance from %s (step %d)", mission, guidance_path, guidance.step)
    epochs = settings.epochs if mode == TRAIN else 1
    rollouts = _Rollouts(loaded.tickets, missions, backend, settings, files, epochs)
    reflector = None
    if mode == TRAIN:
        (run_dir / SNAPSHOT_DIR).mkdir(exist_ok=True)  # an output even while no change is accepted
        reflector = Reflector(
            guidance,
            HypothesisPool(),
            rollouts.judge,
            backend,
            settings.reflection,
            files,
            lambda changed: changed.save(run_dir, settings.snapshot_retention),
        )
    current: dict[str, TicketRollout] = {}
    for epoch in range(1, epochs + 1):
        current = rollouts.epoch(epoch, guidance, reflector.queued if reflector else {})
        if reflector is not None:
            current = reflector.reflect_epoch(epoch, current)
            guidance = reflector.guidance
            write_json(run_dir / HYPOTHESES_FILE, reflector.pool.to_json())
    final = [current[ticket.ticket_key] for ticket in loaded.tickets]
    return _finish(run_dir, mission, mode, final, rollouts, reflector, guidance, files)


def _check_fresh(run_dir: Path, mode: str) -> None:
    """Refuse a folder with files of an earlier run: they would mix with this run's, or be read by it."""
    names = OUTPUT_FILES + MANIFEST_OUTPUTS + (TRAIN_OUTPUT_DIRS if mode == TRAIN else ())
    if left := [name for name in names if (run_dir / name).exists()]:
        raise VlqcError(
            f"{run_dir} holds {', '.join(left)} of an earlier run; a run starts without them (Snakemake "
            "deletes a job's outputs before it runs): remove them, or name another run folder"
        )


def _reject_row(reject: TicketReject) -> dict[str, Any]:
    return {
        "code": BAD_STAGE_A_ROW,
        "line": reject.line,
        "reason": reject.reason,
        "message": reject.message,
        "ticket_key": reject.ticket_key,
    }


def _finish(
    run_dir: Path,
    mission: str,
    mode: str,
    final: Sequence[TicketRollout],
    rollouts: _Rollouts,
    reflector: Reflector | None,
    guidance: Guidance,
    files: RunFiles,
) -> dict[str, Any]:
    """The end-of-run files from the final rollout (in ticket order), and the run summary."""
    verdicts, failures = outcome_rows(final)
    files.add(VERDICTS_FILE, verdicts)
    files.add(FAILURE_FILE, failures)
    queued = reflector.queued if reflector else {}
    files.add(GROUP_REPORT_FILE, [_group_report_row(result, rollouts, reflector, guidance.step) for result in final])
    items = list(queued.values())
    need_review = {
        "mission": mission,
        "n": len(items),
        "by_reason_code": dict(Counter(item["reason_code"] for item in items)),
        "items": items,
    }
    write_json(run_dir / NEED_REVIEW_FILE, need_review, schema="stage_b_need_review")
    if reflector is None:
        write_json(run_dir / HYPOTHESES_FILE, HypothesisPool().to_json())
    files.flush()
    block = confusion((result.ticket.label, result.selection.verdict) for result in final)
    _report_false_pass(mission, block)
    return {
        "mission": mission,
        "mode": mode,
        "tickets": len(final),
        "verdicts": len(verdicts),
        "failures": len(failures),
        "need_review": need_review["by_reason_code"],
        "guidance_step": guidance.step,
        "final": block,
    }


def _group_report_row(
    result: TicketRollout, rollouts: _Rollouts, reflector: Reflector | None, guidance_step: int
) -> dict[str, Any]:
    key = result.ticket.ticket_key
    item = reflector.queued.get(key) if reflector else None
    return {
        **ticket_state(result),
        "reason": result.selection.reason,
        "guidance_step": guidance_step,
        "epochs": rollouts.history[key],
        "review": None if item is None else {field: item[field] for field in ("reason_code", "epoch", "reflection_id")},
        "reflections": reflector.reflections.get(key, []) if reflector else [],
    }


def _report_false_pass(mission: str, block: Mapping[str, Any]) -> None:
    """The headline line: false passes of the final verdicts, a warning over the target."""
    rate = block["fp_rate"]
    line = (
        f"{mission}: FALSE PASS (human fail, model pass) {block['fp']} tickets, rate {_percent(rate)} "
        f"(target under {FALSE_PASS_TARGET:.0%}); acc {_percent(block['acc'])}, n {block['n']}"
    )
    if rate is not None and rate >= FALSE_PASS_TARGET:
        log.warning("%s — OVER TARGET", line)
    else:
        log.info("%s", line)
