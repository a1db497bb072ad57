"""Timers that wait for the device: CUDA runs kernels asynchronously, so a host clock read before the device has
finished measures only the launches. Every figure of a GPU run reads its clock through ``device_seconds``."""

from __future__ import annotations

import time

import torch


def synchronize(device: torch.device | str) -> None:
    """Wait for every kernel queued on ``device`` (nothing to wait for on a CPU)."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def device_seconds(device: torch.device | str) -> float:
    """``time.perf_counter()`` once ``device`` has finished its queued work."""
    synchronize(device)
    return time.perf_counter()
