"""Every registered SKD mini-experiment. A new experiment adds one entry to _MODULES (a module defining EXPERIMENT)."""

from __future__ import annotations

import importlib

from training.experiments.harness import Experiment

_MODULES: tuple[str, ...] = (
    "medivlad", "ctc", "sst", "als", "hahn_choi", "dd_skd", "drrnet", "xlt_qa",
)


def _load() -> dict[str, Experiment]:
    experiments: dict[str, Experiment] = {}
    for module in _MODULES:
        exp = importlib.import_module(f"training.experiments.{module}").EXPERIMENT
        if exp.name in experiments:
            raise ValueError(f"duplicate experiment name {exp.name!r}")
        experiments[exp.name] = exp
    return experiments


EXPERIMENTS: dict[str, Experiment] = _load()
