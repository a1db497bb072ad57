"""Transforms phi applied to logits before a divergence: temperature, z-score, center+sharpen, masks.

Masks follow one convention across the package: a bool mask (True = valid) is aligned with the *leading* dims of
the tensor it masks and broadcast over the remaining trailing dims (e.g. a [B, T] frame mask over [B, T, V] logits).
"""

from __future__ import annotations

import torch


def align_mask(mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Left-align a bool mask with ``like`` (append singleton trailing dims), then broadcast to its shape."""
    if mask.dim() > like.dim():
        raise ValueError(f"mask has {mask.dim()} dims, more than the {like.dim()} of the masked tensor")
    mask = mask.to(torch.bool).reshape(*mask.shape, *([1] * (like.dim() - mask.dim())))
    return mask.expand_as(like)


def temperature(logits: torch.Tensor, tau: float) -> torch.Tensor:
    if tau <= 0:
        raise ValueError(f"temperature must be > 0, got {tau}")
    return logits / tau


def zscore(logits: torch.Tensor, eps: float = 1e-7, dim: int = -1) -> torch.Tensor:
    """(l - mean) / (std + eps) per row; unbiased std as in the logit-standardisation repo (biased for 1 class)."""
    correction = 1 if logits.shape[dim] > 1 else 0  # an unbiased std of one element is NaN
    mean = logits.mean(dim=dim, keepdim=True)
    std = logits.std(dim=dim, keepdim=True, correction=correction)
    return (logits - mean) / (std + eps)


def center_sharpen(logits: torch.Tensor, center: torch.Tensor, tau: float) -> torch.Tensor:
    """DINO's teacher transform (g - c) / tau_t, before the softmax."""
    return temperature(logits - center, tau)


def apply_mask(values: torch.Tensor, mask: torch.Tensor | None, fill: float = 0.0) -> torch.Tensor:
    """values where mask is True, ``fill`` elsewhere (torch.where, so masked entries get no gradient)."""
    if mask is None:
        return values
    return torch.where(align_mask(mask, values), values, torch.as_tensor(fill, dtype=values.dtype,
                                                                         device=values.device))
