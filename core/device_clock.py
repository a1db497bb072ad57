"""Timers that wait for the device: CUDA runs kernels asynchronously, so a host clock read before the device has
finished measures only the launches. Every figure of a GPU run reads its clock through ``device_seconds``."""

from __future__ import annotations

import os
import time
from pathlib import Path

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


def seconds_since_launch() -> float | None:
    """Seconds since this process started (its start time in /proc), None where the system does not say."""
    try:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        started = int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22, the start time in clock ticks since boot
        return float(Path("/proc/uptime").read_text().split()[0]) - started
    except (OSError, ValueError, IndexError):
        return None


class SetupClock:
    """Seconds spent in each named phase of a set-up, in order (``lap`` closes the phase running since the last)."""

    def __init__(self) -> None:
        self.phases: dict[str, float] = {}
        self._since = time.perf_counter()

    def lap(self, phase: str) -> None:
        now = time.perf_counter()
        self.phases[phase] = self.phases.get(phase, 0.0) + now - self._since
        self._since = now
