"""Batched generation with a Qwen3-VL checkpoint folder (plain transformers).

One engine serves every stage that asks the model something: evaluation,
Stage-A summaries and Stage-B verdicts. Prompts come as (system, user) text in
the ms-swift convention, `<image>` marking where each image goes.

The checkpoint is a model folder or a LoRA adapter folder with its base (`vlqc.inference.checkpoint`,
docs/stage-a.md#checkpoint): an adapter is loaded on its base with peft and merged in memory, in float32 as
the merge rule does (`vlqc.train.merge`), so it generates what its merged folder would, and the fast engine
sees a plain model. `attn_implementation` picks transformers' attention kernels (sdpa, eager,
flash_attention_2 when the flash-attn package is installed).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor, LogitsProcessor, LogitsProcessorList
from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize
from transformers.utils import is_flash_attn_2_available

from vlqc.errors import SampleError, VlqcError
from vlqc.inference.checkpoint import adapter_base, processor_dir
from vlqc.inference.prompts import hf_messages
from vlqc.inference.sampling import Sampling


@dataclass
class Request:
    system: str
    user: str
    images: list[Image.Image] = field(default_factory=list)


# transformers' attention kernels a config may name; flash_attention_2 needs the flash-attn package.
ATTN_IMPLEMENTATIONS = ("sdpa", "eager", "flash_attention_2")


def check_attn_implementation(name: str | None) -> None:
    """A VlqcError for an unknown kernel, or flash_attention_2 without flash-attn importable (transformers
    would only fail once the model is being built)."""
    if name is None:
        return
    if name not in ATTN_IMPLEMENTATIONS:
        raise VlqcError(f"attn_implementation must be one of {', '.join(ATTN_IMPLEMENTATIONS)}, not {name!r}")
    if name == "flash_attention_2" and not is_flash_attn_2_available():
        raise VlqcError(
            "attn_implementation flash_attention_2 needs the flash-attn package (with a CUDA GPU), "
            "which is not importable here: install it, or use sdpa"
        )


def load_model(
    checkpoint: str | Path,
    *,
    base: str | Path | None = None,
    dtype: torch.dtype = torch.float32,
    attn_implementation: str | None = None,
) -> torch.nn.Module:
    """A model folder, or a LoRA adapter folder merged onto its base (see the module docstring), in `dtype`.
    `attn_implementation` None: transformers' choice."""
    check_attn_implementation(attn_implementation)
    options = {} if attn_implementation is None else {"attn_implementation": attn_implementation}
    resolved = adapter_base(checkpoint, base)
    if resolved is None:
        return AutoModelForImageTextToText.from_pretrained(checkpoint, dtype=dtype, **options)
    from vlqc.train.merge import load_with_adapter  # peft is imported only when an adapter is loaded

    return load_with_adapter(resolved, Path(checkpoint), **options).merge_and_unload().to(dtype)


def load_processor(model_dir: str | Path, max_pixels: int | None = None, base: str | Path | None = None):
    """The checkpoint's processor (an adapter folder without one: its base's), with `max_pixels` as its
    pixel budget when given."""
    processor = AutoProcessor.from_pretrained(processor_dir(model_dir, base))
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


class NucleusSampler(LogitsProcessor):
    """Temperature and top-p sampling as the last logits processor of a greedy `generate`: it draws each row's
    next token from the nucleus (the most likely tokens whose probability first reaches top_p) and leaves only
    that token's score finite, so the greedy pick is the draw. transformers' own sampling sorts the whole
    vocabulary for top-p and draws over all of it every step (for Qwen's 152k tokens ~0.1 s a step for 16 rows
    on one CPU core, several times a tiny model's forward); here the nucleus is looked for among the `first`
    most likely tokens (a handful at a low temperature) and the draw is over those; only a batch with a larger
    nucleus takes the full sort. Draws come from torch's global generator, which the caller seeds."""

    def __init__(self, temperature: float, top_p: float, first: int = 64):
        self.temperature, self.top_p, self.first = temperature, top_p, first

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        probs = (scores / self.temperature).softmax(dim=-1)
        top, index = probs.topk(min(self.first, probs.shape[-1]), dim=-1)
        if (top.sum(dim=-1) < self.top_p).any():  # some row's nucleus reaches past the first tokens
            top, index = probs.sort(dim=-1, descending=True)
        above = top.cumsum(dim=-1) - top  # probability of the tokens ranked above each
        # A token stays while the ones above it hold less than top_p (the most likely one always stays).
        choice = torch.multinomial(top.masked_fill(above >= self.top_p, 0.0), 1)
        return torch.full_like(scores, -float("inf")).scatter(-1, index.gather(-1, choice), 0.0)


class Generator:
    """Greedy or sampled batched generation; left padding is set here, every time."""

    def __init__(
        self,
        model_dir: str | Path,
        device: str = "cpu",
        dtype: torch.dtype = torch.float32,
        max_pixels: int | None = None,
        model: torch.nn.Module | None = None,
        *,
        base: str | Path | None = None,
        attn_implementation: str | None = None,
    ):
        """`model_dir`: a model folder, or a LoRA adapter folder on `base` (see `load_model`).
        `model`: one already loaded; `model_dir` then gives the processor."""
        self.processor = load_processor(model_dir, max_pixels, base)
        # Decoder-only batching needs the prompt flush right; the setting is not saved with the tokenizer.
        self.processor.tokenizer.padding_side = "left"
        if model is None:
            model = load_model(model_dir, base=base, dtype=dtype, attn_implementation=attn_implementation)
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
        sampler = [NucleusSampler(sampling.temperature, sampling.top_p)] if sampling.temperature > 0 else []
        if sampling.seed is not None:
            torch.manual_seed(sampling.seed)
        output = self.model.generate(
            **batch,
            max_new_tokens=sampling.max_new_tokens,
            do_sample=False,  # a sampled call draws in NucleusSampler; the greedy pick takes its draw
            logits_processor=LogitsProcessorList(sampler),
            temperature=None,
            top_p=None,
            top_k=None,
            repetition_penalty=sampling.repetition_penalty,
        )
        new_tokens = output[:, batch["input_ids"].shape[1] :]
        return self.processor.batch_decode(new_tokens, skip_special_tokens=True)
