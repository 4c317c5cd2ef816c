"""Demo tickets: per-mission photo plans, ground-truth verdicts from each mission's rule, and the
on-disk layout `<out>/<mission>/<审核通过|审核不通过>/<group_id>/<group_id>_<k>.jpg` (+ `.json`).

A ticket is planned to pass or fail (a balanced share per mission), but its label is always
computed by the mission's rule (config/missions.yaml, evaluated by `vlqc.missions`; docs/missions.md)
over the objects annotated in all its photos, so the label is decidable from the exports alone.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from vlqc.demo.export import data_list, mark_result
from vlqc.demo.render import EXIF_ORIENTATION_TAG, render, stored_transpose, transpose_points
from vlqc.demo.scene import (
    BRAND_WEIGHTS,
    BRANDS,
    ISSUES,
    LABEL_TEXTS,
    PROTECTIONS,
    SHIELD_BRANDS,
    Attrs,
    PhotoPlan,
    SceneObject,
    Strip,
    Unit,
    bbu,
    build_scene,
    fiber,
    label,
    pick,
    point,
    shield,
    wire,
)
from vlqc.jsonl import write_json
from vlqc.missions import MissionRule
from vlqc.schemas import defaults
from vlqc.tickets import LABEL_DIRS

log = logging.getLogger(__name__)

Facts = list[Attrs]
FOLDER_OF = {label: folder for folder, label in LABEL_DIRS.items()}  # pass → 审核通过, fail → 审核不通过
MAX_OBJECTS = 6  # annotated objects per photo: keeps scenes learnable for a tiny model
MAX_STRIPS = 4
MAX_PHOTOS = 5


# --- planning: which objects each photo of a ticket shows -----------------------------------


def _issues(rng: np.random.Generator, subtype: str) -> list[str]:
    pool = ISSUES[subtype]
    k = 2 if len(pool) > 1 and rng.random() < 0.1 else 1
    return [pool[int(i)] for i in sorted(rng.choice(len(pool), k, replace=False))]


def _spoil(rng: np.random.Generator, points: Facts) -> None:
    """Give one of the connect points an issue (in place: the dict is shared with the plan)."""
    victim = pick(rng, points)
    victim.update(point(victim["类别"], _issues(rng, victim["类别"])))


def _label_attrs(rng: np.random.Generator) -> Attrs:
    return label(pick(rng, LABEL_TEXTS) if rng.random() < 0.6 else None)


def _maybe_bad(rng: np.random.Generator, subtype: str, p: float = 0.5) -> Attrs:
    return point(subtype, _issues(rng, subtype) if rng.random() < p else ())


def _distractor(rng: np.random.Generator, kind: str) -> Strip:
    """A strip of objects that the mission's rule ignores. Negatives are common here, so that
    every attribute value is well represented in the training data."""
    n = int(rng.integers(1, 3))
    if kind == "label":
        return Strip("label", [_label_attrs(rng)])
    if kind == "fiber":
        return Strip("fiber", [fiber(pick(rng, (*PROTECTIONS, None, None)), bend_ok=rng.random() < 0.65)])
    if kind == "wire":
        return Strip("wire", [wire(tidy=rng.random() < 0.5)])
    if kind == "ground":
        subtype = pick(rng, ("机柜处接地螺丝", "地排处接地螺丝"))
        return Strip("plate" if subtype == "机柜处接地螺丝" else "busbar", [_maybe_bad(rng, subtype) for _ in range(n)])
    if kind == "plugs":
        subtype = pick(rng, ("ODF端光纤插头", "BBU端光纤插头"))
        return Strip("odf" if subtype == "ODF端光纤插头" else "ports", [_maybe_bad(rng, subtype) for _ in range(n)])
    if kind == "shield":
        return Strip("shield", [shield(pick(rng, SHIELD_BRANDS), correct=rng.random() < 0.5)])
    brand = pick(rng, BRANDS, BRAND_WEIGHTS)  # "ear": a BBU's mounting ear in close-up
    return Strip("ear", [bbu(brand, partial=True), *(_maybe_bad(rng, "BBU安装螺丝") for _ in range(n))])


def _extras(rng: np.random.Generator, kinds: Sequence[str], p: float = 0.35) -> list[Strip]:
    """Distractor strips of the given kinds, each with probability `p`."""
    return [_distractor(rng, kind) for kind in kinds if rng.random() < p]


# Distractor kinds per mission: never a kind that the mission's rule looks at.
WIND_EXTRAS = ("label", "fiber", "wire", "ground", "plugs")
INSTALL_EXTRAS = ("label", "fiber", "wire", "ground", "plugs", "shield")
GROUND_EXTRAS = ("label", "fiber", "plugs", "ear", "shield")
CABLE_EXTRAS = ("label", "wire", "ground", "ear", "shield")


def _fits(strips: list[Strip], strip: Strip) -> bool:
    return len(strips) < MAX_STRIPS and sum(len(s.objects) for s in strips) + len(strip.objects) <= MAX_OBJECTS


def _photo_count(rng: np.random.Generator, most: int) -> int:
    """1..min(most, 5) photos, mostly 2-3 (as in real tickets)."""
    k = min(most, MAX_PHOTOS)
    return 1 + int(rng.choice(k, p=np.asarray((1, 3, 3, 2, 1)[:k]) / sum((1, 3, 3, 2, 1)[:k])))


def _pack(rng: np.random.Generator, relevant: list[Strip], extras: list[Strip]) -> list[PhotoPlan]:
    """Spread strips over photos: each photo gets at least one mission-relevant strip; distractors
    go where they fit (or are left out)."""
    n = _photo_count(rng, len(relevant))
    photos: list[list[Strip]] = [[] for _ in range(n)]
    for i, idx in enumerate(rng.permutation(len(relevant))):
        strip = relevant[int(idx)]
        targets = [i] if i < n else [int(k) for k in rng.permutation(len(photos))]
        target = next((k for k in targets if _fits(photos[k], strip)), None)
        if target is None:
            photos.append([strip])
        else:
            photos[target].append(strip)
    for strip in extras:
        k = int(rng.integers(len(photos)))
        if _fits(photos[k], strip):
            photos[k].append(strip)
    return [PhotoPlan("strips", strips=[strips[int(i)] for i in rng.permutation(len(strips))]) for strips in photos]


def _unit(brand: str, gap: str | None = None) -> Unit:
    """A BBU; `gap` below it: None (stacked tight), 'ok' (shield fitted right), 'missing', 'wrong' (arrow reversed)."""
    if gap is None:
        return Unit(bbu(brand))
    fitted = gap != "missing"
    return Unit(bbu(brand, need=True, equipped=fitted), shield(brand, correct=gap != "wrong") if fitted else None)


def _stack(rng: np.random.Generator, n: int, gap_states: Sequence[str], gap_p: float) -> list[Unit]:
    """`n` BBUs top to bottom; a non-Ericsson BBU above another may get a gap below it."""
    units = []
    for i in range(n):
        brand = pick(rng, BRANDS, BRAND_WEIGHTS)
        gap = pick(rng, gap_states) if i < n - 1 and brand != "爱立信" and rng.random() < gap_p else None
        units.append(_unit(brand, gap))
    return units


def _force_gap(rng: np.random.Generator, units: list[Unit], state: str) -> None:
    """Make one BBU of the stack need a shield, in the given state."""
    if len(units) < 2:
        units.append(_unit(pick(rng, BRANDS, BRAND_WEIGHTS)))
    i = int(rng.integers(len(units) - 1))
    brand = units[i].bbu["品牌"]
    new = _unit(brand if brand in SHIELD_BRANDS else pick(rng, SHIELD_BRANDS), state)
    units[i] = replace(new, screws=units[i].screws, label=units[i].label)


def _trim(units: list[Unit]) -> list[Unit]:
    """Keep a rack photo within MAX_OBJECTS by dropping labels, then screws (never BBUs or shields)."""
    while sum(1 + bool(u.shield) + len(u.screws) + bool(u.label) for u in units) > MAX_OBJECTS:
        labelled = [u for u in units if u.label]
        if labelled:
            labelled[-1].label = None
        else:
            max(units, key=lambda u: len(u.screws)).screws.pop()
    return units


def _add_labels(rng: np.random.Generator, units: list[Unit], p: float = 0.25) -> None:
    for unit in units:
        if rng.random() < p:
            unit.label = _label_attrs(rng)


def _close_up(rng: np.random.Generator, lead: Strip, kinds: Sequence[str]) -> PhotoPlan:
    """A strips photo led by a mission-relevant strip, plus the distractors that fit."""
    strips = [lead]
    for extra in _extras(rng, kinds):
        if _fits(strips, extra):
            strips.append(extra)
    return PhotoPlan("strips", strips=[strips[int(i)] for i in rng.permutation(len(strips))])


def _shield_close_up(rng: np.random.Generator) -> Strip:
    return Strip("shield", [shield(pick(rng, SHIELD_BRANDS))])  # fitted the right way


def _mount_screws(n: int) -> list[Attrs]:
    return [point("BBU安装螺丝") for _ in range(n)]


def plan_wind_shield(rng: np.random.Generator, fail: bool) -> tuple[str | None, list[PhotoPlan]]:
    mode = pick(rng, ("no_bbu", "missing", "wrong"), (0.2, 0.4, 0.4)) if fail else None
    if mode == "no_bbu":  # shield close-ups only
        return mode, [_close_up(rng, _shield_close_up(rng), WIND_EXTRAS) for _ in range(int(rng.integers(1, 3)))]
    racks = [_stack(rng, int(rng.integers(1, 4)), ["ok"], 0.4) for _ in range(_photo_count(rng, 3))]
    if mode or rng.random() < 0.5:  # a fail needs a gap; half of the passes show a fitted shield too
        _force_gap(rng, pick(rng, racks), mode or "ok")
    photos = []
    for units in racks:
        _add_labels(rng, units)
        for unit in units:  # mounting screws do not bear on the shield rule
            if rng.random() < 0.3:
                unit.screws = [_maybe_bad(rng, "BBU安装螺丝") for _ in range(int(rng.integers(1, 3)))]
        photos.append(PhotoPlan("rack", units=_trim(units)))
    if len(photos) < MAX_PHOTOS - 1 and rng.random() < 0.35:
        photos.append(_close_up(rng, _shield_close_up(rng), WIND_EXTRAS))
    return mode, photos


def plan_bbu_install(rng: np.random.Generator, fail: bool) -> tuple[str | None, list[PhotoPlan]]:
    mode = pick(rng, ("no_bbu", "no_screw", "bad_screw"), (0.25, 0.25, 0.5)) if fail else None
    if mode == "no_bbu":  # ear close-ups: screws but no BBU body
        n = int(rng.integers(1, 3))
        return mode, [
            _close_up(rng, Strip("ear", _mount_screws(int(rng.integers(1, 3)))), INSTALL_EXTRAS) for _ in range(n)
        ]
    photos = []
    for _ in range(_photo_count(rng, 4)):
        if mode != "no_screw" and rng.random() < 0.4:
            ear = [bbu(pick(rng, BRANDS, BRAND_WEIGHTS), partial=True), *_mount_screws(int(rng.integers(1, 3)))]
            photos.append(_close_up(rng, Strip("ear", ear), INSTALL_EXTRAS))
        else:  # shields are distractors here, in any state
            units = _stack(rng, int(rng.integers(1, 3)), ["ok", "missing", "wrong"], 0.4)
            for unit in units:
                unit.screws = [] if mode == "no_screw" else _mount_screws(int(rng.integers(0, 3)))
            _add_labels(rng, units)
            photos.append(PhotoPlan("rack", units=_trim(units)))
    seen = [o for p in photos for o in p.objects() if o["类别"] == "BBU安装螺丝"]
    if mode != "no_screw" and not seen:
        first = next(p for p in photos if p.view == "rack")  # ear close-ups always carry a screw
        first.units[0].screws += _mount_screws(1)
        seen = first.units[0].screws
    if mode == "bad_screw":
        _spoil(rng, seen)
    return mode, photos


def plan_ground_wire(rng: np.random.Generator, fail: bool) -> tuple[str | None, list[PhotoPlan]]:
    modes = ("missing_cabinet", "missing_busbar", "bad_screw", "no_wire", "loose_wire")
    mode = pick(rng, modes, (0.2, 0.2, 0.25, 0.1, 0.25)) if fail else None
    cabinet = [] if mode == "missing_cabinet" else [point("机柜处接地螺丝") for _ in range(int(rng.integers(1, 3)))]
    busbar = [] if mode == "missing_busbar" else [point("地排处接地螺丝") for _ in range(int(rng.integers(1, 4)))]
    wires = [] if mode == "no_wire" else [wire() for _ in range(int(rng.integers(1, 3)))]
    if mode == "bad_screw":
        _spoil(rng, cabinet + busbar)
    if mode == "loose_wire":
        pick(rng, wires).update(wire(tidy=False))
    relevant = [Strip(kind, objs) for kind, objs in (("plate", cabinet), ("busbar", busbar)) if objs]
    relevant += [Strip("wire", [w]) for w in wires]
    return mode, _pack(rng, relevant, _extras(rng, GROUND_EXTRAS))


def plan_cable_routing(rng: np.random.Generator, fail: bool) -> tuple[str | None, list[PhotoPlan]]:
    mode = pick(rng, ("missing_odf", "missing_bbu_end", "bad_plug", "unprotected", "tight_bend")) if fail else None
    odf = [] if mode == "missing_odf" else [point("ODF端光纤插头") for _ in range(int(rng.integers(1, 4)))]
    ports = [] if mode == "missing_bbu_end" else [point("BBU端光纤插头") for _ in range(int(rng.integers(1, 4)))]
    fibres = [fiber(pick(rng, PROTECTIONS)) for _ in range(int(rng.integers(1, 3)))]
    if mode == "bad_plug":
        _spoil(rng, odf + ports)
    victim = int(rng.integers(len(fibres)))
    if mode == "unprotected":
        fibres[victim] = fiber(None)
    if mode == "tight_bend":
        fibres[victim] = fiber(pick(rng, (*PROTECTIONS, None)), bend_ok=False)
    relevant = [Strip(kind, objs) for kind, objs in (("odf", odf), ("ports", ports)) if objs]
    relevant += [Strip("fiber", [f]) for f in fibres]
    return mode, _pack(rng, relevant, _extras(rng, CABLE_EXTRAS))


PLANNERS: dict[str, Callable[[np.random.Generator, bool], tuple[str | None, list[PhotoPlan]]]] = {
    "挡风板安装检查": plan_wind_shield,
    "BBU安装方式检查（正装）": plan_bbu_install,
    "BBU接地线检查": plan_ground_wire,
    "BBU线缆布放要求": plan_cable_routing,
}
MISSIONS = tuple(PLANNERS)  # stable order: a mission's seed stream does not depend on the others chosen


# --- writing ----------------------------------------------------------------------------------


def _not32(x: int) -> int:
    """Nudge a side off a multiple of 32, as real photos are, so the converter must resize (2000 is not one)."""
    return x if x % 32 else x + 1


def image_size(rng: np.random.Generator) -> tuple[int, int]:
    long = int(rng.integers(640, 2001))
    short = max(480, round(long / pick(rng, (4 / 3, 3 / 2, 16 / 9, 5 / 4, 1.0))))
    w, h = (long, short) if rng.random() < 0.5 else (short, long)
    return _not32(w), _not32(h)


def group_id(rng: np.random.Generator, taken: set[str]) -> str:
    """`QC-<LETTERS>-<yyyymmdd>-<7 digits>`, unique within the run."""
    while True:
        day = dt.date(2024, 1, 1) + dt.timedelta(days=int(rng.integers(0, 730)))
        gid = f"QC-{pick(rng, ('TEMP', 'BBU', 'SITE', 'QCA'))}-{day:%Y%m%d}-{int(rng.integers(0, 10**7)):07d}"
        if gid not in taken:
            taken.add(gid)
            return gid


# The config schema's `demo` section is the one home of these defaults.
DEFAULTS = defaults("config", "demo")


@dataclass(frozen=True)
class Options:
    """Shares of the generated data; see `generate`."""

    datalist_fraction: float = DEFAULTS["datalist_fraction"]
    exif_fraction: float = DEFAULTS["exif_fraction"]
    fail_fraction: float = DEFAULTS["fail_fraction"]
    irrelevant_fraction: float = DEFAULTS["irrelevant_fraction"]

    def validate(self) -> None:
        for name, value in vars(self).items():
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must lie in [0, 1], got {value}")


def write_photo(
    plan: PhotoPlan, stem: Path, rng: np.random.Generator, opts: Options
) -> tuple[list[SceneObject], dict[str, Any]]:
    """Render one photo to `<stem>.jpg` and its export to `<stem>.json`; returns its objects and file facts."""
    w, h = image_size(rng)
    scene = build_scene(plan, w, h, rng)
    img = render(scene, rng)
    objects = scene.objects
    exif = Image.Exif()
    orientation = int(rng.integers(2, 9)) if rng.random() < opts.exif_fraction else None
    if orientation:
        # Store what a camera would: pixels that the EXIF tag turns back into the scene.
        method = stored_transpose(orientation)
        img = img.transpose(method)
        objects = [
            replace(
                o,
                points=transpose_points(o.points, method, (w, h)),
                extent=o.extent and transpose_points(o.extent, method, (w, h)),
            )
            for o in objects
        ]
        exif[EXIF_ORIENTATION_TAG] = orientation
    variant = "dataList" if rng.random() < opts.datalist_fraction else "markResult"
    doc = (data_list if variant == "dataList" else mark_result)(objects, img.width, img.height, rng)
    tags = {"exif": exif.tobytes()} if orientation else {}
    img.save(stem.with_suffix(".jpg"), "JPEG", quality=int(rng.integers(75, 94)), **tags)
    stem.with_suffix(".json").write_text(json.dumps(doc, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    return scene.objects, {"orientation": orientation, "variant": variant, "size": [img.width, img.height]}


def generate(
    out: Path,
    missions: Mapping[str, Mapping[str, Any]],
    tickets_per_mission: int,
    seed: int,
    datalist_fraction: float = DEFAULTS["datalist_fraction"],
    exif_fraction: float = DEFAULTS["exif_fraction"],
    fail_fraction: float = DEFAULTS["fail_fraction"],
    irrelevant_fraction: float = DEFAULTS["irrelevant_fraction"],
    manifest: Path | None = None,
    progress: bool | None = None,
) -> dict[str, Any]:
    """Write the demo tickets of `missions` (name → entry of config/missions.yaml, as `load_missions`
    returns them) under `out` (built beside it, then swapped in whole) and the ticket list to
    `manifest`, by default `<out>.json` beside the tree: the converter reads every `*.json` under a
    ticket root, so the list must not sit inside it. Each ticket is labelled by its mission's rule.

    `datalist_fraction` / `exif_fraction` / `irrelevant_fraction`: shares of photos exported in
    the legacy variant / stored with an EXIF orientation / showing nothing relevant;
    `fail_fraction`: planned share of failing tickets per mission. RRU missions are skipped with
    a warning; a BBU mission without a planner here is an error. `progress=None` shows a bar only on a terminal.
    Returns a summary (counts, fail share, seconds)."""
    started = time.perf_counter()
    out = Path(out)
    manifest = out.parent / f"{out.name}.json" if manifest is None else Path(manifest)
    skipped = [m for m, entry in missions.items() if m not in PLANNERS and entry["domain"] == "rru"]
    unknown = [m for m in missions if m not in PLANNERS and m not in skipped]
    if unknown:
        raise ValueError(f"no synthetic scenes for mission(s) {unknown}; the demo renders {list(MISSIONS)}")
    for m in skipped:
        log.warning("demo: skipping %s: RRU missions have no synthetic scenes yet (BBU missions only)", m)
    chosen = [m for m in MISSIONS if m in missions]
    rules = {m: MissionRule.of(m, missions[m]) for m in chosen}
    if not chosen:
        raise ValueError(f"no demo-capable mission among {list(missions)}; choose from {list(MISSIONS)}")
    if tickets_per_mission < 1:
        raise ValueError(f"tickets_per_mission must be at least 1, got {tickets_per_mission}")
    opts = Options(datalist_fraction, exif_fraction, fail_fraction, irrelevant_fraction)
    opts.validate()

    tmp = out.with_name(f".{out.name}.tmp")
    if tmp.exists():  # left by a killed run
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        records = _write_tickets(tmp, rules, tickets_per_mission, seed, opts, progress)
    except BaseException:
        shutil.rmtree(tmp)
        raise
    if out.exists():
        old = out.with_name(f".{out.name}.old")
        out.rename(old)
        tmp.rename(out)
        shutil.rmtree(old)
    else:
        tmp.rename(out)
    described = {m: rule.describe() for m, rule in rules.items()}
    write_json(manifest, {"seed": seed, "missions": chosen, "rules": described, "tickets": records})
    return _summary(out, seed, chosen, skipped, records, time.perf_counter() - started)


def _write_tickets(
    root: Path,
    rules: Mapping[str, MissionRule],
    tickets_per_mission: int,
    seed: int,
    opts: Options,
    progress: bool | None,
) -> list[dict[str, Any]]:
    """Every ticket of every mission; each ticket draws from its own seed stream [seed, mission, index]."""
    taken: set[str] = set()
    records = []
    disable = None if progress is None else not progress
    with tqdm(total=len(rules) * tickets_per_mission, desc="demo tickets", unit="ticket", disable=disable) as bar:
        for mission, rule in rules.items():
            m_index = MISSIONS.index(mission)
            n_fail = round(tickets_per_mission * opts.fail_fraction)
            planned = [True] * n_fail + [False] * (tickets_per_mission - n_fail)
            for t, intend_fail in enumerate(np.random.default_rng([seed, m_index]).permutation(planned)):
                rng = np.random.default_rng([seed, m_index, t])
                records.append(_write_ticket(root, rule, bool(intend_fail), rng, taken, opts))
                bar.update()
    (root / ".staging").rmdir()
    return records


def _write_ticket(
    root: Path,
    rule: MissionRule,
    intend_fail: bool,
    rng: np.random.Generator,
    taken: set[str],
    opts: Options,
) -> dict[str, Any]:
    mission = rule.mission
    gid = group_id(rng, taken)
    mode, photos = PLANNERS[mission](rng, intend_fail)
    if len(photos) < MAX_PHOTOS and rng.random() < opts.irrelevant_fraction * len(photos):
        photos.append(PhotoPlan("irrelevant"))  # about `irrelevant_fraction` of all photos; shuffled in below
    photos = [photos[int(i)] for i in rng.permutation(len(photos))]
    staging = root / ".staging" / gid  # the verdict folder is known only once the photos are drawn
    staging.mkdir(parents=True)
    facts: list[Facts] = []  # per photo
    files = []
    for k, plan in enumerate(photos, start=1):
        objects, info = write_photo(plan, staging / f"{gid}_{k}", rng, opts)
        facts.append([o.attrs for o in objects])
        files.append({"name": f"{gid}_{k}.jpg", "objects": len(objects), **info})
    outcome = rule.evaluate(facts)
    verdict = outcome.verdict
    if verdict is None:  # unreachable: demo facts are whole objects, so a rule always decides
        raise RuntimeError(f"{mission} {gid}: the rule cannot judge the planned objects: {list(outcome.unknown)}")
    reasons = list(outcome.problems if verdict == "fail" else outcome.seen)
    final = root / mission / FOLDER_OF[verdict] / gid
    final.parent.mkdir(parents=True, exist_ok=True)
    staging.rename(final)
    return {
        "mission": mission,
        "group_id": gid,
        "label": verdict,
        "folder": FOLDER_OF[verdict],
        "images": [f["name"] for f in files],
        "reasons": reasons,  # the rule's Reason clauses: what fails it, or where the evidence was seen
        "reason": "；".join(reasons),
        "planned_failure": mode,
        "files": files,
    }


def _summary(
    out: Path, seed: int, chosen: list[str], skipped: list[str], records: list[dict], seconds: float
) -> dict[str, Any]:
    files = [f for r in records for f in r["files"]]
    per = {}
    for mission in chosen:
        mine = [r for r in records if r["mission"] == mission]
        per[mission] = {
            "tickets": len(mine),
            "fail": sum(r["label"] == "fail" for r in mine),
            "images": sum(len(r["images"]) for r in mine),
        }
    return {
        "out": str(out),
        "seed": seed,
        "missions": per,
        "skipped": skipped,
        "tickets": len(records),
        "images": len(files),
        "fail_share": sum(r["label"] == "fail" for r in records) / max(1, len(records)),
        "exif_images": sum(f["orientation"] is not None for f in files),
        "datalist_images": sum(f["variant"] == "dataList" for f in files),
        "seconds": round(seconds, 2),
    }
