"""bench/train.py's arithmetic: FLOPs of a training step, the steady-state summary and the loss-curve windows."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

from flops import text_linear_params, train_step_flops, vision_flops  # noqa: E402
from train import compare_losses, summarize  # noqa: E402

TEXT = SimpleNamespace(
    num_attention_heads=2,
    num_key_value_heads=1,
    head_dim=4,
    hidden_size=8,
    intermediate_size=16,
    num_hidden_layers=3,
    vocab_size=100,
)
VISION = SimpleNamespace(hidden_size=4, intermediate_size=8, depth=2, deepstack_visual_indexes=[0])
CONFIG = SimpleNamespace(text_config=TEXT, vision_config=VISION)


def test_text_weights_count_every_projection_of_every_layer():
    # q 8x8, k and v 8x4 each, o 8x8, three MLP matrices 8x16: per layer 64+32+32+64+384 = 576
    assert text_linear_params(TEXT) == 3 * 576


def test_a_lora_step_costs_forward_plus_input_gradients_and_frozen_vision_only_its_forward():
    lengths, images = [10, 6], [2]
    linear = 2 * 16 * (3 * 576 + 8 * 100)
    attention = 2 * 3 * 2 * 4 * (10**2 + 6**2)
    lora = train_step_flops(CONFIG, lengths, images, text_weights_train=False, vision_trains=False)
    assert lora == 2 * linear + 3 * attention + vision_flops(CONFIG, 2)
    full = train_step_flops(CONFIG, lengths, images, text_weights_train=True, vision_trains=True)
    assert full - lora == linear + 2 * vision_flops(CONFIG, 2)


def _timing(walls, began=100.0):
    steps, now = [], began
    for index, wall in enumerate(walls):
        now += wall
        steps.append(
            {
                "ended_at": now,
                "lengths": [50, 30],
                "padded_tokens": 100,
                "label_tokens": 20,
                "images": [16],
                "data": 0.01,
                "logging": 0.0,
                "vision_forward": 0.1,
                "llm_forward": 0.2,
                "other_forward": 0.05,
                "backward": 0.5,
                "optimizer": 0.02,
                "step_other": 0.01,
                "peak_memory_gib": 1.0 + index,
            }
        )
    return {"began_at": began, "steps": steps}


def test_summary_keeps_the_warmup_steps_apart():
    summary = summarize(_timing([5.0, 3.0, 1.0, 1.0, 1.0]), warmup=2, flops=lambda step: 4e12, peak_flop_per_s=8e12)
    assert summary["first_steps_seconds"] == [5.0, 3.0]
    assert summary["seconds_per_step"] == pytest.approx(1.0)
    assert summary["samples_per_s"] == pytest.approx(2.0) and summary["tokens_per_s"] == 80
    assert summary["padding_share"] == pytest.approx(0.2)
    assert summary["mfu"] == pytest.approx(0.5)
    assert summary["peak_gpu_memory_gib"] == 5.0  # the peak of the whole run, warm-up included
    assert summary["phases_share"]["backward"] == pytest.approx(0.5)


def test_same_batch_curves_compare_step_by_step_and_differences_beyond_noise_are_flagged():
    noisy = [2.0 + 0.1 * (-1) ** i for i in range(40)]
    same = compare_losses({"batch": 4, "loss": noisy}, {"batch": 4, "loss": list(noisy)})
    assert same["by"] == "step" and len(same["windows"]) == 2 and same["within_two_standard_errors"]
    shifted = compare_losses({"batch": 4, "loss": noisy}, {"batch": 4, "loss": [x + 0.5 for x in noisy]})
    assert not shifted["within_two_standard_errors"]
    assert shifted["windows"][0]["difference"] == pytest.approx(0.5)


def test_different_batches_compare_by_samples_seen_over_full_windows_only():
    # batch 4 for 100 steps and batch 16 for 25 steps both see 400 samples: one window of 20 x 16 samples.
    reference = {"batch": 4, "loss": [3.0] * 80 + [1.0] * 20}
    other = {"batch": 16, "loss": [2.0] * 25}
    curve = compare_losses(reference, other)
    assert curve["by"] == "samples seen"
    assert [w["samples"] for w in curve["windows"]] == [[0, 320]]
    assert curve["windows"][0]["reference"] == 3.0 and curve["windows"][0]["difference"] == -1.0
