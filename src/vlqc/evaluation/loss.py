"""Token-weighted eval loss of a checkpoint on the eval set (docs/evaluation.md#eval-loss).

Contract:
- A row is encoded by ms-swift's template for Qwen3-VL in train mode, so its label mask is the one
  training sees: the answer, `<|im_end|>` and the newline after it. Its images are the canonical
  ones fitted to the run's pixel cap (`template.max_pixels`) by `vlqc.train.augment.resample`, the
  resize of training's data preparation, and re-encoded as it saves them (the same pixels as the
  run's own val rows); ms-swift is told not to resize again (as in training), and each row's image
  grid is checked against that.
- A row longer than the run's `global_max_length` is cut to it by ms-swift's `right` truncation
  (image tokens are kept, text is cut from the end); its labels that were cut off are not counted,
  and the row counts as truncated.
- Per row: the summed cross-entropy over its label tokens (next-token, logits in float32, as
  transformers' causal-LM loss) and the token count. Aggregates are Σ(loss)/Σ(tokens) over the rows
  of a group (all, a bucket, a mode): never a mean of batch means, so batch size and padding change
  nothing but float rounding.
- Logits are computed for label positions only (in chunks): a full vocabulary row per position of a
  batch would cost gigabytes for nothing.
- Token accuracy: a label token is hit when the argmax of the logits before it is that token (greedy
  next-token prediction with the true prefix). Reported overall and per mode, and for dense rows per
  token type (docs/prompts.md#token-types): `desc` (the text of a desc value), `coordinate` (the
  numbers of a bbox_2d/poly/line array) and `format` (everything else: header line, keys, JSON
  punctuation, point counts, `<|im_end|>` and the newline). Types come from character spans of the
  answer text mapped through the tokenizer's offsets, so any dense answer format is typed the same way.

The library part (`RowLoss`, `summarize`) needs no torch; `Scorer` loads a checkpoint.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import os
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from vlqc.errors import VlqcError
from vlqc.evaluation.buckets import BUCKETS
from vlqc.train.augment import resample
from vlqc.train.sft_data import IMAGE_FORMATS, MODES, SAVE_QUALITY, data_config, swift_env

log = logging.getLogger(__name__)

IGNORE_INDEX = -100  # label of a position without loss (ms-swift and transformers)
# Label positions whose logits are computed at once: bounds the memory of a vocabulary-wide row each.
LOGIT_CHUNK = 256
TOKEN_TYPES = ("desc", "coordinate", "format")
# A desc value (its characters between the quotes) and a geometry array (the numbers between the brackets),
# in the object-map answer and in the older list answer alike.
_DESC_VALUE = re.compile(r'"desc"\s*:\s*"((?:[^"\\]|\\.)*)"')
_GEOMETRY = re.compile(r'"(?:bbox_2d|poly|line)"\s*:\s*\[([^\]]*)\]')
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


@dataclass(frozen=True)
class RowLoss:
    id: str
    mode: str
    bucket: str
    loss: float  # summed cross-entropy over the row's label tokens
    tokens: int
    truncated: bool
    hits: int = 0  # label tokens the argmax predicted
    # Dense rows: token type → (label tokens, hits); empty for other modes.
    types: Mapping[str, tuple[int, int]] = field(default_factory=dict)


def token_weighted(losses: Iterable[RowLoss]) -> float | None:
    """Σ loss / Σ tokens; None without tokens."""
    losses = list(losses)
    tokens = sum(r.tokens for r in losses)
    return sum(r.loss for r in losses) / tokens if tokens else None


def accuracy(losses: Iterable[RowLoss]) -> float | None:
    """Σ hits / Σ tokens; None without tokens."""
    losses = list(losses)
    tokens = sum(r.tokens for r in losses)
    return sum(r.hits for r in losses) / tokens if tokens else None


def char_types(answer: str) -> list[str]:
    """The token type of each character of a dense answer: `desc`, `coordinate` or `format`."""
    types = ["format"] * len(answer)
    for match in _DESC_VALUE.finditer(answer):
        types[match.start(1) : match.end(1)] = ["desc"] * (match.end(1) - match.start(1))
    for match in _GEOMETRY.finditer(answer):
        for number in _NUMBER.finditer(answer, match.start(1), match.end(1)):
            types[number.start() : number.end()] = ["coordinate"] * (number.end() - number.start())
    return types


def token_types(answer: str, offsets: Sequence[tuple[int, int]]) -> list[str]:
    """The type of each token of `answer`, given its (start, end) character offsets: `desc` if it
    covers a desc character, else `coordinate` if it covers a coordinate digit, else `format` (a
    token that merges a closing quote into the desc text counts for the desc)."""
    chars = char_types(answer)
    out = []
    for start, end in offsets:
        covered = set(chars[start:end])
        out.append(next((t for t in TOKEN_TYPES if t in covered), "format"))
    return out


def summarize(losses: Sequence[RowLoss]) -> dict[str, Any]:
    """The keys of schema eval_loss: loss overall, per bucket, per mode, counts and truncation; token
    accuracy overall, per mode, and per token type of the dense rows."""
    out: dict[str, Any] = {"eval_loss": token_weighted(losses)}
    for bucket in BUCKETS:
        out[f"eval_loss_{bucket}"] = token_weighted(r for r in losses if r.bucket == bucket)
    for mode in MODES:
        out[f"eval_loss_{mode}"] = token_weighted(r for r in losses if r.mode == mode)
    out |= {
        "eval_label_tokens_total": sum(r.tokens for r in losses),
        "eval_examples_total": len(losses),
        "eval_truncated_pct": 100.0 * sum(r.truncated for r in losses) / len(losses) if losses else 0.0,
        "bucket_counts": {bucket: sum(r.bucket == bucket for r in losses) for bucket in BUCKETS},
        "mode_counts": {mode: sum(r.mode == mode for r in losses) for mode in MODES},
        "eval_token_acc": accuracy(losses),
    }
    for mode in MODES:
        out[f"eval_token_acc_{mode}"] = accuracy(r for r in losses if r.mode == mode)
    types = {}
    for kind in TOKEN_TYPES:
        tokens = sum(r.types.get(kind, (0, 0))[0] for r in losses)
        hits = sum(r.types.get(kind, (0, 0))[1] for r in losses)
        types[kind] = {"tokens": tokens, "acc": hits / tokens if tokens else None}
    out["dense_token_types"] = types
    return out


def fit_to_cap(image: Image.Image, max_pixels: int, factor: int) -> Image.Image:
    """`image` as training's data preparation would feed it: RGB, sides multiples of `factor`, at
    most `max_pixels` (unchanged when it already conforms)."""
    rgb = image.convert("RGB")
    return resample(rgb, np.eye(3), rgb.size, max_pixels=max_pixels, factor=factor, fill=(0, 0, 0))[0]


def load_row_images(
    rows: Sequence[Mapping[str, Any]], root: Path, max_pixels: int, factor: int
) -> list[list[Image.Image]]:
    """The images of each row (paths relative to `root`) as training reads them: fitted to the cap
    and, when that resized one, encoded in its file's format as data preparation saves it (so the
    pixels are the very ones of the run's val rows)."""
    out = []
    for row in rows:
        images = []
        for rel in row["images"]:
            path = root / rel
            try:
                with Image.open(path) as image:
                    fitted = fit_to_cap(image, max_pixels, factor)
                    resized = fitted.size != image.size
                if resized:
                    buffer = io.BytesIO()
                    fitted.save(buffer, format=IMAGE_FORMATS[path.suffix.lower()], quality=SAVE_QUALITY)
                    with Image.open(buffer) as saved:
                        fitted = saved.convert("RGB")
            except (OSError, KeyError) as exc:
                raise VlqcError(f"row {row['id']}: cannot read image {path}: {exc!r}") from exc
            images.append(fitted)
        out.append(images)
    return out


