"""ms-swift SFT datasets built from canonical JSONL, one materialised epoch at a time.

Row format (schema `sft_record`; ms-swift's standard messages format, loaded by its AutoPreprocessor):

    {"messages": [{"role": "system", "content": …}, {"role": "user", "content": "<image>…"},
                  {"role": "assistant", "content": …}],
     "images": ["images/epoch_0/demo/train/<sample_id>.jpg"],   # image rows only
     "meta": {"mode": "dense|summary|verdict", "epoch": 0, "split": "demo/train", "index": 12,
              "source": "<sample_id | mission/group_id::label>"}}

Decisions:
- Mode per record: `choose_mode` draws from an RNG seeded by (seed, epoch, record index) with the
  `mode_ratios`, so a rebuild gives the same mix and every epoch a different one. A record without
  a ticket cannot be a verdict row; it draws from dense/summary with their ratios renormalised.
- A verdict row stands for the record's whole ticket (grouped by mission, label and group id; text
  only; the ground-truth summaries in photo order). So a ticket of n photos gets n × ratio verdict
  rows an epoch on average: tickets weigh by their photo count.
- `recombined_verdicts` adds that many verdict rows per epoch and train file, each a made-up ticket
  of one mission's photo summaries labelled by the mission's summary rule (`recombined_verdicts`).
- Images are cap-conformant before augmentation: sides multiples of `factor`, 4·factor² ≤ w·h ≤
  `max_pixels`. A record that breaks this is an error naming the dataset, record index and image,
  unless `resize_to_cap` is on: then the image is resized once (`smart_resize`, geometry scaled
  with it, the summary rebuilt and so unchanged). Augmentation (per epoch and record seed) writes
  `images/epoch_<k>/<dataset>/<split>/`; unchanged images are hard links (or copies) under
  `images/source/…`, resized ones under `images/resized/…`, so the data folder is self-contained
  and relocatable.
- Augmentation (docs/augmentation.md) runs per epoch and record seed; copy-paste patches come from a
  bank built once from the train files' prepared records (`patch_bank`). What it did is written per
  epoch to `augment_telemetry.json` (schema `augment_telemetry`).
- Image paths in rows are relative to the data folder; ms-swift resolves them through
  `ROOT_IMAGE_DIR` (see `swift_env`).
- `train.jsonl` holds all materialised epochs concatenated, each epoch over every train file (train
  with `num_train_epochs 1`; ms-swift shuffles rows); `val.jsonl` is one pass over the val files
  without augmentation. Record indices (RNG seeds, `meta.index`) count within their file.

Settings come from the resolved training config (`data_config`: data.modes, data.resize_to_cap,
data.no_mission_prob, data.augmentation, custom.mode_seed, training.epochs, template.max_pixels, and
the `prompts` section that words every row, docs/prompts.md).

Training side (nothing may resize at training time): run ms-swift with `swift_env(data_dir, cfg)`
in the environment, which makes qwen_vl_utils' `fetch_image` accept every image as it is
(its min/max token budget brackets the cap); leave ms-swift's `--max_pixels` unset (or ≥ the cap).
ms-swift's qwen3_vl template calls the image processor with `do_resize=False` itself.
"""

from __future__ import annotations

import logging
import os
import random
import shutil
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from vlqc.errors import SampleError, VlqcError
from vlqc.inference.profiles import PromptConfig
from vlqc.inference.prompts import (
    dense_messages,
    dense_target,
    summary_messages,
    summary_target,
    verdict_messages,
    verdict_target,
)
from vlqc.jsonl import atomic_open, read_jsonl, write_json, write_jsonl
from vlqc.missions import MissionRule, Outcome
from vlqc.schemas import defaults
from vlqc.tickets import natural_key
from vlqc.train.augment import PASTE_OPS, Tally, warp
from vlqc.train.augment import augment as augment_sample
from vlqc.train.copy_paste import PatchBank, build_bank

log = logging.getLogger(__name__)

MODES = ("dense", "summary", "verdict")
# The train_config schema is the one home of the builder's defaults (see `data_config`).
TRAIN_DEFAULTS = defaults("train_config")
DEFAULT_RATIOS = TRAIN_DEFAULTS["data"]["modes"]
ROW_SCHEMA = "sft_record"
TELEMETRY = "augment_telemetry.json"  # in the data folder; schema augment_telemetry
IMAGE_FORMATS = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG"}
SAVE_QUALITY = 95  # JPEG quality of images written here (PNG ignores it)
# Draws a recombined ticket gets to come out with the label it was meant to have.
RECOMBINE_DRAWS = 20
# The smallest image qwen_vl_utils leaves alone is 4 tokens (IMAGE_MIN_TOKEN_NUM); smart_resize agrees.
MIN_TOKENS = 4


