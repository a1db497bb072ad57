"""The readability ceiling: a linear multi-label word probe on the frozen image features.

A linear map from the frozen pre-projection image features to the content terms of the training captions (their
content pieces, or their whole words: the term space the reference was built in), trained with binary cross-entropy
per word (multi-label; on val it beat a softmax over the words: GP@10 0.415
against 0.378). Its GP@k on a split is what this
backbone can ground with a linear map, the ceiling beside the frequency floor. Weight decay and the number of
epochs are chosen on val by GP@10; the chosen probe is reported on test.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
import torch.nn.functional as F

from core.readability import GP_KS, GroundingReference, grounding_precision
from training.features import SplitFeatures

_logger = logging.getLogger(__name__)

WEIGHT_DECAYS = (0.0, 1e-4, 1e-3)


def train_probe(reference: GroundingReference, train: SplitFeatures, val: SplitFeatures, test: SplitFeatures, *,
                min_df: int = 2, epochs: int = 30, batch_size: int = 256, lr: float = 3e-4,
                seed: int = 0) -> dict[str, Any]:
    """Fit the probe per weight decay, keep the (weight decay, epoch) with the best val GP@10; GP@k on val, test."""
    assert train.caption_terms is not None and val.caption_terms is not None
    assert test.caption_terms is not None
    words = torch.nonzero(reference.caption_df >= min_df).flatten()  # content pieces of the training captions

    def split_targets(split: SplitFeatures) -> torch.Tensor:
        assert split.caption_terms is not None
        return reference.targets(split.caption_terms, split.caption_image, len(split.image_ids))[:, words]

    train_y, val_y, test_y = (split_targets(s) for s in (train, val, test))
    mean, std = train.image_features.mean(0), train.image_features.std(0).clamp_min(1e-6)
    train_x, val_x, test_x = ((s.image_features - mean) / std for s in (train, val, test))
    labels = train_y.float()
    best: dict[str, Any] = {"val_gp10": -1.0}
    for weight_decay in WEIGHT_DECAYS:
        generator = torch.Generator().manual_seed(seed)
        probe = torch.nn.Linear(train_x.shape[1], words.numel())
        with torch.no_grad():
            probe.weight.normal_(0, 0.01, generator=generator)
            probe.bias.zero_()
        optimizer = torch.optim.AdamW(probe.parameters(), lr=lr, weight_decay=weight_decay)
        for epoch in range(1, epochs + 1):
            order = torch.randperm(train_x.shape[0], generator=generator)
            for start in range(0, order.numel(), batch_size):
                idx = order[start:start + batch_size]
                loss = F.binary_cross_entropy_with_logits(probe(train_x[idx]), labels[idx])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
            with torch.no_grad():
                val_gp10 = grounding_precision(torch.sigmoid(probe(val_x)), val_y, 10)
            if val_gp10 > best["val_gp10"]:
                with torch.no_grad():
                    scores = {name: torch.sigmoid(probe(x)) for name, x in (("val", val_x), ("test", test_x))}
                best = {"val_gp10": val_gp10, "weight_decay": weight_decay, "epoch": epoch,
                        "val": {f"GP@{k}": grounding_precision(scores["val"], val_y, k) for k in GP_KS},
                        "test": {f"GP@{k}": grounding_precision(scores["test"], test_y, k) for k in GP_KS}}
        _logger.info("probe weight decay %g: best val GP@10 so far %.3f", weight_decay, best["val_gp10"])
    best["words"] = int(words.numel())
    best["min_df"] = min_df
    return best
