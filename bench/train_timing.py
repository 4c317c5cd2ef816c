"""ms-swift plugin of bench/train.py: where each optimiser step's time goes, and what the step held.

Loaded by `swift sft --external_plugins bench/train_timing.py --callbacks vlqc_step_timing`; writes one
record per step to the JSON file named by $VLQC_STEP_TIMING when training ends.

Phase boundaries are marked on the GPU's stream (CUDA events; on a CPU, where every op is synchronous, the
clock) by the trainer's callbacks and by forward hooks on the model, the vision tower and the language
model, so a phase's time is what the device spent between its marks, idle gaps included (a step that waits
on Python shows the wait in the phase that waited):

- `data`: host wall time from the end of the previous step's logging to this step's start: the loader's
  next batch (collation in its workers, the copy to the device);
- `vision_forward`, `llm_forward`: the towers' forward calls;
- `other_forward`: the rest of the model's forward (embedding, merging image features, logits);
- `backward`: from the end of the forward to the optimizer: the loss, backward (with any recomputation)
  and gradient clipping;
- `optimizer`: the optimizer step;
- `step_other`: scheduler, zeroing gradients, bookkeeping;
- `logging`: host wall time of the trainer's logging after the step (the loss is read, a sync).

Each step also records its sequences' real lengths, padded tokens, label tokens and images (merged tokens
each) from the model's inputs, and the peak memory allocated on the device.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import torch
from swift.callbacks import TrainerCallback, callbacks_map

DEVICE_PHASES = ("vision_forward", "llm_forward", "other_forward", "backward", "optimizer", "step_other")


class _Clock:
    """A mark on the device's timeline: a recorded CUDA event, or the clock where there is no GPU."""

    def __init__(self, cuda: bool):
        self.cuda = cuda

    def mark(self) -> Any:
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def seconds(self, start: Any, end: Any) -> float:
        return start.elapsed_time(end) / 1e3 if self.cuda else end - start

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()


def _submodule(model: torch.nn.Module, suffix: str) -> torch.nn.Module:
    """The outermost module whose qualified name ends with `suffix` (Qwen3-VL's `visual` / `language_model`,
    at any depth of PEFT wrapping)."""
    found = [(name.count("."), name, m) for name, m in model.named_modules() if name.split(".")[-1] == suffix]
    if not found:
        raise RuntimeError(f"vlqc_step_timing: the model has no `{suffix}` module")
    return min(found, key=lambda item: item[:2])[2]


class StepTiming(TrainerCallback):
    def __init__(self, args, trainer):
        super().__init__(args, trainer)
        self.out = Path(os.environ["VLQC_STEP_TIMING"])
        self.clock = _Clock(torch.cuda.is_available())
        self.steps: list[dict[str, Any]] = []
        self.marks: dict[str, Any] = {}
        self.spans: dict[str, list[tuple[Any, Any]]] = {}
        self.inputs: dict[str, Any] = {}
        self.host_ready = None  # wall time when the previous step's logging ended

    # --- hooks ----------------------------------------------------------------------------------------

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        model.register_forward_pre_hook(self._model_pre, with_kwargs=True)
        model.register_forward_hook(self._model_post)
        for name in ("visual", "language_model"):
            module = _submodule(model, name)
            module.register_forward_pre_hook(lambda *_, n=name: self._span_open(n))
            module.register_forward_hook(lambda *_, n=name: self._span_close(n))
        self.began_at = self.host_ready = time.perf_counter()

    def _model_pre(self, module, args, kwargs):
        if "forward_start" not in self.marks:  # the first call of the step; recomputation does not reopen it
            self.marks["forward_start"] = self.clock.mark()
            self.inputs = _input_counts(kwargs)

    def _model_post(self, module, args, output):
        self.marks.setdefault("forward_end", self.clock.mark())

    def _span_open(self, name: str) -> None:
        if "forward_end" not in self.marks:  # gradient checkpointing re-runs the blocks, not the towers' top
            self.spans.setdefault(name, []).append((self.clock.mark(), None))

    def _span_close(self, name: str) -> None:
        if "forward_end" not in self.marks:
            start, _ = self.spans[name][-1]
            self.spans[name][-1] = (start, self.clock.mark())

    # --- trainer callbacks ----------------------------------------------------------------------------

    def on_step_begin(self, args, state, control, **kwargs):
        self.data_seconds = time.perf_counter() - self.host_ready
        self.marks = {"begin": self.clock.mark()}
        self.spans = {}

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        self.marks["optimizer_start"] = self.clock.mark()

    def on_optimizer_step(self, args, state, control, **kwargs):
        self.marks["optimizer_end"] = self.clock.mark()

    def on_step_end(self, args, state, control, **kwargs):
        m = self.marks
        m["end"] = self.clock.mark()
        self.clock.sync()
        seconds = self.clock.seconds
        towers = {
            name: sum(seconds(a, b) for a, b in self.spans.get(key, []))
            for name, key in (("vision_forward", "visual"), ("llm_forward", "language_model"))
        }
        forward = seconds(m["forward_start"], m["forward_end"])
        phases = {
            **towers,
            "other_forward": forward - sum(towers.values()),
            "backward": seconds(m["forward_end"], m["optimizer_start"]),
            "optimizer": seconds(m["optimizer_start"], m["optimizer_end"]),
            "step_other": seconds(m["optimizer_end"], m["end"]),
        }
        self.steps.append(
            {
                "step": state.global_step,
                "device_seconds": seconds(m["begin"], m["end"]),
                "data": self.data_seconds,
                **phases,
                **_describe(self.inputs),
                "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if self.clock.cuda else None,
                "logging": 0.0,  # set by on_log when the trainer logs after this step
            }
        )
        self.steps[-1]["ended_at"] = self.host_ready = time.perf_counter()

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.steps and self.steps[-1]["ended_at"] == self.host_ready:  # the first log after the step
            self.steps[-1]["logging"] = time.perf_counter() - self.steps[-1]["ended_at"]
            self.host_ready = time.perf_counter()

    def on_train_end(self, args, state, control, **kwargs):
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.out.write_text(
            json.dumps({"began_at": self.began_at, "steps": self.steps}, indent=1) + "\n", encoding="utf-8"
        )


def _input_counts(kwargs: dict[str, Any]) -> dict[str, Any]:
    """The step's input counts as device tensors, read after the step's sync (reading them here would sync)."""
    mask, labels, grid = kwargs.get("attention_mask"), kwargs.get("labels"), kwargs.get("image_grid_thw")
    if mask is None or mask.dim() != 2:
        raise RuntimeError("vlqc_step_timing: the model was called without a 2-D attention_mask")
    return {
        "lengths": mask.sum(dim=1),
        "padded_tokens": mask.numel(),
        "label_tokens": None if labels is None else (labels[..., 1:] != -100).sum(),
        # Qwen3-VL merges 2x2 patches into one token.
        "images": None if grid is None else grid.prod(dim=1) // 4,
    }


def _describe(counts: dict[str, Any]) -> dict[str, Any]:
    """Real length of each sequence, padded tokens, label tokens and each image's merged tokens."""
    return {
        "lengths": counts["lengths"].tolist(),
        "padded_tokens": counts["padded_tokens"],
        "label_tokens": None if counts["label_tokens"] is None else int(counts["label_tokens"]),
        "images": [] if counts["images"] is None else counts["images"].tolist(),
    }


callbacks_map["vlqc_step_timing"] = StepTiming
