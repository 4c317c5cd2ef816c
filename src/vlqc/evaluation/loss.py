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

The library part (`RowLoss`, `summarize`) needs no torch; `Scorer` loads a checkpoint.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
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


@dataclass(frozen=True)
class RowLoss:
    id: str
    mode: str
    bucket: str
    loss: float  # summed cross-entropy over the row's label tokens
    tokens: int
    truncated: bool


def token_weighted(losses: Iterable[RowLoss]) -> float | None:
    """Σ loss / Σ tokens; None without tokens."""
    losses = list(losses)
    tokens = sum(r.tokens for r in losses)
    return sum(r.loss for r in losses) / tokens if tokens else None


def summarize(losses: Sequence[RowLoss]) -> dict[str, Any]:
    """The loss keys of schema eval_loss: overall, per bucket, per mode, counts and truncation."""
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
    }
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


@contextlib.contextmanager
def _environ(values: Mapping[str, str]) -> Iterator[None]:
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
    """The arguments every job that evaluates one checkpoint takes (eval loss, ablation, golden dump)."""
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
        with _environ({k: v for k, v in swift_env(base, data).items() if k != "ROOT_IMAGE_DIR"}):
            processor = get_processor(str(base), model_type="qwen3_vl")
        self.patch = processor.image_processor.patch_size
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
            for chunk, truncated, batch in self._prepared(rows, images, batch_size):
                sums, counts = self._batch_losses(batch)
                out += [
                    RowLoss(row["id"], row["mode"], row["bucket"], s, n, cut)
                    for row, cut, s, n in zip(chunk, truncated, sums, counts)
                ]
                bar.update(len(chunk))
        return out

    def _prepared(
        self, rows: Sequence[Mapping[str, Any]], images: Sequence[Sequence[Image.Image]], batch_size: int
    ) -> Iterator[tuple[Sequence[Mapping[str, Any]], list[bool], dict[str, Any]]]:
        """(rows, truncated flags, collated batch) per batch, one batch ahead in a thread: ms-swift's
        encoding and collation run on the CPU while the device scores the batch before (on an H100 the
        encoding of a 2B-shaped model's rows took a third of the time of the whole loop)."""

        import torch

        model_dtype = next(self.model.parameters()).dtype
        to_gpu = next(self.model.parameters()).device.type == "cuda"

        def prepare(start: int):
            chunk = rows[start : start + batch_size]
            encoded = [self.encode(row, ims) for row, ims in zip(chunk, images[start : start + batch_size])]
            batch = self.template.data_collator([e for e, _ in encoded])
            if "pixel_values" in batch:  # the vision tower's first step, done here: half the bytes to copy
                batch["pixel_values"] = batch["pixel_values"].to(model_dtype)
            if to_gpu:  # page-locked, so the copy to the GPU runs asynchronously
                batch = {k: v.pin_memory() if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
            return chunk, [cut for _, cut in encoded], batch

        starts = range(0, len(rows), batch_size)
        with ThreadPoolExecutor(max_workers=1) as pool:
            ahead = pool.submit(prepare, starts[0]) if starts else None
            for following in [*starts[1:], None]:
                prepared = ahead.result()
                ahead = pool.submit(prepare, following) if following is not None else None
                yield prepared

    def _batch_losses(self, batch: dict[str, Any]) -> tuple[list[float], list[int]]:
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
        losses = torch.cat(
            [
                F.cross_entropy(
                    head(states[i : i + LOGIT_CHUNK]).float(), wanted[i : i + LOGIT_CHUNK], reduction="none"
                )
                for i in range(0, len(wanted), LOGIT_CHUNK)
            ]
            or [torch.zeros(0, device=device)]
        )
        sums = torch.zeros(len(labels), dtype=torch.float64, device=device).index_add_(0, row_of, losses.double())
        return sums.tolist(), mask.sum(dim=1).tolist()
