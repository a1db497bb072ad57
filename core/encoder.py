"""Encode raw texts, images or cached features into Duet's dense and sparse vectors.

Used by the indexer (collections) and the service (queries). Sparse vectors leave this module as CSR rows over
*term ids* of the model's term space (core/terms.py: the text tower's token ids, or a word head's word ids), so any
reader can name each term without knowing the sparse head's column layout.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from core.backbone import Backbone, build_backbone
from core.checkpoint import Checkpoint, load_checkpoint, read_manifest
from core.config import BackboneConfig
from core.data import ImageInput
from core.image_pipeline import ImagePipeline
from core.model import DuetModel
from core.sparse_head import top_k_prune
from core.vocab import Vocabulary


@dataclass(frozen=True)
class SparseRows:
    """Compressed sparse rows: row i holds token ids ``indices[indptr[i]:indptr[i+1]]`` with ``values``."""

    indptr: np.ndarray  # (N + 1,) int64
    indices: np.ndarray  # (nnz,) int32 token ids, ascending within a row
    values: np.ndarray  # (nnz,) float32, > 0

    def __len__(self) -> int:
        return int(self.indptr.shape[0] - 1)

    def row(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        start, end = int(self.indptr[i]), int(self.indptr[i + 1])
        return self.indices[start:end], self.values[start:end]

    def terms_per_row(self) -> np.ndarray:
        return np.diff(self.indptr)

    @functools.cached_property
    def term_ceilings(self) -> np.ndarray:
        """Each token id's largest weight in any row (0 for one no row holds): bounds any row's sparse score."""
        ceilings = np.zeros(int(self.indices.max()) + 1 if self.indices.size else 0, np.float32)
        np.maximum.at(ceilings, self.indices, self.values)
        return ceilings

    @functools.cached_property
    def matrix(self) -> Any:
        """The rows as a scipy CSR array over the same values (no copy), one column per token id up to the
        largest used: its C kernels take many rows out and multiply them by a query vector at once."""
        from scipy.sparse import csr_array

        index_type = np.int32 if self.indices.size < np.iinfo(np.int32).max else np.int64
        columns = int(self.indices.max()) + 1 if self.indices.size else 0
        return csr_array((self.values, self.indices.astype(index_type, copy=False),
                          self.indptr.astype(index_type, copy=False)), shape=(len(self), columns), copy=False)

    def by_term(self) -> TermPostings:
        """The same weights by term: each term's rows (ascending) and weights (an inverted index in memory)."""
        order = np.argsort(self.indices, kind="stable")  # within a term, rows stay ascending
        counts = np.bincount(self.indices, minlength=int(self.indices.max()) + 1 if self.indices.size else 0)
        row_of = np.repeat(np.arange(len(self), dtype=np.int32), np.diff(self.indptr))
        return TermPostings(np.concatenate([[0], np.cumsum(counts)]).astype(np.int64), row_of[order],
                            self.values[order], len(self))

    @staticmethod
    def concatenate(parts: Sequence[SparseRows]) -> SparseRows:
        if not parts:
            return SparseRows(np.zeros(1, np.int64), np.zeros(0, np.int32), np.zeros(0, np.float32))
        offsets = np.cumsum([0] + [int(p.indptr[-1]) for p in parts[:-1]])
        shifted = [p.indptr[1:] + off for p, off in zip(parts, offsets, strict=True)]
        indptr = np.concatenate([parts[0].indptr[:1], *shifted])
        return SparseRows(indptr.astype(np.int64), np.concatenate([p.indices for p in parts]).astype(np.int32),
                          np.concatenate([p.values for p in parts]).astype(np.float32))


@dataclass(frozen=True)
class TermPostings:
    """Sparse rows transposed: term t's rows ``rows[indptr[t]:indptr[t+1]]`` (ascending) with their weights."""

    indptr: np.ndarray  # (T + 1,) int64
    rows: np.ndarray  # (nnz,) int32
    values: np.ndarray  # (nnz,) float32
    row_count: int

    def postings(self, term_ids: np.ndarray) -> int:
        """How many postings the terms have (the work of scoring every row through them)."""
        known = term_ids[term_ids < self.indptr.size - 1]
        return int((self.indptr[known + 1] - self.indptr[known]).sum())


