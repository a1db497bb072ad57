"""Clocks of a run: the device's (the CPU's here: nothing to wait for) and the set-up's phases since launch."""

from __future__ import annotations

import time
from pathlib import Path

from core.device_clock import SetupClock, device_seconds, seconds_since_launch


def test_the_set_up_clock_adds_each_phase_and_launch_is_in_the_past() -> None:
    clock = SetupClock()
    time.sleep(0.02)
    clock.lap("first")
    clock.lap("second")
    time.sleep(0.01)
    clock.lap("first")  # a phase met again adds up
    assert list(clock.phases) == ["first", "second"]
    assert clock.phases["first"] >= 0.03 and clock.phases["second"] < 0.01
    since = seconds_since_launch()
    if Path("/proc/self/stat").is_file():  # Linux, as CI: the process started before this test did
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        assert since is not None and 0 < since < uptime
    assert device_seconds("cpu") <= time.perf_counter()
