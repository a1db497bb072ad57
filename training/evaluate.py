"""Exact in-process evaluation: dense, sparse and integrated recall in both directions, plus sparsity.

Everything runs where the model does: the split's features are encoded on the device, and the score matrices and
the ranks are computed there too (in chunks of queries), so a GPU run's evaluation copies back only the figures."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from core.fusion import integrated_score
from core.metrics import bidirectional_recall, sparsity_stats
from core.model import DuetModel, EncodedBatch
from core.readability import GroundingReference
from core.sparse_head import top_k_prune
from training.features import SplitFeatures


@torch.inference_mode()
def encode_split(model: DuetModel, split: SplitFeatures, *, batch_size: int = 1024,
                 device: str = "cpu", on_device: bool = False) -> tuple[EncodedBatch, EncodedBatch]:
    """The split's images and captions encoded on ``device``; returned there (``on_device``) or on the host."""
    model.eval()
    if model.texts_are_own_terms and split.caption_terms is None:
        raise ValueError("this model scores captions on their own terms: build the split with their term ids")

    def run(encode: Any, features: torch.Tensor, terms: torch.Tensor | None = None) -> EncodedBatch:
        parts = []
        for i in range(0, features.shape[0], batch_size):
            extra = {} if terms is None else {"term_rows": terms[i:i + batch_size].to(device)}
            parts.append(encode(features[i:i + batch_size].to(device), **extra))
        dense, sparse = torch.cat([p.dense for p in parts]).float(), torch.cat([p.sparse for p in parts]).float()
        return EncodedBatch(dense=dense, sparse=sparse) if on_device else EncodedBatch(dense.cpu(), sparse.cpu())

    terms = split.caption_terms if model.texts_are_own_terms else None
    return run(model.encode_image, split.image_features), run(model.encode_text, split.text_features, terms)


def evaluate_encoded(images: EncodedBatch, texts: EncodedBatch, caption_image: torch.Tensor, *,
                     w_dense: float, w_sparse: float, temperature: float,
                     prune_query: int | None = None, prune_doc: int | None = None,
                     other_fusions: Mapping[str, tuple[float, float]] | None = None) -> dict[str, Any]:
    """Recall for dense (cosine), sparse (dot product) and integrated (w1 * cos / temp + w2 * sparse); and, under
    each name of ``other_fusions``, the integrated recall with those (w_dense, w_sparse), from the same scores."""
    text_sparse = top_k_prune(texts.sparse, prune_query)
    image_sparse = top_k_prune(images.sparse, prune_doc)
    dense_t2i = texts.dense @ images.dense.T  # (N_txt, N_img)
    sparse_t2i = text_sparse @ image_sparse.T  # (N_txt, N_img)
    integrated_t2i = integrated_score(dense_t2i, sparse_t2i, w_dense=w_dense, w_sparse=w_sparse,
                                      temperature=temperature)
    out = {
        "dense": bidirectional_recall(dense_t2i, caption_image),
        "sparse": bidirectional_recall(sparse_t2i, caption_image),
        "integrated": bidirectional_recall(integrated_t2i, caption_image),
        "sparsity": sparsity_stats(text_sparse, image_sparse),
        "fusion": {"w_dense": w_dense, "w_sparse": w_sparse, "temperature": temperature},
    }
    for name, (other_dense, other_sparse) in (other_fusions or {}).items():
        out[name] = bidirectional_recall(integrated_score(dense_t2i, sparse_t2i, w_dense=other_dense,
                                                          w_sparse=other_sparse, temperature=temperature),
                                         caption_image)
    return out


@torch.inference_mode()
def evaluate_model(model: DuetModel, split: SplitFeatures, *, device: str = "cpu",
                   prune_query: int | None = None, prune_doc: int | None = None,
                   grounding: GroundingReference | None = None,
                   other_fusions: Mapping[str, tuple[float, float]] | None = None) -> dict[str, Any]:
    """Recall and sparsity (``other_fusions``: as ``evaluate_encoded``); with a grounding reference (and caption
    tokens), the readability figures too."""
    images, texts = encode_split(model, split, device=device, on_device=True)
    cfg = model.config
    metrics = evaluate_encoded(images, texts, split.caption_image, w_dense=cfg.fusion_dense_weight,
                               w_sparse=cfg.fusion_sparse_weight, temperature=float(model.temperature.detach()),
                               prune_query=prune_query, prune_doc=prune_doc, other_fusions=other_fusions)
    if grounding is not None and split.caption_terms is not None:
        term_ids = model.sparse_head.term_ids.cpu()
        metrics["readability"] = grounding.measure(top_k_prune(images.sparse, prune_doc).cpu(), term_ids,
                                                   split.caption_terms, split.caption_image)
        query_pieces = grounding.text_piece_rate(top_k_prune(texts.sparse, prune_query).cpu(), term_ids)
        if query_pieces is not None:
            metrics["readability"]["query_piece_rate"] = query_pieces
    return metrics


# Sparse weight grid for the val-selected fusion (dense weight fixed): powers of two around the teacher's w2.
FUSION_GRID = tuple(2.0**k for k in range(-8, 5))


def fusion_value(integrated: dict[str, dict[str, float]], metric: str) -> float:
    """The fusion selection criterion: t2i R@1, or RSUM over both directions."""
    if metric == "rsum":
        return integrated["t2i"]["RSUM"] + integrated["i2t"]["RSUM"]
    return integrated["t2i"]["R@1"]


@torch.inference_mode()
def tune_fusion(model: DuetModel, split: SplitFeatures, *, device: str = "cpu",
                metric: str = "t2i_r1") -> dict[str, Any]:
    """Pick w_sparse (w_dense fixed) maximising ``metric`` of the integrated score on ``split`` (val).

    Returns the chosen weights and the whole sweep (recall vs weight), so the choice can be inspected. The dense
    and sparse score matrices are computed once; each weight only fuses them again.
    """
    images, texts = encode_split(model, split, device=device, on_device=True)
    temperature = float(model.temperature.detach())
    w_dense = model.config.fusion_dense_weight or 1.0
    dense_t2i, sparse_t2i = texts.dense @ images.dense.T, texts.sparse @ images.sparse.T
    sweep = []
    for factor in FUSION_GRID:
        w_sparse = w_dense * factor
        integrated = integrated_score(dense_t2i, sparse_t2i, w_dense=w_dense, w_sparse=w_sparse,
                                      temperature=temperature)
        sweep.append({"w_dense": w_dense, "w_sparse": w_sparse,
                      "integrated": bidirectional_recall(integrated, split.caption_image)})
    best = max(sweep, key=lambda p: fusion_value(p["integrated"], metric))
    return {"w_dense": best["w_dense"], "w_sparse": best["w_sparse"], "metric": metric, "sweep": sweep}
