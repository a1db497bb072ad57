"""The machine a benchmark report was measured on: one description for every report (``machine`` in its JSON)."""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any


def machine() -> dict[str, Any]:
    """Platform, Python, CPU count and model, torch version and GPU (None without one). ``processor`` is what the
    platform module reports; ``cpu`` is the model name from /proc/cpuinfo where there is one, else the same."""
    import torch

    processor = platform.processor() or platform.machine()
    cpu = processor
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count(),
            "cpu": cpu, "processor": processor, "torch": torch.__version__,
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
