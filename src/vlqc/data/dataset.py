"""Dataset-level conversion: every export under a root → the files of results/data/<dataset>/."""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from dataclasses import asdict
from pathlib import Path

from vlqc.data.convert import DEFAULTS, ConvertSettings, convert_all, find_exports
from vlqc.data.desc import parse_desc
from vlqc.data.split import split_records, tiny_subset
from vlqc.errors import VlqcError
from vlqc.jsonl import read_jsonl, write_json, write_jsonl

MODES = ("fail_fast", "lenient")


def convert_dataset(
    settings: ConvertSettings, mode: str = DEFAULTS["mode"], workers: int = DEFAULTS["workers"]
) -> dict:
    """Convert all exports; returns the validation summary that was written."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
    exports = find_exports(settings.root)
    if not exports:
        raise VlqcError(f"{settings.root}: no annotation export (*.json) found")
    started = time.perf_counter()
    records, bad_samples, bad_objects = [], [], []
    counts = {"invalid_samples": Counter(), "invalid_objects": Counter(), "objects": Counter(), "domains": Counter()}
    flags: Counter = Counter()
    for result in convert_all(exports, settings, workers):
        for index, exc in result.dropped:
            bad_objects.append({"source": result.source, "index": index, "reason": exc.code, "message": exc.message})
            counts["invalid_objects"][exc.code] += 1
        if result.error is not None:
            if mode == "fail_fast":
                raise VlqcError(
                    f"{settings.root / result.source}: {result.error.message} [{result.error.code}] "
                    "(convert.mode=lenient records bad samples and continues)"
                )
            bad_samples.append({"source": result.source, "reason": result.error.code, "message": result.error.message})
            counts["invalid_samples"][result.error.code] += 1
            continue
        record = result.record
        records.append(record)
        flags.update(result.flags)
        counts["domains"][str(record["domain"])] += 1
        for obj in record["objects"]:
            counts["objects"][next(k for k in obj if k != "desc")] += 1

    out = settings.out_dir
    write_jsonl(out / "all_samples.jsonl", records, schema="sample")
    write_jsonl(out / "invalid_samples.jsonl", bad_samples, schema="invalid_sample")
    write_jsonl(out / "invalid_objects.jsonl", bad_objects, schema="invalid_object")
    write_json(out / "label_vocabulary.json", label_vocabulary(records), schema="label_vocabulary")
    summary = {
        "dataset_root": str(settings.root),
        "mode": mode,
        "exports": len(exports),
        "samples": len(records),
        **{key: dict(sorted(counter.items())) for key, counter in counts.items()},
        "images": {
            "exif_oriented": flags["exif_oriented"],
            "rescaled": flags["rescaled"],
            "resized": flags["resized"],
            "irrelevant": flags["irrelevant"],
            "export_variants": {k.split(":", 1)[1]: v for k, v in sorted(flags.items()) if k.startswith("variant:")},
        },
        "settings": {
            **{k: v for k, v in asdict(settings).items() if k not in ("root", "out_dir", "mission_domains")},
            "workers": workers,
            "seconds": round(time.perf_counter() - started, 3),
        },
    }
    write_json(out / "validation_summary.json", summary, schema="validation_summary")
    return summary


def label_vocabulary(records: list[dict]) -> dict:
    categories: Counter = Counter()
    attributes: dict = defaultdict(lambda: defaultdict(Counter))
    for record in records:
        for obj in record["objects"]:
            pairs = parse_desc(obj["desc"])
            category = pairs.pop("类别")[0]
            categories[category] += 1
            for key, values in pairs.items():
                attributes[category][key].update(values)
    return {
        "categories": dict(sorted(categories.items())),
        "attributes": {
            cat: {key: dict(values) for key, values in sorted(keys.items())} for cat, keys in sorted(attributes.items())
        },
    }


def write_splits(
    all_samples: Path, out_dir: Path, val_fraction: float, seed: int, tiny_train: int, tiny_val: int
) -> dict:
    records = list(read_jsonl(all_samples, schema="sample"))
    train, val = split_records(records, val_fraction, seed)
    outputs = {
        "train": train,
        "val": val,
        "train_tiny": tiny_subset(train, tiny_train, seed),
        "val_tiny": tiny_subset(val, tiny_val, seed),
    }
    for name, subset in outputs.items():
        write_jsonl(out_dir / f"{name}.jsonl", subset, schema="sample")
    return {name: len(subset) for name, subset in outputs.items()}
