"""Self-knowledge distillation (SKD): one shared core (divergences, transforms, teachers, weights) for every method.

The kernels (each method's losses and transforms) live in ``training.skd.kernels.<name>``, one module per method,
each citing its method's paper: "method" is one of the eight auxiliary self-distillation methods, "kernel" its
code here, "experiment" its run (training/experiments/).
``[R]`` in a kernel or an experiment marks a detail reconstructed rather than read from that paper or its code.
"""

from training.skd.core import SKDObjective, SKDTerm, masked_mean, soft_ce, soft_kl
from training.skd.teachers import (
    DetachedHead,
    EMATeacher,
    EmbeddingPrior,
    IntegratedScore,
    PredictionBank,
    SnapshotTeacher,
    Teacher,
    ema_update_,
)
from training.skd.transforms import align_mask, apply_mask, center_sharpen, temperature, zscore
from training.skd.weights import clipped_linear, constant, cosine_schedule, cosine_value, linear_ramp

__all__ = ["DetachedHead", "EMATeacher", "EmbeddingPrior", "IntegratedScore", "PredictionBank", "SKDObjective",
           "SKDTerm", "SnapshotTeacher", "Teacher", "align_mask", "apply_mask", "center_sharpen", "clipped_linear",
           "constant", "cosine_schedule", "cosine_value", "ema_update_", "linear_ramp", "masked_mean", "soft_ce",
           "soft_kl", "temperature", "zscore"]
