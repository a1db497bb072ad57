"""Sparse head (spec 1.3): normalised dense vector -> non-negative weights over the text vocabulary."""

from __future__ import annotations

import torch
from torch import nn


class SparseHead(nn.Module):
    """Linear(embed -> text width) -> LayerNorm -> vocabulary projector -> log1p(relu).

    The projector's rows are a copy of the text tower's token embedding for the term ids it outputs.
    ``term_ids`` never include special or padding tokens, so those can never carry weight.
    """

    def __init__(self, embed_dim: int, text_width: int, token_embedding: torch.Tensor, term_ids: torch.Tensor) -> None:
        super().__init__()
        if token_embedding.shape[1] != text_width:
            raise ValueError(f"token embedding width {token_embedding.shape[1]} != text width {text_width}")
        self.proj = nn.Linear(embed_dim, text_width)
        self.norm = nn.LayerNorm(text_width)
        self.vocab_projector = nn.Linear(text_width, int(term_ids.numel()), bias=False)
        with torch.no_grad():
            self.vocab_projector.weight.copy_(token_embedding[term_ids])
        self.register_buffer("term_ids", term_ids.to(torch.long).clone())

    @property
    def num_terms(self) -> int:
        return int(self.term_ids.numel())

    def forward(self, dense: torch.Tensor) -> torch.Tensor:
        """(B, embed_dim) -> (B, num_terms) term weights, one column per ``term_ids`` entry."""
        hidden = self.norm(self.proj(dense))  # (B, text_width)
        return torch.log1p(torch.relu(self.vocab_projector(hidden)))  # (B, num_terms)

    def to_vocabulary_space(self, weights: torch.Tensor, vocab_size: int) -> torch.Tensor:
        """(B, num_terms) -> (B, vocab_size), zero outside ``term_ids``."""
        full = weights.new_zeros(weights.shape[0], vocab_size)
        full[:, self.term_ids] = weights
        return full


def top_k_prune(weights: torch.Tensor, k: int | None) -> torch.Tensor:
    """Keep the k largest weights of each row (None or k <= 0 keeps everything)."""
    if k is None or k <= 0 or k >= weights.shape[1]:
        return weights
    values, indices = weights.topk(k, dim=1)
    return torch.zeros_like(weights).scatter_(1, indices, values)
