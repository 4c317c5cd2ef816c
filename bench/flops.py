"""Matmul FLOPs of Qwen3-VL work, counted from its config: the roofline of Stage-A generation and the model
FLOP utilisation of training (docs/training.md#gpu-speed) share these counts.

`config` is a Qwen3VLConfig (or any object with its `text_config` / `vision_config` attributes). Norms,
activations, rotary embeddings and LoRA's rank-r matmuls are left out: next to the counted ones they are
below a percent of the work.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def text_linear_params(text: Any) -> int:
    """Weights of the language model's linear layers (attention projections and MLP), all layers."""
    q, kv = text.num_attention_heads * text.head_dim, text.num_key_value_heads * text.head_dim
    per_layer = text.hidden_size * (2 * q + 2 * kv) + 3 * text.hidden_size * text.intermediate_size
    return text.num_hidden_layers * per_layer


def vision_flops(config: Any, image: int) -> float:
    """Forward FLOPs of one image of `image` merged tokens (4 patches each): patch embedding, the tower's
    blocks with their full attention, and the mergers (the final one and one per DeepStack level)."""
    text, vision = config.text_config, config.vision_config
    patches, h = 4 * image, vision.hidden_size
    block = 4 * h * h + 2 * h * vision.intermediate_size
    tower = 2 * patches * (vision.depth * block + 3 * 2 * 16 * 16 * h) + vision.depth * 4 * patches**2 * h
    merged = 4 * h
    mergers = (1 + len(vision.deepstack_visual_indexes)) * 2 * image * (merged * merged + merged * text.hidden_size)
    return tower + mergers


def causal_attention_flops(text: Any, length: int) -> float:
    """Forward FLOPs of the attention scores and weighted sum of one causal sequence, all layers."""
    return 2 * text.num_hidden_layers * text.num_attention_heads * text.head_dim * length**2


def prefill_flops(config: Any, prompt: int, image: int) -> float:
    """Matmul FLOPs of one image's prefill: vision tower and mergers, text layers, causal attention, one logit row."""
    text = config.text_config
    logits = 2 * text.hidden_size * text.vocab_size
    return (
        vision_flops(config, image)
        + 2 * prompt * text_linear_params(text)
        + causal_attention_flops(text, prompt)
        + logits
    )


def train_step_flops(
    config: Any, lengths: Sequence[int], images: Sequence[int], text_weights_train: bool, vision_trains: bool
) -> float:
    """Model FLOPs of one optimiser step over sequences of `lengths` real tokens holding images of `images`
    merged tokens: forward and backward, recomputation by gradient checkpointing not counted.

    Backward of a linear layer costs its forward once for the input gradient and once more for the weight
    gradient, which a frozen layer (LoRA's base weights, a frozen tower) skips; attention's backward is twice
    its forward; a frozen vision tower has no backward at all (nothing before it needs a gradient). Logits are
    computed for every position, as training does.
    """
    text = config.text_config
    tokens = sum(lengths)
    linear = 2 * tokens * (text_linear_params(text) + text.hidden_size * text.vocab_size)
    attention = sum(causal_attention_flops(text, n) for n in lengths)
    vision = sum(vision_flops(config, n) for n in images)
    return linear * (3 if text_weights_train else 2) + attention * 3 + vision * (3 if vision_trains else 1)