@dataclass(frozen=True)
class EncodedItems:
    dense: np.ndarray  # (N, embed_dim) float32, unit rows
    sparse: SparseRows  # N rows over token ids


@dataclass(frozen=True)
class EncodedFiles:
    """Image files encoded where readable: row r of ``encoded`` is input ``kept[r]``; ``skipped`` names the rest."""

    encoded: EncodedItems
    kept: list[int]  # input positions, ascending
    skipped: list[str]  # paths of the unreadable files, in input order


def sparse_rows(weights: torch.Tensor, term_ids: torch.Tensor, *, prune: int | None = None) -> SparseRows:
    """(N, num_terms) sparse-head output -> CSR over token ids, zeros dropped, optional top-k pruning."""
    weights = top_k_prune(weights.float().cpu(), prune)
    order = torch.argsort(term_ids.cpu())  # columns in ascending token-id order
    weights, ids = weights[:, order], term_ids.cpu()[order]
    rows, cols = torch.nonzero(weights > 0, as_tuple=True)
    indptr = np.zeros(weights.shape[0] + 1, dtype=np.int64)
    np.cumsum(torch.bincount(rows, minlength=weights.shape[0]).numpy(), out=indptr[1:])
    return SparseRows(indptr, ids[cols].numpy().astype(np.int32), weights[rows, cols].numpy().astype(np.float32))


def vocabulary_digest(vocabulary: Vocabulary) -> str:
    """A short hash of the term strings, so indexes can refuse a model with another vocabulary."""
    return hashlib.sha256("\n".join(vocabulary.tokens).encode()).hexdigest()[:16]


