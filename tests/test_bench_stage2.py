"""bench/stage2.py's arithmetic: the run's steps split by channel from the trainer's log rows, each channel's
steady-state summary, and channel B's rollout metrics."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import psutil
import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

from stage2 import _kill_children, rollout_summary, step_channels, summarize_channels  # noqa: E402

from vlqc.errors import VlqcError  # noqa: E402

A_WALL, B_WALL = 1.0, 3.0


def _step(number: int, ended_at: float, data: float) -> dict:
    return {
        "step": number,
        "ended_at": ended_at,
        "lengths": [60, 40],
        "padded_tokens": 120,
        "label_tokens": 30,
        "images": [16, 16],
        "data": data,
        "logging": 0.0,
        "vision_forward": 0.1,
        "llm_forward": 0.2,
        "other_forward": 0.1,
        "backward": 0.5,
        "optimizer": 0.05,
        "step_other": 0.05,
        "peak_memory_gib": 2.0 + number,
    }


def _run(channels: str, began: float = 50.0) -> tuple[dict, list[dict]]:
    """Timing records and log rows of a run whose steps have the given channels: an A step takes 1 s, a B
    step 3 s (2 s of it rollout, booked under `data`), the first step 10 s more (start-up)."""
    steps, logged, now, b_done = [], [], began, 0
    for index, channel in enumerate(channels, start=1):
        wall = (B_WALL if channel == "B" else A_WALL) + (10.0 if index == 1 else 0.0)
        now += wall
        steps.append(_step(index, now, data=2.0 if channel == "B" else 0.0))
        b_done += channel == "B"
        row = {
            "loss": float(index),
            "global_step/max_steps": f"{index}/{len(channels)}",
            "stage2_ab/channel_b": float(channel == "B"),
            "stage2_ab/b_ratio_realized": b_done / index,
        }
        if channel == "B":
            row |= {
                "time/rollout_generate_s": 1.5 if index % 4 == 0 else 1.7,
                "time/rollout_build_s": 0.2,
                "rollout/gen_tokens_per_s": 100.0,
                "rollout/gen_tokens_mean": 64.0,
                "rollout/fallback_rate": 0.5,
                "rollout/fallbacks/no_header": 1.0,
            }
        logged.append(row)
    logged.append({"train_runtime": now - began, "global_step/max_steps": f"{len(channels)}/{len(channels)}"})
    return {"began_at": began, "steps": steps}, logged


def test_steps_split_by_the_logged_channel_with_the_warmup_apart():
    timing, logged = _run("ABABABAB")
    result = summarize_channels(timing, logged, warmup=2, accumulation=1)
    a, b = result["channels"]["a"], result["channels"]["b"]
    assert a["steps"] == [3, 5, 7] and b["steps"] == [4, 6, 8]
    assert a["seconds_per_step"] == pytest.approx(A_WALL) and b["seconds_per_step"] == pytest.approx(B_WALL)
    assert a["samples_per_s"] == pytest.approx(2.0) and a["tokens_per_s"] == 100
    assert b["samples_per_s"] == pytest.approx(2 / 3, abs=0.01)
    # The rollout is in `data`: two thirds of a B step, none of an A step.
    assert b["phases_share"]["data"] == pytest.approx(2 / 3, abs=0.001) and a["phases_share"]["data"] == 0.0
    assert "rollout" not in a
    steps = result["steps"]
    assert [s["channel"] for s in steps] == list("ABABABAB")
    assert steps[0]["seconds"] == pytest.approx(11.0) and steps[1]["seconds"] == pytest.approx(3.0)
    assert result["b_ratio_realized"] == 0.5
    assert result["peak_gpu_memory_gib"] == 10.0  # the whole run's peak, warm-up included


def test_rollout_metrics_average_over_the_steady_b_steps_and_count_fallbacks():
    timing, logged = _run("ABABABAB")
    rollout = summarize_channels(timing, logged, warmup=2, accumulation=1)["channels"]["b"]["rollout"]
    # Steps 4 and 8 generated in 1.5 s, step 6 in 1.7 s.
    assert rollout["time/rollout_generate_s"] == pytest.approx((1.5 + 1.7 + 1.5) / 3, abs=1e-4)
    assert rollout["rollout/gen_tokens_mean"] == 64.0 and rollout["rollout/fallback_rate"] == 0.5
    assert rollout["fallbacks"] == {"no_header": 3.0}  # step 2 is a warm-up step
    assert rollout["rollout_seconds_per_step"] == pytest.approx(rollout["time/rollout_generate_s"] + 0.2, abs=1e-4)
    assert rollout["rollout_share"] == pytest.approx(rollout["rollout_seconds_per_step"] / B_WALL, abs=0.001)
    assert "rollout/match_recall" not in rollout  # not logged: not reported as zero


def test_a_step_holds_its_accumulation_windows_rollouts():
    rows = [{"time/rollout_generate_s": 1.0, "time/rollout_build_s": 0.5}]
    assert rollout_summary(rows, seconds_per_step=6.0, accumulation=2)["rollout_share"] == 0.5


def test_a_channel_without_steady_steps_is_reported_empty():
    timing, logged = _run("AABAAA")
    result = summarize_channels(timing, logged, warmup=3, accumulation=1)
    assert result["channels"]["b"] == {"steady_steps": 0}
    assert result["channels"]["a"]["steady_steps"] == 3


def test_a_log_without_channels_or_a_step_without_one_is_an_error_naming_the_file():
    timing, logged = _run("ABAB")
    with pytest.raises(VlqcError, match=r"run/logging.jsonl: no row has stage2_ab/channel_b"):
        step_channels([{"loss": 1.0, "global_step/max_steps": "1/4"}], "run/logging.jsonl")
    with pytest.raises(VlqcError, match=r"run/logging.jsonl: no stage2_ab/channel_b logged for steps \[4\]"):
        summarize_channels(timing, logged[:3], warmup=1, accumulation=1, source="run/logging.jsonl")


def test_the_hard_time_guard_ends_every_process_started_and_says_it_fired():
    child = subprocess.Popen([sys.executable, "-c", "import subprocess; subprocess.run(['sleep', '60'])"])
    started = [psutil.Process(child.pid)]
    while len(started) == 1:  # the child's own `sleep` is started
        started += started[0].children()
    fired = threading.Event()
    _kill_children(fired)
    assert fired.is_set()
    child.wait(timeout=30)  # psutil reaped it already; this only clears Popen's record
    # Gone, or a zombie whose new parent has not reaped it yet: not running either way.
    assert all(not p.is_running() or p.status() == psutil.STATUS_ZOMBIE for p in started)
