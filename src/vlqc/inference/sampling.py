"""Decoding settings shared by every model backend.

Kept apart from `vlqc.inference.generation` so that code which only passes settings along (Stage-B
rollouts against a remote endpoint, their tests) does not import torch and transformers.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Sampling:
    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    seed: int | None = None
