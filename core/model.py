"""The trainable part of Duet: both final projections, the shared sparse head and the temperature."""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from core.config import ModelConfig
from core.sparse_head import OwnTerms, SparseHead
from core.words import WordVocabulary


@dataclass(frozen=True)
class EncodedBatch:
    dense: torch.Tensor  # (B, embed_dim), L2-normalised
    sparse: torch.Tensor  # (B, num_terms), non-negative


class DuetModel(nn.Module):
    """Maps frozen pre-projection features to a dense unit vector and a sparse term vector.

    By default the sparse head sits on top of the normalised dense vector (as in the paper), so the sparse losses reach
    the projections too; ``sparse_head.head_input='features'`` reads the frozen features instead.
    """

    def __init__(self, config: ModelConfig, *, image_projection: torch.Tensor, text_projection: torch.Tensor,
                 token_embedding: torch.Tensor, term_ids: torch.Tensor, term_idf: torch.Tensor | None = None,
                 words: WordVocabulary | None = None) -> None:
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
        self.sparse_head = SparseHead(config.sparse_head, embed_dim=embed_dim,
                                      image_feature_dim=image_projection.shape[1],
                                      text_feature_dim=text_projection.shape[1], token_embedding=token_embedding,
                                      term_ids=term_ids, term_idf=term_idf, words=words)
        self.temperature = nn.Parameter(torch.tensor(float(config.temperature_init)))

    def clamp_temperature(self) -> torch.Tensor:
        """Clamp in place to [min, max] as the official code does at every forward; return it."""
        with torch.no_grad():
            self.temperature.clamp_(self.config.temperature_min, self.config.temperature_max)
        return self.temperature

    @property
    def texts_are_own_terms(self) -> bool:
        return self.config.sparse_head.texts_are_own_terms

    def embed_image(self, features: torch.Tensor) -> torch.Tensor:
        """Dense leg only: (B, D_img) -> (B, embed_dim) unit vectors."""
        return F.normalize(self.image_proj(features), dim=-1)

    def embed_text(self, features: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.text_proj(features), dim=-1)

    def encode_image(self, features: torch.Tensor, *, keep: int | None = None) -> EncodedBatch:
        """Dense + sparse; the sparse vector keeps its ``keep`` strongest terms (default: the model's budget)."""
        return self.encode_image_with_logits(features, keep=keep)[0]

    def encode_image_with_logits(self, features: torch.Tensor, *,
                                 keep: int | None = None) -> tuple[EncodedBatch, torch.Tensor]:
        """``encode_image`` plus the sparse head's logits over its vocabulary (for word-level losses)."""
        dense = self.embed_image(features)
        budget = self.config.sparse_head.image_terms if keep is None else keep
        logits = self.sparse_head.image_logits(dense, features)
        return EncodedBatch(dense=dense, sparse=self.sparse_head.image_weights(logits, keep=budget)), logits

    def text_columns(self, term_rows: torch.Tensor) -> torch.Tensor:
        """(B, L) term ids (core/terms.py) -> (B, L') head columns of each text's own terms (-1 pads)."""
        return self.sparse_head.columns_of(term_rows)

    def own_text_terms(self, features: torch.Tensor, columns: torch.Tensor,
                       dense: torch.Tensor | None = None) -> OwnTerms:
        """Texts scored on their own terms only (compact). The inference-free head never reads ``features``."""
        if self.config.sparse_head.inference_free:
            return self.sparse_head.own_text(None, None, columns)
        dense = self.embed_text(features) if dense is None else dense
        return self.sparse_head.own_text(dense, features, columns)

    def encode_text(self, features: torch.Tensor, *, term_rows: torch.Tensor | None = None,
                    columns: torch.Tensor | None = None) -> EncodedBatch:
        """Dense + sparse. Models whose texts are their own terms need the texts' term ids (or their columns)."""
        dense = self.embed_text(features)
        if not self.texts_are_own_terms:
            return EncodedBatch(dense=dense, sparse=self.sparse_head.expanded_text(dense, features))
        if columns is None:
            if term_rows is None:
                raise ValueError("this model scores texts on their own terms: pass the texts' term ids")
            columns = self.text_columns(term_rows)
        terms = self.own_text_terms(features, columns.to(features.device), dense)
        return EncodedBatch(dense=dense, sparse=terms.to_dense(self.sparse_head.num_terms))

    def trainable_groups(self) -> dict[str, list[nn.Parameter]]:
        """Named parameter groups, so training methods can freeze by role."""
        return {
            "projections": [cast(nn.Parameter, self.image_proj.weight), cast(nn.Parameter, self.text_proj.weight)],
            "sparse_head": list(self.sparse_head.parameters()),
            "temperature": [self.temperature],
        }