class PixelCapError(VlqcError):
    """A canonical image breaks the training pixel cap or the ×factor side rule."""


# --- config ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DataConfig:
    """What the builder needs; `data_config` takes it from a resolved training config."""

    seed: int = TRAIN_DEFAULTS["custom"]["mode_seed"]  # seeds the mode draw
    epochs: int = TRAIN_DEFAULTS["training"]["epochs"]  # materialised epochs
    mode_ratios: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_RATIOS))
    max_pixels: int = TRAIN_DEFAULTS["template"]["max_pixels"]  # the training pixel cap
    factor: int = defaults("augment")["factor"]  # image sides are multiples of it: patch 16 × merge 2
    resize_to_cap: bool = TRAIN_DEFAULTS["data"]["resize_to_cap"]
    no_mission_prob: float = TRAIN_DEFAULTS["data"]["no_mission_prob"]  # summary rows prompted without the mission
    recombined_verdicts: int = TRAIN_DEFAULTS["data"]["recombined_verdicts"]  # extra verdict rows per epoch and file
    augmentation: Mapping[str, Any] | None = None  # resolved `augment` section; None: off
    prompts: PromptConfig = field(default_factory=PromptConfig)  # the config's `prompts` (docs/prompts.md)

    def __post_init__(self) -> None:
        # The invariants the builder relies on; the train_config schema checks the rest.
        if any(m not in MODES or w < 0 for m, w in self.mode_ratios.items()) or sum(self.mode_ratios.values()) <= 0:
            raise VlqcError(
                f"mode ratios must be weights ≥ 0 of {', '.join(MODES)} with a positive sum: {self.mode_ratios}"
            )
        if self.max_pixels < MIN_TOKENS * self.factor**2:
            raise VlqcError(f"max_pixels {self.max_pixels} is below the smallest image, {MIN_TOKENS}·{self.factor}²")
        aug = self.augmentation
        if aug is not None and (aug["max_pixels"] > self.max_pixels or aug["factor"] != self.factor):
            raise VlqcError(
                f"augmentation max_pixels {aug['max_pixels']} must not exceed the cap {self.max_pixels}, "
                f"and its factor {aug['factor']} must be {self.factor}"
            )


def data_config(train_cfg: Mapping[str, Any]) -> DataConfig:
    """The builder's settings from a training config resolved by `vlqc.train.config.load_train_config`:
    data.modes, data.resize_to_cap, data.no_mission_prob, data.recombined_verdicts, data.augmentation,
    custom.mode_seed, training.epochs, template.max_pixels and prompts."""
    try:
        data = train_cfg["data"]
        augmentation = data["augmentation"]
        return DataConfig(
            seed=train_cfg["custom"]["mode_seed"],
            epochs=train_cfg["training"]["epochs"],
            mode_ratios={m: float(data["modes"].get(m, 0.0)) for m in MODES},
            max_pixels=train_cfg["template"]["max_pixels"],
            factor=augmentation["factor"],
            resize_to_cap=data["resize_to_cap"],
            no_mission_prob=data["no_mission_prob"],
            recombined_verdicts=data["recombined_verdicts"],
            augmentation=augmentation,
            prompts=PromptConfig.of(train_cfg.get("prompts")),
        )
    except KeyError as exc:
        raise VlqcError(f"the training config is not resolved: it lacks {exc}") from exc


