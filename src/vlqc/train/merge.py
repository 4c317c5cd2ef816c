"""Turn a training checkpoint into a folder that plain transformers loads.

A LoRA/DoRA checkpoint is merged into its base weights with peft; a full
checkpoint already is a model and is copied. Either way the processor and
generation config come along, and the folder appears under its name only
when complete.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import torch
from peft import PeftModel
from transformers import AutoModelForImageTextToText, AutoProcessor, GenerationConfig

from vlqc.errors import VlqcError
from vlqc.inference.checkpoint import is_adapter

TRAINING_LEFTOVERS = ("optimizer.pt", "scheduler.pt", "rng_state.pth", "trainer_state.json", "training_args.bin")


def load_with_adapter(base: Path, checkpoint: Path, **options) -> PeftModel:
    """The adapter on its base, in float32; `options` go to the base's from_pretrained (attn_implementation)."""
    model = AutoModelForImageTextToText.from_pretrained(base, dtype=torch.float32, **options)
    return PeftModel.from_pretrained(model, checkpoint).eval()


def merge_checkpoint(checkpoint: Path, base: Path, out: Path) -> Path:
    if not checkpoint.is_dir():
        raise VlqcError(f"{checkpoint}: no such checkpoint folder")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    try:
        if is_adapter(checkpoint):
            merged = load_with_adapter(base, checkpoint).merge_and_unload()
            merged.save_pretrained(tmp)
            GenerationConfig.from_pretrained(base).save_pretrained(tmp)
        else:
            for item in checkpoint.iterdir():
                if item.is_file() and item.name not in TRAINING_LEFTOVERS:
                    shutil.copy2(item, tmp / item.name)
        # The processor (tokenizer, chat template, image processor) is the base model's.
        AutoProcessor.from_pretrained(base).save_pretrained(tmp)
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
