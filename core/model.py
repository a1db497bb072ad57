"""The trainable part of Duet: both final projections, the shared sparse head and the temperature."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from core.config import ModelConfig
from core.sparse_head import SparseHead


@dataclass(frozen=True)
class EncodedBatch:
    dense: torch.Tensor  # (B, embed_dim), L2-normalised
    sparse: torch.Tensor  # (B, num_terms), non-negative


class DuetModel(nn.Module):
    """Maps frozen pre-projection features to a dense unit vector and a sparse term vector.

    The sparse head sits on top of the normalised dense vector (spec 1.3), so the sparse losses reach the
    projections too.
    """

    def __init__(self, config: ModelConfig, *, image_projection: torch.Tensor, text_projection: torch.Tensor,
                 token_embedding: torch.Tensor, term_ids: torch.Tensor) -> None:
        super().__init__()
        self.config = config
        embed_dim = image_projection.shape[0]
        if text_projection.shape[0] != embed_dim:
            raise ValueError("image and text projections must map to the same dimension")
        self.image_proj = nn.Linear(image_projection.shape[1], embed_dim, bias=False)
        self.text_proj = nn.Linear(text_projection.shape[1], embed_dim, bias=False)
        with torch.no_grad():
            self.image_proj.weight.copy_(image_projection)
            self.text_proj.weight.copy_(text_projection)
        self.sparse_head = SparseHead(embed_dim, token_embedding.shape[1], token_embedding, term_ids)
        self.temperature = nn.Parameter(torch.tensor(float(config.temperature_init)))

    def clamp_temperature(self) -> torch.Tensor:
        """Clamp in place to [min, max] as the official code does at every forward; return it."""
        with torch.no_grad():
            self.temperature.clamp_(self.config.temperature_min, self.config.temperature_max)
        return self.temperature

    def embed_image(self, features: torch.Tensor) -> torch.Tensor:
        """Dense leg only: (B, D_img) -> (B, embed_dim) unit vectors."""
        return F.normalize(self.image_proj(features), dim=-1)

    def embed_text(self, features: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.text_proj(features), dim=-1)

    def encode_image(self, features: torch.Tensor) -> EncodedBatch:
        dense = self.embed_image(features)
        return EncodedBatch(dense=dense, sparse=self.sparse_head(dense))

    def encode_text(self, features: torch.Tensor) -> EncodedBatch:
        dense = self.embed_text(features)
        return EncodedBatch(dense=dense, sparse=self.sparse_head(dense))

    def trainable_groups(self) -> dict[str, list[nn.Parameter]]:
        """Named parameter groups, so training methods can freeze by role."""
        return {
            "projections": [self.image_proj.weight, self.text_proj.weight],
            "sparse_head": list(self.sparse_head.parameters()),
            "temperature": [self.temperature],
        }
