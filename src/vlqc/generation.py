"""Batched generation with a Qwen3-VL checkpoint folder (plain transformers).

One engine serves every stage that asks the model something: evaluation,
Stage-A summaries and Stage-B verdicts. Prompts come as (system, user) text in
the ms-swift convention, `<image>` marking where each image goes.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor, BatchFeature
from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize

from vlqc.errors import SampleError
from vlqc.prompts import hf_messages
from vlqc.sampling import Sampling


@dataclass
class Request:
    system: str
    user: str
    images: list[Image.Image] = field(default_factory=list)


def load_processor(model_dir: str | Path, max_pixels: int | None = None):
    """The checkpoint's processor, with `max_pixels` as its pixel budget when given."""
    processor = AutoProcessor.from_pretrained(model_dir)
    if max_pixels is not None:
        ip = processor.image_processor
        ip.size = {"shortest_edge": ip.size["shortest_edge"], "longest_edge": max_pixels}
    return processor


def resized(processor, height: int, width: int) -> tuple[int, int]:
    """The size the processor resizes an image to (ValueError for one it refuses)."""
    ip = processor.image_processor
    return smart_resize(height, width, ip.patch_size * ip.merge_size, ip.size["shortest_edge"], ip.size["longest_edge"])


def check_image(processor, image: Image.Image, where: str) -> None:
    """Raise SampleError('unprocessable_image') for a photo the image processor would refuse
    (an aspect ratio over 200), so that it fails alone rather than its whole batch."""
    try:
        resized(processor, image.height, image.width)
    except ValueError as exc:
        raise SampleError("unprocessable_image", str(exc), where) from exc


# What the processor asks of its image processor when it encodes a batch; image inputs made ahead (by worker
# processes) are made with the same, and `encode_requests` refuses to use them if the processor asks otherwise.
IMAGE_KWARGS = {"return_tensors": "pt"}


def process_images(image_processor: Any, images: list[Image.Image]) -> BatchFeature:
    """The image processor's part of encoding `images` (pixel_values, image_grid_thw), as the processor runs it."""
    return image_processor(images, **IMAGE_KWARGS)


def encode_requests(processor: Any, requests: list[Request],
                    image_inputs: Mapping[str, torch.Tensor] | None = None) -> BatchFeature:
    """Model inputs of `requests`: one batch, padded on the tokenizer's side. `image_inputs`, what
    `process_images` makes of all their images in order, computed elsewhere (worker processes), leaves the
    processor only its text side: chat template, each image's pad token widened to the image's tokens, tokenizer."""
    texts = [
        processor.apply_chat_template(
            hf_messages(r.system, r.user, r.images), tokenize=False, add_generation_prompt=True, enable_thinking=False
        )
        for r in requests
    ]
    images = [image for r in requests for image in r.images]
    if image_inputs is not None:
        processor = copy.copy(processor)  # shallow: the tokenizer and the real image processor stay shared
        processor.image_processor = _PrecomputedImages(processor.image_processor, image_inputs)
    return processor(text=texts, images=images or None, padding=True, return_tensors="pt")


class _PrecomputedImages:
    """An image processor that answers the processor's call with image inputs computed earlier; anything else
    the processor reads of it (merge_size, fetch_images, ...) comes from the real one."""

    def __init__(self, image_processor: Any, image_inputs: Mapping[str, torch.Tensor]):
        self._image_processor = image_processor
        self._image_inputs = image_inputs

    def __call__(self, images: Any, **kwargs: Any) -> BatchFeature:
        if kwargs != IMAGE_KWARGS:
            raise RuntimeError(f"the processor calls its image processor with {kwargs}, but the image inputs were "
                               f"made with {IMAGE_KWARGS}: update vlqc.generation.IMAGE_KWARGS")
        return BatchFeature(dict(self._image_inputs))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._image_processor, name)


class Generator:
    """Greedy or sampled batched generation; left padding is set here, every time."""

    def __init__(self, model_dir: str | Path, device: str = "cpu", dtype: torch.dtype = torch.float32,
                 max_pixels: int | None = None):
        self.processor = load_processor(model_dir, max_pixels)
        # Decoder-only batching needs the prompt flush right; the setting is not saved with the tokenizer.
        self.processor.tokenizer.padding_side = "left"
        self.model = AutoModelForImageTextToText.from_pretrained(model_dir, dtype=dtype).to(device).eval()
        self.device = device

    def check_image(self, image: Image.Image, where: str) -> None:
        check_image(self.processor, image, where)

    def encode(self, requests: list[Request],
               image_inputs: Mapping[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """`encode_requests` on this engine's processor, moved to its device."""
        return encode_requests(self.processor, requests, image_inputs).to(self.device)

    @torch.inference_mode()
    def generate(self, requests: list[Request], sampling: Sampling = Sampling()) -> list[str]:
        if not requests:
            return []
        batch = self.encode(requests)
        do_sample = sampling.temperature > 0
        if sampling.seed is not None:
            torch.manual_seed(sampling.seed)
        output = self.model.generate(
            **batch,
            max_new_tokens=sampling.max_new_tokens,
            do_sample=do_sample,
            temperature=sampling.temperature if do_sample else None,
            top_p=sampling.top_p if do_sample else None,
            top_k=None,
            repetition_penalty=sampling.repetition_penalty,
        )
        new_tokens = output[:, batch["input_ids"].shape[1]:]
        return self.processor.batch_decode(new_tokens, skip_special_tokens=True)