def _by_type(types: Sequence[str] | None, hits: Sequence[bool]) -> dict[str, tuple[int, int]]:
    """(tokens, hits) per token type of one row; {} for a row that is not typed."""
    if types is None:
        return {}
    if len(types) != len(hits):
        raise VlqcError(f"{len(types)} token types for {len(hits)} label tokens")
    return {kind: (types.count(kind), sum(h for t, h in zip(types, hits) if t == kind)) for kind in TOKEN_TYPES}


@contextlib.contextmanager
def scoped_environ(values: Mapping[str, str]) -> Iterator[None]:
    """`values` set in os.environ for the block, the earlier values (or their absence) restored after."""
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def checkpoint_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments every job that evaluates one checkpoint takes (eval loss, ablation, golden dump, grounding)."""
    parser.add_argument("--checkpoint", type=Path, required=True, help="step folder: a full model or a LoRA adapter")
    parser.add_argument(
        "--base", type=Path, required=True, help="base model folder (processor, tokenizer; a LoRA's base)"
    )
    parser.add_argument(
        "--config",
        type=Path,
        required=True,
        help="the run's training config: a config/train YAML (merged and validated here) or a resolved .json",
    )
    parser.add_argument("--images", type=Path, required=True, help="folder the rows' image paths are relative to")


def load_checkpoint(checkpoint: Path, base: Path, torch_dtype: str):
    """A step folder as a model in eval mode: a LoRA adapter on its base (vlqc.train.merge), a full model directly."""
    import torch
    from transformers import AutoModelForImageTextToText

    from vlqc.train.merge import is_adapter, load_with_adapter

    if not (checkpoint / "config.json").is_file() and not is_adapter(checkpoint):
        raise VlqcError(f"{checkpoint}: neither a model (config.json) nor a LoRA adapter (adapter_config.json)")
    dtype = getattr(torch, torch_dtype)
    if is_adapter(checkpoint):
        model = load_with_adapter(base, checkpoint).to(dtype)
    else:
        model = AutoModelForImageTextToText.from_pretrained(checkpoint, dtype=dtype)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    return model.to(device).eval()


class Scorer:
    """A checkpoint and ms-swift's template for it, set up as the run trained: summed label loss per row."""

    def __init__(self, checkpoint: str | os.PathLike, base: str | os.PathLike, train_cfg: Mapping[str, Any]):
        from swift import get_processor, get_template

        self.checkpoint, base = Path(checkpoint), Path(base)
        data = data_config(train_cfg)
        self.max_pixels, self.factor = data.max_pixels, data.factor
        # qwen_vl_utils reads its pixel budget when ms-swift first builds a processor; the budget of
        # training (swift_env) leaves every fitted image as it is.
        with scoped_environ({k: v for k, v in swift_env(base, data).items() if k != "ROOT_IMAGE_DIR"}):
            processor = get_processor(str(base), model_type="qwen3_vl")
        self.patch = processor.image_processor.patch_size
        self.tokenizer = processor.tokenizer
        template = train_cfg["template"]

        def make(truncation: str):
            made = get_template(
                processor,
                template_type="qwen3_vl",
                max_length=train_cfg["global_max_length"],
                truncation_strategy=truncation,
                padding_side=template["padding_side"],
            )
            made.set_mode("train")  # labels and the label mask as training builds them
            return made

        # `raise` tells which rows are too long; those are encoded again by the `right` one.
        self.template, self.truncating = make("raise"), make("right")
        self.model = load_checkpoint(self.checkpoint, base, train_cfg["model"]["torch_dtype"])
        for made in (self.template, self.truncating):
            made.model = self.model  # the collator asks the model for Qwen3-VL's MRoPE positions

    def encode(self, row: Mapping[str, Any], images: Sequence[Image.Image]) -> tuple[dict[str, Any], bool]:
        """ms-swift's encoding of a row with these images, and whether it was cut to the length limit."""
        from swift.template import MaxLengthError

        inputs: dict[str, Any] = {"messages": [dict(m) for m in row["messages"]]}
        if images:
            inputs["images"] = list(images)
        try:
            encoded, truncated = self.template.encode(inputs), False
        except MaxLengthError:
            encoded, truncated = self.truncating.encode(dict(inputs, messages=[dict(m) for m in row["messages"]])), True
        if images:
            grid = encoded["image_grid_thw"].tolist()
            expected = [[1, im.height // self.patch, im.width // self.patch] for im in images]
            if grid != expected:
                raise VlqcError(
                    f"row {row['id']}: ms-swift resized its images (grid {grid}, expected {expected}); "
                    "qwen_vl_utils' pixel budget was set before this evaluation by another processor"
                )
        return encoded, truncated

    def label_types(self, row: Mapping[str, Any], label_ids: Sequence[int]) -> list[str]:
        """The token type of each label token of a row (its answer's tokens, then `<|im_end|>` and the
        newline: format); the labels must be the answer's tokens as the tokenizer makes them."""
        answer = row["messages"][-1]["content"]
        encoded = self.tokenizer(answer, add_special_tokens=False, return_offsets_mapping=True)
        ids = list(encoded["input_ids"])
        n = min(len(ids), len(label_ids))
        if list(label_ids[:n]) != ids[:n] or (len(label_ids) > len(ids) + 2):
            raise VlqcError(f"row {row['id']}: its label tokens are not its answer's tokens, so they cannot be typed")
        return (token_types(answer, encoded["offset_mapping"]) + ["format", "format"])[: len(label_ids)]

    def row_losses(
        self,
        rows: Sequence[Mapping[str, Any]],
        images: Sequence[Sequence[Image.Image]],
        batch_size: int,
        desc: str = "eval loss",
    ) -> list[RowLoss]:
        """Summed label loss and label tokens of each row, in batches of `batch_size` (in row order)."""
        import torch
        from tqdm import tqdm

        if len(rows) != len(images):
            raise VlqcError(f"{len(rows)} rows but {len(images)} image lists")
        out: list[RowLoss] = []
        # Jobs log to files: a progress line every few seconds, not a redraw per batch.
        with torch.inference_mode(), tqdm(total=len(rows), desc=desc, unit="row", mininterval=5) as bar:
            for chunk, truncated, types, batch in self._prepared(rows, images, batch_size):
                sums, counts, hits = self._batch_losses(batch)
                out += [
                    RowLoss(row["id"], row["mode"], row["bucket"], s, n, cut, sum(hit), _by_type(kinds, hit))
                    for row, cut, kinds, s, n, hit in zip(chunk, truncated, types, sums, counts, hits)
                ]
                bar.update(len(chunk))
        return out

    def _prepared(
        self, rows: Sequence[Mapping[str, Any]], images: Sequence[Sequence[Image.Image]], batch_size: int
    ) -> Iterator[tuple[Sequence[Mapping[str, Any]], list[bool], list[list[str] | None], dict[str, Any]]]:
        """(rows, truncated flags, label token types (dense rows), collated batch) per batch, one batch
        ahead in a thread: ms-swift's
        encoding and collation run on the CPU while the device scores the batch before (on an H100 the
        encoding of a 2B-shaped model's rows took a third of the time of the whole loop)."""

        import torch

        model_dtype = next(self.model.parameters()).dtype
        to_gpu = next(self.model.parameters()).device.type == "cuda"

        def prepare(start: int):
            chunk = rows[start : start + batch_size]
            encoded = [self.encode(row, ims) for row, ims in zip(chunk, images[start : start + batch_size])]
            types = [
                self.label_types(row, [t for t in e["labels"] if t != IGNORE_INDEX]) if row["mode"] == "dense" else None
                for row, (e, _) in zip(chunk, encoded)
            ]
            batch = self.template.data_collator([e for e, _ in encoded])
            if "pixel_values" in batch:  # the vision tower's first step, done here: half the bytes to copy
                batch["pixel_values"] = batch["pixel_values"].to(model_dtype)
            if to_gpu:  # page-locked, so the copy to the GPU runs asynchronously
                batch = {k: v.pin_memory() if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
            return chunk, [cut for _, cut in encoded], types, batch

        starts = range(0, len(rows), batch_size)
        with ThreadPoolExecutor(max_workers=1) as pool:
            ahead = pool.submit(prepare, starts[0]) if starts else None
            for following in [*starts[1:], None]:
                prepared = ahead.result()
                ahead = pool.submit(prepare, following) if following is not None else None
                yield prepared

    def _batch_losses(self, batch: dict[str, Any]) -> tuple[list[float], list[int], list[list[bool]]]:
        """Per row: summed label loss, label tokens, and whether the argmax hit each label token (in order)."""
        import torch
        import torch.nn.functional as F

        labels = batch.pop("labels")
        batch.pop("text_position_ids", None)  # as ms-swift's trainer does before the forward
        device = next(self.model.parameters()).device
        batch = {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
        hf = self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model
        body, head = getattr(hf, hf.base_model_prefix), hf.get_output_embeddings()
        hidden = body(**batch, use_cache=False).last_hidden_state
        # Position t predicts label t+1 (the causal-LM shift).
        targets = labels[:, 1:].to(device)
        mask = targets != IGNORE_INDEX
        row_of = mask.nonzero()[:, 0]
        states, wanted = hidden[:, :-1][mask], targets[mask]
        losses, hits = [torch.zeros(0, device=device)], [torch.zeros(0, dtype=torch.bool, device=device)]
        for i in range(0, len(wanted), LOGIT_CHUNK):
            logits, target = head(states[i : i + LOGIT_CHUNK]).float(), wanted[i : i + LOGIT_CHUNK]
            losses.append(F.cross_entropy(logits, target, reduction="none"))
            hits.append(logits.argmax(dim=-1) == target)
        sums = torch.zeros(len(labels), dtype=torch.float64, device=device)
        sums.index_add_(0, row_of, torch.cat(losses).double())
        counts = mask.sum(dim=1).tolist()
        flat = torch.cat(hits).tolist()
        # Label positions are in row-major order: each row's hits are the next `count` of them.
        starts = np.cumsum([0, *counts])
        return sums.tolist(), counts, [flat[a:b] for a, b in zip(starts[:-1], starts[1:])]
