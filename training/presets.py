"""Default configuration of each training method (overridable by --config FILE and --set key=value).

Weights and regulariser strengths start from the paper's official blip-flickr config; learning rate,
epochs and schedule are our own, chosen on the val split for the CPU budget (docs/results.md).
"""

from __future__ import annotations

from typing import Any

from training.methods import METHODS, TrainingMethod

LIT_BASE = "runs/align/best"

# Chosen on val (docs/results.md): large in-batch negatives, a 10x smaller LR for the already aligned
# projections, and the sparse head over the terms of the training captions (4.4x fewer outputs on CPU).
_COMMON: dict[str, Any] = {
    "optim": {"lr": 1e-3, "epochs": 12, "batch_size": 1024, "projection_lr_scale": 0.1},
    "model": {"sparse_head": {"vocabulary": "train_captions"}},
}

# The grounded sparse model (docs/results.md, "Grounded sparse terms" and "Whole-word vocabulary"; options chosen
# on val): SKD whose terms are whole words of the training captions, the forms of a word merged (core/words.py);
# captions and queries are their own content words weighted by a learned per-term weight (inference-free: no text
# tower forward for the sparse leg), images on the frozen features within a budget of 64 terms (softplus weights, so
# the budget stays filled), grounded by the bag-of-words loss and a per-word BCE caption-word loss, each term kept
# to at most 24% of the training images by its hub floor (the largest share whose val hub stays <= 30%);
# checkpoints compete on sparse R@1 only at val GP@10 >= 0.40, and the served fusion weight maximises val RSUM.
GROUNDED: dict[str, Any] = {
    "method": "skd", "preset": "grounded", "init_checkpoint": LIT_BASE,
    "optim": {**_COMMON["optim"]},
    "model": {"sparse_head": {"vocabulary": "words", "min_df": 1, "inflections": "merge", "expansion": "always",
                              "query_encoder": "inference_free", "max_text_terms": 16, "image_terms": 64,
                              "image_activation": "softplus", "image_term_max_share": 0.24,
                              "head_input": "features", "input_dropout": 0.5}},
    "loss": {"bow_weight": 2.0, "word_loss": "bce", "word_loss_weight": 0.1},
    "fusion_metric": "rsum",
    "selection_gp10_floor": 0.40,
}

# A method that does not start from the LiT base (align: it makes that base) trains the projections from their
# initial weights, at a higher LR on larger batches; every other method's preset starts from the LiT base.
_FROM_SCRATCH: dict[str, Any] = {"optim": {"lr": 2e-3, "epochs": 20, "batch_size": 4096}, "patience": 4}

# Named presets that are not one method's default, with their one-line description (the CLI offers each).
STANDALONE_PRESETS: dict[str, str] = {
    "grounded": "SKD with readable, truly sparse terms: captions and queries are their own content words, images "
                "ground on caption words within a term budget (the default model)",
}


def _method_preset(method: TrainingMethod) -> dict[str, Any]:
    start = {"init_checkpoint": LIT_BASE, **_COMMON} if method.from_lit_base else _FROM_SCRATCH
    return {"method": method.name, **start}


PRESETS: dict[str, dict[str, Any]] = {
    **{m.preset: _method_preset(m) for m in METHODS.values() if m.preset is not None},
    "grounded": GROUNDED,
}
