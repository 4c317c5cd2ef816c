"""The golden set, and what each saved checkpoint answers to it (docs/evaluation.md#golden-set-and-dumps).

- Golden set: `eval.golden_rows` rows of the eval candidates, balanced across length buckets by
  `vlqc.evaluation.buckets.balanced_draw` with `eval.golden_seed`. A row keeps the candidate's id,
  images, bucket, label_len, mode and messages; `gt_text` is its assistant message (the target).
- Golden dump: one checkpoint's answer to every golden row, decoded with the fixed settings
  `eval.golden_decoding` (schema golden_dump_row): `pred_text` as generated (special tokens dropped),
  `pred_tokens_len` its tokens counted as `label_len` is (the base model's tokenizer), `pred_sha256`.
  The model sees each row's system and user messages and its images fitted to the run's pixel cap as
  training's data preparation fits them (as the eval loss does); the processor is the base model's.
- Reproducible: rows go in golden-file order, `batch_size` at a time, and the sampler is seeded with
  `seed` before every batch, so a checkpoint, a golden file and the settings give the same dump
  (a row's answer depends on the rows it is batched with: same batches, same answers).
- Changes between two dumps of one golden set are told apart by `pred_sha256` (`changed_answers`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from tqdm import tqdm

from vlqc.errors import VlqcError
from vlqc.evaluation.buckets import balanced_draw
from vlqc.inference.sampling import Sampling

GOLDEN_FIELDS = ("id", "images", "gt_text", "bucket", "label_len", "mode", "messages")


def golden_set(candidates: Sequence[Mapping[str, Any]], n: int, seed: int, where: str) -> list[dict[str, Any]]:
    """`n` rows of `candidates` (eval_row records, read from `where`), balanced across buckets."""
    if len(candidates) < n:
        raise VlqcError(
            f"{where}: {len(candidates)} candidates, fewer than the {n} golden rows asked for (eval.golden_rows)"
        )
    return [golden_row(candidate) for candidate in balanced_draw(candidates, n, seed)]


def golden_row(candidate: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "id": candidate["id"],
        "images": list(candidate["images"]),
        "gt_text": candidate["messages"][-1]["content"],
        "bucket": candidate["bucket"],
        "label_len": candidate["label_len"],
        "mode": candidate["mode"],
        "messages": [dict(message) for message in candidate["messages"]],
        # The prompt spec, so that a dump words the row with its run's prompts (docs/prompts.md).
        **({"prompt": dict(candidate["prompt"])} if "prompt" in candidate else {}),
    }


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def decoding(settings: Mapping[str, Any]) -> Sampling:
    """The sampler of `eval.golden_decoding` (its batch_size is not a sampler setting)."""
    return Sampling(
        max_new_tokens=settings["max_new_tokens"],
        temperature=settings["temperature"],
        top_p=settings["top_p"],
        seed=settings["seed"],
    )


def dump_rows(
    generate: Callable[[list[Any], Sampling], list[str]],
    request: Callable[[Mapping[str, Any]], Any],
    count_tokens: Callable[[str], int],
    golden: Sequence[Mapping[str, Any]],
    settings: Mapping[str, Any],
) -> list[dict[str, Any]]:
    """The dump rows of `golden`: `request(row)` builds a row's generation request, `generate(requests,
    sampling)` answers a batch (vlqc.inference.generation.Generator.generate), `count_tokens` counts."""
    sampling, size = decoding(settings), settings["batch_size"]
    out = []
    with tqdm(total=len(golden), desc="golden dump", unit="row", mininterval=5) as progress:
        for start in range(0, len(golden), size):
            batch = golden[start : start + size]
            for row, text in zip(batch, generate([request(row) for row in batch], sampling), strict=True):
                out.append(
                    {
                        **{key: row[key] for key in GOLDEN_FIELDS},
                        "pred_text": text,
                        "pred_tokens_len": count_tokens(text),
                        "pred_sha256": sha256(text),
                    }
                )
            progress.update(len(batch))
    return out


def dump_checkpoint(
    step_dir: Path,
    base: Path,
    train_cfg: Mapping[str, Any],
    golden: Sequence[Mapping[str, Any]],
    images_root: Path,
    settings: Mapping[str, Any],
) -> list[dict[str, Any]]:
    """The golden dump of one saved step: a full model, or a LoRA adapter on `base`."""
    from vlqc.evaluation.candidates import token_counter, worded
    from vlqc.evaluation.loss import load_checkpoint, load_row_images
    from vlqc.inference.generation import Generator, Request
    from vlqc.train.config import prompt_config
    from vlqc.train.sft_data import data_config

    data = data_config(train_cfg)
    model = load_checkpoint(step_dir, base, "float32")
    # The base model's processor, its budget the run's cap: the fitted images pass through unchanged.
    generator = Generator(base, device=model.device.type, max_pixels=data.max_pixels, model=model)

    def request(row: Mapping[str, Any]) -> Request:
        system, user = (message["content"] for message in row["messages"][:2])
        return Request(system, user, load_row_images([row], images_root, data.max_pixels, data.factor)[0])

    # Asked in the run's own words: dump rows record the messages the model saw.
    golden = worded(golden, prompt_config(train_cfg))
    return dump_rows(generator.generate, request, token_counter(base), golden, settings)


def changed_answers(
    before: Sequence[Mapping[str, Any]], after: Sequence[Mapping[str, Any]], names: tuple[str, str]
) -> list[dict[str, Any]]:
    """The rows whose answer differs (by pred_sha256) between two dumps of one golden set, whose files are
    `names`; dumps of different golden sets (other ids, order or targets) are an error naming both."""
    check_same_golden_set(before, after, names)
    return [
        {
            "id": a["id"],
            "bucket": a["bucket"],
            "mode": a["mode"],
            "before": a["pred_text"],
            "after": b["pred_text"],
            "before_sha256": a["pred_sha256"],
            "after_sha256": b["pred_sha256"],
        }
        for a, b in zip(before, after, strict=True)
        if a["pred_sha256"] != b["pred_sha256"]
    ]


def check_same_golden_set(
    before: Sequence[Mapping[str, Any]], after: Sequence[Mapping[str, Any]], names: tuple[str, str]
) -> None:
    def key(row: Mapping[str, Any]) -> tuple:
        return row["id"], row["gt_text"], tuple(row["images"])

    if len(before) != len(after):
        raise VlqcError(f"{names[0]} has {len(before)} rows, {names[1]} {len(after)}: dumps of different golden sets")
    for index, (a, b) in enumerate(zip(before, after)):
        if key(a) != key(b):
            raise VlqcError(
                f"{names[0]} and {names[1]} are dumps of different golden sets: row {index + 1} is {a['id']!r} "
                f"in one and {b['id']!r} in the other"
                + (" (same id, other target or images)" if a["id"] == b["id"] else "")
            )


def check_hashes(rows: Iterable[Mapping[str, Any]], where: str) -> None:
    """Each row's pred_sha256 must be the hash of its pred_text (a hand-edited dump would mislead a diff)."""
    for number, row in enumerate(rows, start=1):
        if row["pred_sha256"] != sha256(row["pred_text"]):
            raise VlqcError(f"{where}: row {number} ({row['id']}): pred_sha256 is not the sha256 of its pred_text")
