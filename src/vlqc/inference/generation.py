"""Batched generation with a Qwen3-VL checkpoint folder (plain transformers).

One engine serves every stage that asks the model something: evaluation,
Stage-A summaries and Stage-B verdicts. Prompts come as (system, user) text in
the ms-swift convention, `<image>` marking where each image goes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor, LogitsProcessor, LogitsProcessorList
from transformers.generation.logits_process import TopPLogitsWarper
from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize

from vlqc.errors import SampleError
from vlqc.inference.prompts import hf_messages
from vlqc.inference.sampling import Sampling


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


class Nucleus(LogitsProcessor):
    """Temperature, then top-p: what transformers' temperature and top-p warpers give, without sorting the
    whole vocabulary every step (~50 ms a row on 2 CPU cores for Qwen's 152k tokens, 30 times a tiny model's
    step). The nucleus is looked for among the `first` most likely tokens (a handful at a low temperature);
    only a row whose nucleus is larger takes the full sort."""

    def __init__(self, temperature: float, top_p: float, first: int = 64):
        self.temperature, self.top_p, self.first = temperature, top_p, first

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        scores = scores / self.temperature
        if self.top_p >= 1:
            return scores
        top, index = scores.softmax(dim=-1).topk(min(self.first, scores.shape[-1]), dim=-1)
        above = top.cumsum(dim=-1) - top  # probability of the tokens ranked above each
        if (above[:, -1] + top[:, -1] < self.top_p).any():
            return TopPLogitsWarper(self.top_p)(input_ids, scores)
        # A token stays while the ones above it hold less than top_p (the most likely one always stays).
        kept = scores.gather(-1, index).masked_fill(above >= self.top_p, -float("inf"))
        return torch.full_like(scores, -float("inf")).scatter(-1, index, kept)


class Generator:
    """Greedy or sampled batched generation; left padding is set here, every time."""

    def __init__(
        self,
        model_dir: str | Path,
        device: str = "cpu",
        dtype: torch.dtype = torch.float32,
        max_pixels: int | None = None,
        model: torch.nn.Module | None = None,
    ):
        """`model`: one already loaded (a LoRA adapter on its base); `model_dir` then gives the processor."""
        self.processor = load_processor(model_dir, max_pixels)
        # Decoder-only batching needs the prompt flush right; the setting is not saved with the tokenizer.
        self.processor.tokenizer.padding_side = "left"
        if model is None:
            model = AutoModelForImageTextToText.from_pretrained(model_dir, dtype=dtype)
        self.model = model.to(device).eval()
        self.device = device

    def check_image(self, image: Image.Image, where: str) -> None:
        check_image(self.processor, image, where)

    def encode(self, requests: list[Request]) -> dict[str, torch.Tensor]:
        texts = [
            self.processor.apply_chat_template(
                hf_messages(r.system, r.user, r.images),
                tokenize=False,
                add_generation_prompt=True,
                enable_thinking=False,
            )
            for r in requests
        ]
        images = [image for r in requests for image in r.images]
        batch = self.processor(text=texts, images=images or None, padding=True, return_tensors="pt")
        return batch.to(self.device)

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
            # Temperature and top-p are Nucleus's; transformers' own warpers stay off (1.0 turns them off).
            logits_processor=LogitsProcessorList([Nucleus(sampling.temperature, sampling.top_p)] if do_sample else []),
            temperature=1.0 if do_sample else None,
            top_p=1.0 if do_sample else None,
            top_k=None,
            repetition_penalty=sampling.repetition_penalty,
        )
        new_tokens = output[:, batch["input_ids"].shape[1] :]
        return self.processor.batch_decode(new_tokens, skip_special_tokens=True)