def swift_env(data_dir: str | os.PathLike, cfg: DataConfig) -> dict[str, str]:
    """Environment for ms-swift training on a dataset written here: image paths resolve against
    the data folder, and qwen_vl_utils' pixel budget brackets every image (no resize)."""
    return {
        "ROOT_IMAGE_DIR": str(Path(data_dir).resolve()),
        "IMAGE_MIN_TOKEN_NUM": str(MIN_TOKENS),
        "IMAGE_MAX_TOKEN_NUM": str(cfg.max_pixels // cfg.factor**2),
    }


# --- mode choice ------------------------------------------------------------------------------------


def _rng(seed: int, epoch: int, index: int, stream: str, split: str) -> random.Random:
    # A str seed is hashed with SHA-512: stable across runs and PYTHONHASHSEED. The split name
    # keeps record i of two files apart.
    return random.Random(f"{stream}:{seed}:{epoch}:{split}:{index}")


def choose_mode(
    seed: int, epoch: int, index: int, ratios: Mapping[str, float], has_ticket: bool, split: str = ""
) -> str:
    """The mode of record `index` of `split` in `epoch`: one uniform draw against the cumulative ratios."""
    allowed = [m for m in MODES if ratios.get(m, 0) > 0 and (has_ticket or m != "verdict")]
    if not allowed:
        raise VlqcError("no mode with a positive ratio applies to a record without a ticket (verdict needs one)")
    u = _rng(seed, epoch, index, "mode", split).random() * sum(ratios[m] for m in allowed)
    for mode in allowed:
        u -= ratios[mode]
        if u < 0:
            return mode
    return allowed[-1]  # u landed on the total through float rounding


# --- tickets and verdict answers --------------------------------------------------------------------


@dataclass(frozen=True)
class Ticket:
    mission: str
    label: str
    group_id: str
    indices: tuple[int, ...]  # records of the ticket, in photo order

    @property
    def key(self) -> str:
        return f"{self.mission}/{self.group_id}::{self.label}"


def group_tickets(records: Sequence[Mapping[str, Any]]) -> dict[tuple[str, str, str], Ticket]:
    """Tickets by (mission, label, group_id); photos in natural order of their file names."""
    members: dict[tuple[str, str, str], list[int]] = {}
    for index, record in enumerate(records):
        if "ticket" in record:
            t = record["ticket"]
            members.setdefault((t["mission"], t["label"], t["group_id"]), []).append(index)
    return {
        key: Ticket(*key, tuple(sorted(idx, key=lambda i: natural_key(Path(records[i]["images"][0]).name))))
        for key, idx in members.items()
    }


def ticket_rules(
    tickets: Mapping[Any, Ticket], missions: Mapping[str, Mapping[str, Any]], source: Path
) -> dict[str, MissionRule]:
    """The rule of every mission the tickets belong to; an unknown mission is an error naming the file."""
    rules = {}
    for ticket in tickets.values():
        if ticket.mission not in missions:
            raise VlqcError(f"{source}: record {ticket.indices[0]}: unknown mission {ticket.mission!r}")
        if ticket.mission not in rules:
            rules[ticket.mission] = MissionRule.of(ticket.mission, missions[ticket.mission])
    return rules


def verdict_reasons(label: str, outcome: Outcome) -> tuple[list[str], bool]:
    """Reason clauses for a ticket's label from what the mission's rule found (docs/missions.md), and
    whether the generic fallback was used. A fail cites the failures the rule found; a pass cites
    where each must-see item was seen, as long as the rule found all of them and nothing failing
    (a dataList photo may hide a conformity: the clauses are true all the same). The label always
    wins: otherwise no clauses and the fallback."""
    if label == "fail" and outcome.verdict == "fail":
        return list(outcome.problems), False
    if label == "pass" and outcome.verdict != "fail" and not outcome.missing:
        return list(outcome.seen), False
    return [], True


def verdict_answer(ticket: Ticket, records: Sequence[Mapping[str, Any]], rule: MissionRule) -> tuple[str, bool]:
    """The verdict target of a ticket, and whether it took the generic Reason."""
    summaries = [records[i]["summary"] for i in ticket.indices]
    reasons, fallback = verdict_reasons(ticket.label, rule.evaluate_summaries(summaries))
    return verdict_target(ticket.label, reasons), fallback


# --- images --------------------------------------------------------------------------------------


def _fail(source: Path, index: int, image: str, message: str) -> PixelCapError:
    return PixelCapError(f"{source}: record {index} (image {image}): {message}")


def _conforms(width: int, height: int, cfg: DataConfig) -> bool:
    return (
        width % cfg.factor == 0
        and height % cfg.factor == 0
        and MIN_TOKENS * cfg.factor**2 <= width * height <= cfg.max_pixels
    )


def _save(image: Image.Image, path: Path) -> None:
    with atomic_open(path, "wb") as fh:
        image.save(fh, format=IMAGE_FORMATS[path.suffix.lower()], quality=SAVE_QUALITY)


def _link(src: Path, dst: Path) -> None:
    """Hard-link `src` to `dst` (atomically replacing it); copy where links are impossible."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    try:
        try:
            os.link(src, tmp)
        except OSError:  # another file system, or links not allowed: a copy works the same
            shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)  # only left over when something failed


def split_name(source: Path) -> str:
    """`<dataset>/<split>` of results/data/<dataset>/<split>.jsonl: keeps image names of splits apart."""
    return f"{source.parent.name}/{source.stem}"


def _image_name(record: Mapping[str, Any], folder: str, source: Path) -> str:
    suffix = Path(record["images"][0]).suffix.lower()
    if suffix not in IMAGE_FORMATS:
        raise VlqcError(f"{record['sample_id']}: unsupported image type {suffix!r}")
    return f"images/{folder}/{split_name(source)}/{record['sample_id']}{suffix}"


def prepare_image(
    record: Mapping[str, Any], index: int, cfg: DataConfig, source: Path, out_dir: Path
) -> tuple[str, dict[str, Any]]:
    """The record's image under `out_dir` (path relative to it) and the record that goes with it,
    both within the training cap. Breaking the cap is an error unless `resize_to_cap` is set."""
    image_rel = record["images"][0]
    src = source.parent / image_rel
    try:
        with Image.open(src) as image:
            size = image.size
    except OSError as exc:
        raise _fail(source, index, image_rel, f"cannot open: {exc}") from exc
    width, height = record["width"], record["height"]
    if size != (width, height):
        raise _fail(source, index, image_rel, f"image is {size[0]}x{size[1]}, record says {width}x{height}")
    if _conforms(width, height, cfg):
        rel = _image_name(record, "source", source)
        _link(src, out_dir / rel)
        return rel, dict(record)
    if not cfg.resize_to_cap:
        raise _fail(
            source,
            index,
            image_rel,
            f"{width}x{height} = {width * height} pixels; training needs sides that are multiples of {cfg.factor} "
            f"and {MIN_TOKENS * cfg.factor**2}..{cfg.max_pixels} pixels (set data.resize_to_cap to resize here)",
        )
    with Image.open(src) as image:
        rgb = image.convert("RGB")
    # warp with the identity is a pure smart_resize; geometry scales with the pixels, nothing is cut off.
    resized, out = warp(
        rgb,
        dict(record),
        np.eye(3),
        (float(width), float(height)),
        max_pixels=cfg.max_pixels,
        factor=cfg.factor,
        fill=(0, 0, 0),
        min_coverage=0.0,
    )
    rel = _image_name(record, "resized", source)
    _save(resized, out_dir / rel)
    return rel, out


def _augmented(
    record: dict[str, Any],
    rel: str,
    index: int,
    epoch: int,
    cfg: DataConfig,
    source: Path,
    out_dir: Path,
    bank: PatchBank | None,
    tally: Tally | None,
) -> tuple[str, dict[str, Any]]:
    with Image.open(out_dir / rel) as image:
        rgb = image.convert("RGB")
    rng = _rng(cfg.seed, epoch, index, "augment", split_name(source))
    try:
        image, out = augment_sample(rgb, record, cfg.augmentation, rng, bank=bank, tally=tally)
    except SampleError as exc:  # e.g. a legacy ×N summary that a crop would have to rebuild
        raise VlqcError(f"{source}: record {index}: augmentation failed: {exc}") from exc
    if out is record:  # bypassed: the prepared image serves as it is
        return rel, record
    new_rel = _image_name(record, f"epoch_{epoch}", source)
    _save(image, out_dir / new_rel)
    return new_rel, out


def patch_bank(
    records: Mapping[Path, Sequence[Mapping[str, Any]]],
    cfg: DataConfig,
    out_dir: Path,
    prepared: dict[Path, dict[int, tuple[str, dict[str, Any]]]],
) -> PatchBank | None:
    """The copy-paste patch bank of the train files (`vlqc.train.copy_paste.build_bank`), from their
    records as prepared for training, or None when no copy-paste op is on. Every train image is
    prepared here (cached in `prepared`), whatever rows its record becomes."""
    aug = cfg.augmentation
    if aug is None or not any(aug[op]["prob"] > 0 for op in PASTE_OPS):
        return None
    samples = []
    for source, recs in records.items():
        for index, record in enumerate(recs):
            if index not in prepared[source]:
                prepared[source][index] = prepare_image(record, index, cfg, source, out_dir)
            rel, sample = prepared[source][index]
            samples.append((sample, out_dir / rel))
    bank = build_bank(samples, aug)
    log.info("copy-paste patch bank: %s", bank.counts())
    return bank


# --- rows --------------------------------------------------------------------------------------------


def _row(system: str, user: str, answer: str, images: list[str] | None, meta: dict[str, Any]) -> dict[str, Any]:
    row: dict[str, Any] = {
        "messages": [
            {"role": "system", "content": system},
            {"role": "user", "content": user},
            {"role": "assistant", "content": answer},
        ]
    }
    if images:
        row["images"] = images
    row["meta"] = meta
    return row


def record_domain(record: Mapping[str, Any], missions: Mapping[str, Mapping[str, Any]]) -> str | None:
    """The record's domain, else its mission's (upper case); None when it has neither."""
    if record["domain"]:
        return record["domain"]
    mission = record.get("ticket", {}).get("mission")
    return missions[mission]["domain"].upper() if mission in missions else None


def image_texts(
    mode: str,
    record: Mapping[str, Any],
    domain: str,
    mission: str | None,
    missions: Mapping[str, Mapping[str, Any]],
    *,
    no_mission: bool,
    prompts: PromptConfig | None = None,
) -> tuple[str, str, str]:
    """System, user and answer of a dense or summary row for a canonical record (its image as prepared);
    a summary prompt names `mission` unless it is None or `no_mission` is set. Evaluation builds its
    rows with this too (vlqc.evaluation.candidates), so they are the rows training sees. `prompts`:
    the run's prompt profiles (None: the defaults)."""
    if mode == "dense":
        return (*dense_messages(domain, prompts=prompts), dense_target({**record, "domain": domain}))
    if mode == "summary":
        return (
            *summary_messages(mission, domain, missions, no_mission=no_mission, prompts=prompts),
            summary_target(record["summary"], domain),
        )
    raise VlqcError(f"{mode!r} is not an image row mode (dense, summary)")


def ticket_texts(
    ticket: Ticket,
    records: Sequence[Mapping[str, Any]],
    rule: MissionRule,
    missions: Mapping[str, Mapping[str, Any]],
    guidance: Mapping[str, str] | None = None,
    prompts: PromptConfig | None = None,
) -> tuple[str, str, str]:
    """System, user and answer of a ticket's verdict row: its ground-truth summaries in photo order,
    `guidance` (the mission's experiences) or else the mission's focus in the prompt."""
    summaries = [records[i]["summary"] for i in ticket.indices]
    prompt = verdict_messages(ticket.mission, guidance, summaries, missions, prompts=prompts)
    return (*prompt, verdict_answer(ticket, records, rule)[0])


def build_epoch(
    records: Sequence[Mapping[str, Any]],
    epoch: int,
    cfg: DataConfig,
    out_dir: str | os.PathLike,
    missions: Mapping[str, Mapping[str, Any]],
    *,
    source: str | os.PathLike,
    guidance: Mapping[str, Mapping[str, str]] | None = None,
    augment: bool = True,
    prepared: dict[int, tuple[str, dict[str, Any]]] | None = None,
    bank: PatchBank | None = None,
    tally: Tally | None = None,
) -> list[dict[str, Any]]:
    """One row per record of the canonical JSONL `source` (its images resolve against its folder).

    `guidance` maps a mission to its experiences (G0/S*/G*) for verdict prompts; missing → focus.
    `augment=False` (val) skips augmentation; the pixel cap applies either way. `prepared` caches
    `prepare_image` by record index: pass one dict to every epoch of a dataset to resize once.
    `bank` holds the copy-paste patches (`patch_bank`); `tally` counts what augmentation did.
    """
    prepared = {} if prepared is None else prepared
    source, out_dir = Path(source), Path(out_dir)
    split = split_name(source)
    tickets = group_tickets(records)
    rule_of = ticket_rules(tickets, missions, source)
    verdicts: dict[tuple[str, str, str], tuple[str, str, str]] = {}  # built once per ticket
    rows = []
    for index, record in enumerate(records):
        ticket_id = _ticket_id(record)
        try:
            mode = choose_mode(cfg.seed, epoch, index, cfg.mode_ratios, ticket_id is not None, split)
        except VlqcError as exc:
            raise VlqcError(f"{source}: record {index}: {exc}") from exc
        if mode == "verdict":
            ticket = tickets[ticket_id]
            if ticket_id not in verdicts:
                rules = guidance.get(ticket.mission) if guidance else None
                verdicts[ticket_id] = ticket_texts(
                    ticket, records, rule_of[ticket.mission], missions, rules, prompts=cfg.prompts
                )
            meta = {"mode": mode, "epoch": epoch, "split": split, "index": index, "source": ticket.key}
            rows.append(_row(*verdicts[ticket_id], None, meta))
            continue

        domain = record_domain(record, missions)
        if domain is None:
            raise VlqcError(f"{source}: record {index}: no domain and no mission, so it cannot be prompted")
        if index not in prepared:
            prepared[index] = prepare_image(record, index, cfg, source, out_dir)
        rel, sample = prepared[index]
        if augment and cfg.augmentation is not None:
            rel, sample = _augmented(sample, rel, index, epoch, cfg, source, out_dir, bank, tally)
        meta = {"mode": mode, "epoch": epoch, "split": split, "index": index, "source": record["sample_id"]}
        no_mission = (
            mode == "summary" and _rng(cfg.seed, epoch, index, "no_mission", split).random() < cfg.no_mission_prob
        )
        mission = ticket_id[0] if ticket_id else None
        texts = image_texts(mode, sample, domain, mission, missions, no_mission=no_mission, prompts=cfg.prompts)
        rows.append(_row(*texts, [rel], meta))
    return rows


def recombined_verdicts(
    records: Sequence[Mapping[str, Any]],
    epoch: int,
    cfg: DataConfig,
    missions: Mapping[str, Mapping[str, Any]],
    *,
    source: str | os.PathLike,
    guidance: Mapping[str, Mapping[str, str]] | None = None,
) -> list[dict[str, Any]]:
    """`cfg.recombined_verdicts` text-only verdict rows for `epoch`, each a made-up ticket of the file's photos.

    The real tickets are few (80 in the demo), too few to learn a mission's rule from. A recombined ticket
    takes the size of a random real ticket of a mission and as many photo summaries of that mission, drawn
    from all its tickets; its label is what the mission's rule finds in those summaries, so answer and
    prompt always agree. Only photos the rule reads completely are drawn (not a legacy ×N summary, nor
    a dataList object whose unknown attributes the rule needs), so every draw is decided. Labels
    alternate between fail and pass as far as a few draws allow, since a random mix of photos fails more
    often than not. A mission without such photos takes no part.
    """
    if cfg.recombined_verdicts == 0:
        return []
    source = Path(source)
    split = split_name(source)
    tickets = group_tickets(records)
    rule_of = ticket_rules(tickets, missions, source)
    by_mission: dict[str, list[Ticket]] = {}
    pools: dict[str, list[int]] = {}
    for ticket in tickets.values():
        complete = [
            i for i in ticket.indices if not rule_of[ticket.mission].evaluate_summaries([records[i]["summary"]]).unknown
        ]
        if complete:
            by_mission.setdefault(ticket.mission, []).append(ticket)
            pools.setdefault(ticket.mission, []).extend(complete)
    if not by_mission:
        return []
    rows = []
    for k in range(cfg.recombined_verdicts):
        rng = _rng(cfg.seed, epoch, k, "recombined", split)
        mission = rng.choice(sorted(by_mission))
        want = ("fail", "pass")[k % 2]
        for _ in range(RECOMBINE_DRAWS):
            size = min(len(rng.choice(by_mission[mission]).indices), len(pools[mission]))
            summaries = [records[i]["summary"] for i in rng.sample(pools[mission], size)]
            outcome = rule_of[mission].evaluate_summaries(summaries)
            if outcome.verdict == want:
                break
        label = outcome.verdict
        if label is None:  # unreachable: every photo drawn is read completely
            raise VlqcError(f"{source}: recombined ticket {k}: {mission}'s rule cannot decide {outcome.unknown}")
        rules = guidance.get(mission) if guidance else None
        answer = verdict_target(label, verdict_reasons(label, outcome)[0])
        meta = {
            "mode": "verdict",
            "epoch": epoch,
            "split": split,
            "index": k,
            "source": f"{mission}/recombined-{epoch}-{k}::{label}",
        }
        prompt = verdict_messages(mission, rules, summaries, missions, prompts=cfg.prompts)
        rows.append(_row(*prompt, answer, None, meta))
    return rows


def _ticket_id(record: Mapping[str, Any]) -> tuple[str, str, str] | None:
    t = record.get("ticket")
    return (t["mission"], t["label"], t["group_id"]) if t else None


# --- the dataset -------------------------------------------------------------------------------------


def write_dataset(
    train: Sequence[str | os.PathLike],
    val: Sequence[str | os.PathLike],
    cfg: DataConfig,
    out_dir: str | os.PathLike,
    missions: Mapping[str, Mapping[str, Any]],
    *,
    guidance: Mapping[str, Mapping[str, str]] | None = None,
) -> dict[str, Any]:
    """Write `train.jsonl` and `val.jsonl` under `out_dir` from canonical JSONL files, every row
    validated; returns counts for the log.

    train.jsonl: for each epoch 0..cfg.epochs-1, the rows of every train file in order (augmented).
    val.jsonl: one pass over the val files, not augmented ([] gives an empty file).
    """
    out_dir = Path(out_dir)
    started = time.perf_counter()
    train, val = [Path(p) for p in train], [Path(p) for p in val]
    if not train:
        raise VlqcError("no canonical train file given")
    records = {path: list(read_jsonl(path, "sample")) for path in [*train, *val]}
    names: dict[str, Path] = {}
    for path in records:
        other = names.setdefault(split_name(path), path)
        if other.resolve() != path.resolve():
            raise VlqcError(f"{other} and {path} have the same <folder>/<name> {split_name(path)}: rename one")
    prepared: dict[Path, dict[int, tuple[str, dict[str, Any]]]] = {path: {} for path in train}
    bank = patch_bank({path: records[path] for path in train}, cfg, out_dir, prepared)
    train_rows: list[dict[str, Any]] = []
    epochs = []
    for epoch in range(cfg.epochs):
        tally = Tally()
        for path in train:
            train_rows += build_epoch(
                records[path],
                epoch,
                cfg,
                out_dir,
                missions,
                source=path,
                guidance=guidance,
                prepared=prepared[path],
                bank=bank,
                tally=tally,
            )
            train_rows += recombined_verdicts(records[path], epoch, cfg, missions, source=path, guidance=guidance)
        if cfg.augmentation is not None:
            epochs.append({"epoch": epoch, **tally.as_dict()})
    val_rows = [
        row
        for path in val
        for row in build_epoch(records[path], 0, cfg, out_dir, missions, source=path, guidance=guidance, augment=False)
    ]
    write_jsonl(out_dir / "train.jsonl", train_rows, schema=ROW_SCHEMA)
    write_jsonl(out_dir / "val.jsonl", val_rows, schema=ROW_SCHEMA)
    bank_counts = bank.counts() if bank is not None else {op: {} for op in PASTE_OPS}
    telemetry = {"enabled": cfg.augmentation is not None, "bank": bank_counts, "epochs": epochs}
    write_json(out_dir / TELEMETRY, telemetry, schema="augment_telemetry")

    fallbacks = {}
    for path in dict.fromkeys([*train, *val]):
        recs = records[path]
        tickets = group_tickets(recs)
        rule_of = ticket_rules(tickets, missions, path)
        keys = sorted(t.key for t in tickets.values() if verdict_answer(t, recs, rule_of[t.mission])[1])
        fallbacks[split_name(path)] = len(keys)
        if keys:
            log.warning(
                "%s: %d ticket(s) get the generic Reason (no rule for the mission, a legacy summary, or the "
                "rule disagrees with the label): %s",
                path,
                len(keys),
                ", ".join(keys[:5]),
            )
    return {
        "train": _counts(train_rows, sum(len(records[p]) for p in train), cfg.epochs),
        "val": _counts(val_rows, sum(len(records[p]) for p in val), 1),
        "verdict_reason_fallback": fallbacks,
        "augmentation": {
            "bank": bank_counts,
            "pasted": sum(e["objects"]["pasted"] for e in epochs),
            "dropped": sum(e["objects"]["dropped"] for e in epochs),
        },
        "seconds": round(time.perf_counter() - started, 2),
    }


def _counts(rows: list[dict[str, Any]], records: int, epochs: int) -> dict[str, Any]:
    modes = Counter(row["meta"]["mode"] for row in rows)
    return {"records": records, "epochs": epochs, "rows": len(rows), "by_mode": {m: modes[m] for m in MODES}}