class DuetEncoder:
    """A trained Duet model on its frozen base model: raw inputs -> dense + sparse vectors."""

    def __init__(self, backbone: Backbone, checkpoint: Checkpoint, *, checkpoint_path: Path | None = None,
                 device: str = "cpu") -> None:
        self.backbone = backbone.to(device)
        self.checkpoint = checkpoint
        self.checkpoint_path = checkpoint_path
        self.model: DuetModel = checkpoint.model.to(device).eval()
        self.device = device
        self.terms = backbone.term_space(self.model.sparse_head.words)

    @classmethod
    def from_checkpoint(cls, path: str | Path, *, device: str = "cpu") -> DuetEncoder:
        """Build the base model the checkpoint names, then load the checkpoint (refusing a mismatch)."""
        manifest = read_manifest(path)
        backbone = build_backbone(BackboneConfig.model_validate(manifest["model_config"]["backbone"]))
        checkpoint = load_checkpoint(path, expected_fingerprint=backbone.fingerprint)
        return cls(backbone, checkpoint, checkpoint_path=Path(path), device=device)

    @property
    def vocabulary(self) -> Vocabulary:
        """What the sparse rows' term ids name."""
        return self.terms.vocabulary

    @property
    def temperature(self) -> float:
        return float(self.model.temperature.detach())

    @property
    def fusion_weights(self) -> tuple[float, float]:
        """(w_dense, w_sparse) of the integrated score w_dense * cos / temperature + w_sparse * sparse."""
        return self.model.config.fusion_dense_weight, self.model.config.fusion_sparse_weight

    @property
    def texts_are_own_terms(self) -> bool:
        """Captions and queries are scored on their own content terms (expansion control 'always')."""
        return self.model.texts_are_own_terms

    @property
    def inference_free(self) -> bool:
        """Text queries' sparse terms need no text tower forward (a learned weight per own token)."""
        return self.model.config.sparse_head.inference_free

    def _items(self, dense: torch.Tensor, sparse: torch.Tensor, prune: int | None) -> EncodedItems:
        return EncodedItems(dense.float().cpu().numpy(),
                            sparse_rows(sparse, self.model.sparse_head.term_ids, prune=prune))

    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        return self.backbone.tokenizer(list(texts))

    def term_rows(self, texts: Sequence[str]) -> torch.Tensor:
        """Each text's term ids (its own terms, for models that score texts on them)."""
        return self.terms.rows(texts)

    def unmatched_words(self, text: str) -> list[str]:
        """The text's content words the model has no term for (a word model's; they cannot match anything)."""
        return self.terms.unmatched(text)

    @torch.inference_mode()
    def encode_image_features(self, features: torch.Tensor, *, prune: int | None = None) -> EncodedItems:
        encoded = self.model.encode_image(features.to(self.device))
        return self._items(encoded.dense, encoded.sparse, prune)

    @torch.inference_mode()
    def encode_text_features(self, features: torch.Tensor, *, term_rows: torch.Tensor | None = None,
                             prune: int | None = None) -> EncodedItems:
        """Texts from their cached features; models that score texts on their own terms also need their term ids
        (``term_rows``)."""
        encoded = self.model.encode_text(features.to(self.device), term_rows=term_rows)
        return self._items(encoded.dense, encoded.sparse, prune)

    def encode_texts(self, texts: Sequence[str], *, prune: int | None = None) -> EncodedItems:
        tokens = self.tokenize(texts)
        rows = None
        if self.texts_are_own_terms:
            rows = tokens if not self.terms.is_words else self.term_rows(texts)
        return self.encode_text_features(self.backbone.text_features(tokens), term_rows=rows, prune=prune)

    @torch.inference_mode()
    def encode_text_terms(self, texts: Sequence[str]) -> SparseRows:
        """The sparse leg of texts only. Inference-free models need no tower forward: tokens -> learned weights."""
        if not self.inference_free:
            return self.encode_texts(texts).sparse
        head = self.model.sparse_head
        terms = head.own_text(None, None, head.columns_of(self.term_rows(texts)))
        return sparse_rows(terms.to_dense(head.num_terms), head.term_ids)

    def encode_image_files(self, paths: Sequence[str | Path], *, prune: int | None = None,
                           threads: int | None = None) -> EncodedItems:
        """Image files through the image pipeline (core/image_pipeline.py), decoded on ``threads`` threads (default:
        sized to the cores); an unreadable one raises CorruptImageError naming it."""
        return self.encode_readable_image_files(paths, prune=prune, threads=threads, skip_corrupt=False).encoded

    def encode_readable_image_files(self, paths: Sequence[str | Path], *, prune: int | None = None,
                                    threads: int | None = None, skip_corrupt: bool = True) -> EncodedFiles:
        """As ``encode_image_files``, but with ``skip_corrupt`` the unreadable files are left out and listed."""
        pipeline = ImagePipeline(self.backbone.preprocess, self.device, batch_size=max(1, len(paths)),
                                 threads=threads, skip_corrupt=skip_corrupt)
        batch = pipeline.pixels([ImageInput(n, Path(path)) for n, path in enumerate(paths)])
        if not batch.ids:  # every file unreadable: no tower pass over an empty batch
            head = self.model.sparse_head
            empty = EncodedItems(np.zeros((0, self.model.image_proj.out_features), np.float32),
                                 sparse_rows(torch.zeros(0, head.num_terms), head.term_ids))
            return EncodedFiles(empty, [], batch.skipped)
        encoded = self.encode_image_features(self.backbone.image_features(batch.pixels), prune=prune)
        return EncodedFiles(encoded, batch.ids, batch.skipped)

    def encode_upload(self, data: bytes, decoded: Image.Image, *, prune: int | None = None,
                      device_decode: bool | None = None) -> EncodedItems:
        """An uploaded image (its bytes, and the image they decoded to when it was checked) by the pixels an index
        build gives the same file: through the image pipeline where it decodes on the device (a CUDA tower, or
        ``device_decode``), else from the image already decoded (the pipeline's CPU way, without decoding twice)."""
        pipeline = ImagePipeline(self.backbone.preprocess, self.device, batch_size=1, threads=1,
                                 device_decode=device_decode)
        if pipeline.tensor_preprocess is None:
            return self.encode_images([decoded], prune=prune)
        batch = pipeline.pixels([ImageInput(0, Path("upload"), data)])
        return self.encode_image_features(self.backbone.image_features(batch.pixels), prune=prune)

    def encode_images(self, images: Sequence[Image.Image], *, prune: int | None = None) -> EncodedItems:
        pixels = torch.stack([self.backbone.preprocess(image.convert("RGB")) for image in images])
        return self.encode_image_features(self.backbone.image_features(pixels), prune=prune)
