"""The GPU a benchmark ran on and its measured ceilings (imported by the GPU scripts beside it)."""

from __future__ import annotations

import os
import statistics
from collections.abc import Callable
from typing import Any

import torch
import transformers
from machine import nvidia_smi  # bench/machine.py, beside this script


def gpu_info() -> dict[str, Any]:
    smi = nvidia_smi()
    return {
        "name": torch.cuda.get_device_name(),
        "nvidia_smi_name": smi["name"],
        "driver": smi["driver"],
        "memory_total": smi["memory"],
        "cuda": torch.version.cuda,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "cpu_cores": os.cpu_count(),
    }


def median_ms(fn: Callable[[], Any], repeats: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def copy_bandwidth() -> float:
    source = torch.randn(2**30, device="cuda", dtype=torch.bfloat16)
    target = torch.empty_like(source)
    copy_ms = median_ms(lambda: target.copy_(source), repeats=20)
    return 2 * source.numel() * source.element_size() / (copy_ms / 1e3)


def measure_ceilings() -> dict[str, float]:
    """Device copy bandwidth (bytes read + written) and bf16 matmul rate, on random data."""
    bandwidth = copy_bandwidth()  # its 4 GiB of buffers are freed on return
    a, b = (torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    matmul_ms = median_ms(lambda: a @ b, repeats=10)
    return {"copy_bytes_per_s": bandwidth, "bf16_flop_per_s": 2 * 8192**3 / (matmul_ms / 1e3)}
