"""Sparse head (the paper's sparse leg): a dense vector (or the frozen features) -> non-negative weights over the
text vocabulary.

Images are always expanded over the head's whole vocabulary (optionally cut to their strongest ``image_terms``).
Texts are expanded too, or - with expansion control - scored on their own tokens only: then only the logits at
those tokens are computed (``OwnTerms``), and an inference-free head weights them by a learned per-term weight
without any text tower forward.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from core.config import SparseHeadConfig
from core.words import WordVocabulary


def data_sized_ops_pay(tensor: torch.Tensor) -> bool:
    """Whether operators whose output size comes from the data (unique, nonzero) should run on ``tensor``: on a CPU
    the host is the device, so reading a size back costs no wait and skipping work pays; on an accelerator the device
    would wait for the host every step (and a compiled step would fall into pieces)."""
    return tensor.device.type == "cpu"


class _Log1pOfPositive(torch.autograd.Function):
    """log1p(relu(x)) computed at the positive (or NaN) entries only; the same values and gradients, bit for bit."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, logits: torch.Tensor) -> torch.Tensor:
        flat = logits.reshape(-1)
        where = (~(flat <= 0)).nonzero().squeeze(1)  # NaN stays NaN, as relu would leave it
        positive = flat.index_select(0, where)
        ctx.save_for_backward(where, positive)
        return flat.new_zeros(flat.shape).index_copy_(0, where, torch.log1p(positive)).view(logits.shape)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor) -> torch.Tensor:
        where, positive = ctx.saved_tensors  # type: ignore[attr-defined]
        inner = grad.reshape(-1).index_select(0, where) / (positive + 1)  # log1p's own backward; relu's is 0 elsewhere
        return grad.new_zeros(grad.numel()).index_copy_(0, where, inner).view(grad.shape)


def log1p_relu(logits: torch.Tensor) -> torch.Tensor:
    """log1p(relu(logits)), the head's activation. Eager on a CPU, the logarithm runs at the positive logits only
    (most of a head's are not, and torch's CPU log1p takes about 6 ns an element with AVX-512: 40 ms for a batch's
    1,024 x 6,640 weights); a device or a compiled step runs the plain element-wise ops, which it fuses."""
    if data_sized_ops_pay(logits) and not torch.compiler.is_compiling():
        return _Log1pOfPositive.apply(logits)
    return torch.log1p(torch.relu(logits))


@dataclass(frozen=True)
class OwnTerms:
    """Texts as their own terms, compactly: ``columns`` (B, L) head columns (-1 pads), ``weights`` (B, L) (0 pads)."""

    columns: torch.Tensor
    weights: torch.Tensor

    def to(self, device: torch.device | str) -> OwnTerms:
        return OwnTerms(self.columns.to(device), self.weights.to(device))

    def rows(self, index: torch.Tensor) -> OwnTerms:
        """The texts at ``index`` (a batch's rows of a whole split's texts)."""
        return OwnTerms(self.columns[index], self.weights[index])

    def present_weights(self) -> torch.Tensor:
        """(B, L) the weights with every pad's set to 0, whatever was stored there."""
        return torch.where(self.columns >= 0, self.weights, torch.zeros_like(self.weights))

    def to_dense(self, num_terms: int) -> torch.Tensor:
        """(B, num_terms) with zeros outside each text's own columns."""
        # pads add zero to column 0, in place: one (B, num_terms) pass, contiguous (no spare column to cut off)
        return self.weights.new_zeros(self.weights.shape[0], num_terms).scatter_add_(1, self.columns.clamp(min=0),
                                                                                     self.present_weights())

    def scores(self, docs: torch.Tensor) -> torch.Tensor:
        """(N, num_terms) full vectors -> (N, B) dot products with these texts.

        On a CPU only the columns some text uses can pay: the product runs over those (``docs`` restricted to them
        times the texts scattered over them; faster there than gathering per text). On an accelerator the product
        runs over the whole vocabulary: its extra FLOPs cost less there than finding the used columns, whose count
        makes the device wait for the host (and leaves a compiled step in pieces).
        """
        if not data_sized_ops_pay(docs):
            return self.full_scores(docs)
        return self.restricted_scores(docs)

    def full_scores(self, docs: torch.Tensor) -> torch.Tensor:
        """``scores`` as one product over the whole vocabulary: static shapes, no host synchronisation."""
        return docs @ self.to_dense(docs.shape[1]).to(docs.dtype).T

    def restricted_scores(self, docs: torch.Tensor) -> torch.Tensor:
        """``scores`` over the columns the texts use (their number is read back to the host)."""
        used = torch.unique(self.columns[self.columns >= 0])  # ascending
        if used.numel() == 0:
            return docs.new_zeros(docs.shape[0], self.columns.shape[0])
        local = torch.searchsorted(used, self.columns.clamp(min=0))
        local = torch.where(self.columns < 0, torch.full_like(local, used.numel()), local)
        texts = self.weights.new_zeros(self.columns.shape[0], used.numel() + 1).scatter_add(1, local, self.weights)
        return docs[:, used] @ texts[:, :-1].to(docs.dtype).T


def top_k_prune(weights: torch.Tensor, k: int | None) -> torch.Tensor:
    """Keep the k largest weights of each row (None or k <= 0 keeps everything); gradients reach kept terms."""
    if k is None or k <= 0 or k >= weights.shape[1]:
        return weights
    values, indices = weights.topk(k, dim=1)
    return torch.zeros_like(weights).scatter(1, indices, values)


def hub_floor(weights: torch.Tensor, allowed: int) -> torch.Tensor:
    """(N, H) >= 0 image weights of H terms -> (H,) floors that leave each term active (weight above its floor) in
    at most ``allowed`` of the N images: the (allowed + 1)-th largest weight of each column."""
    if allowed >= weights.shape[0]:
        return torch.zeros(weights.shape[1], dtype=weights.dtype, device=weights.device)
    return weights.topk(allowed + 1, dim=0).values[-1]


class SparseHead(nn.Module):
    """Input layer -> LayerNorm -> vocabulary projector -> log1p(relu).

    The input layer reads the normalised dense vector (``proj``, shared by both modalities) or the frozen
    pre-projection features (``image_in`` / ``text_in``). The projector's rows start as a copy of the text
    tower's token embedding for the term ids it outputs (a word's: the mean of its pieces'). ``term_ids`` never
    include special or padding ids, so those can never carry weight. A word head carries its ``words``: its term ids
    are ids of that vocabulary, not of the tokenizer.
    """

    term_ids: torch.Tensor  # a buffer: saved and moved with the module, never trained
    image_term_floor: torch.Tensor | None  # a buffer with image_term_max_share: an image term's weight must exceed it

    def __init__(self, config: SparseHeadConfig, *, embed_dim: int, image_feature_dim: int, text_feature_dim: int,
                 token_embedding: torch.Tensor, term_ids: torch.Tensor,
                 term_idf: torch.Tensor | None = None, words: WordVocabulary | None = None) -> None:
        super().__init__()
        if (words is None) != (config.vocabulary != "words"):
            raise ValueError("a sparse head over whole words needs its word vocabulary, and only such a head takes one")
        self.config = config
        self.words = words
        width = int(token_embedding.shape[1])
        if config.head_input == "dense":
            self.proj = nn.Linear(embed_dim, width)
        else:
            self.image_in = nn.Linear(image_feature_dim, width)
            self.text_in = nn.Linear(text_feature_dim, width)
        self.norm = nn.LayerNorm(width)
        self.vocab_projector = nn.Linear(width, int(term_ids.numel()), bias=False)
        with torch.no_grad():
            self.vocab_projector.weight.copy_(token_embedding[term_ids])
        self.register_buffer("term_ids", term_ids.to(torch.long).clone())
        # zeros until training calibrates it (each epoch, see hub_floor); absent from checkpoints without the option
        floor = torch.zeros(int(term_ids.numel())) if config.image_term_max_share is not None else None
        self.register_buffer("image_term_floor", floor)
        if config.inference_free:
            # OpenSearch's inference-free queries: a learned IDF-like weight per term, started at the IDF scaled to
            # at most 1 (raw IDFs of 2-10 make the first sparse scores so large that the image head's ReLUs die).
            start = term_idf if term_idf is not None else torch.ones(int(term_ids.numel()))
            self.query_weight = nn.Parameter(start.float() / start.float().max().clamp_min(1e-6))

    @property
    def num_terms(self) -> int:
        return int(self.term_ids.numel())

    @property
    def width(self) -> int:
        return int(self.vocab_projector.in_features)

    def _hidden(self, dense: torch.Tensor, features: torch.Tensor | None, side: str) -> torch.Tensor:
        dropout = self.config.input_dropout
        if self.config.head_input == "dense":
            return self.norm(self.proj(F.dropout(dense, dropout, self.training)))
        if features is None:
            raise ValueError("this sparse head reads the pre-projection features: pass them")
        layer = self.image_in if side == "image" else self.text_in
        return self.norm(layer(F.dropout(features, dropout, self.training)))

    def image_logits(self, dense: torch.Tensor, features: torch.Tensor | None = None) -> torch.Tensor:
        """(B, num_terms) image logits before the activation (a word classifier's scores)."""
        return self.vocab_projector(self._hidden(dense, features, "image"))

    def image_weights(self, logits: torch.Tensor, *, keep: int | None = None) -> torch.Tensor:
        """log1p(relu(logits)) (or of softplus, by ``image_activation``), cut to the ``keep`` strongest when given,
        then to the weights above each term's hub floor (when the head has one)."""
        if keep is None or keep <= 0 or keep >= logits.shape[1]:
            weights = self._image_activation(logits)
            return weights if self.image_term_floor is None else self._above_floor(weights, self.image_term_floor)
        # the activation never decreases, so the strongest weights sit at the largest logits: the activation (and
        # its gradient) is computed for the ``keep`` kept logits of each row only, not over the whole vocabulary
        top, columns = logits.topk(keep, dim=1)
        weights = self._image_activation(top)
        if self.image_term_floor is not None:
            weights = self._above_floor(weights, self.image_term_floor[columns])
        return weights.new_zeros(logits.shape).scatter(1, columns, weights)

    def _image_activation(self, logits: torch.Tensor) -> torch.Tensor:
        if self.config.image_activation == "softplus":
            return torch.log1p(F.softplus(logits))
        return log1p_relu(logits)

    @staticmethod
    def _above_floor(weights: torch.Tensor, floor: torch.Tensor) -> torch.Tensor:
        return torch.where(weights > floor.to(weights.dtype), weights, torch.zeros((), dtype=weights.dtype,
                                                                                   device=weights.device))

    def image(self, dense: torch.Tensor, features: torch.Tensor | None = None, *,
              keep: int | None = None) -> torch.Tensor:
        """(B, num_terms) image term weights, cut to the ``keep`` strongest when given."""
        return self.image_weights(self.image_logits(dense, features), keep=keep)

    def expanded_text(self, dense: torch.Tensor, features: torch.Tensor | None = None) -> torch.Tensor:
        """(B, num_terms) text term weights over the whole vocabulary."""
        return log1p_relu(self.vocab_projector(self._hidden(dense, features, "text")))

    def own_text(self, dense: torch.Tensor | None, features: torch.Tensor | None, columns: torch.Tensor) -> OwnTerms:
        """Each text's weights on its own columns only (from ``columns_of``); the rest of the vocabulary is 0."""
        present = columns >= 0
        safe = columns.clamp(min=0)
        if self.config.inference_free:
            weights = torch.relu(self.query_weight)[safe]
        else:
            if dense is None:
                raise ValueError("a head-weighted text needs its dense vector")
            hidden = self._hidden(dense, features, "text")  # (B, width)
            rows = self.vocab_projector.weight[safe]  # (B, L, width): only the logits that can be non-zero
            logits = torch.einsum("bw,blw->bl", hidden, rows)
            weights = torch.log1p(F.softplus(logits)) if self.config.own_text_activation == "softplus" \
                else log1p_relu(logits)
        weights = weights * present
        limit = self.config.max_text_terms
        if limit is not None and columns.shape[1] > limit:
            weights, keep = weights.topk(limit, dim=1)
            columns = columns.gather(1, keep)
            columns = torch.where(weights > 0, columns, torch.full_like(columns, -1))
        return OwnTerms(columns=columns, weights=weights)

    def columns_of(self, token_ids: torch.Tensor) -> torch.Tensor:
        """(B, L_ctx) term ids -> (B, L) head columns of each text's distinct terms of the head (-1 pads)."""
        sorted_ids, order = torch.sort(self.term_ids)
        token_ids = token_ids.to(sorted_ids.device)
        position = torch.searchsorted(sorted_ids, token_ids).clamp(max=sorted_ids.numel() - 1)
        columns = torch.where(sorted_ids[position] == token_ids, order[position], torch.full_like(token_ids, -1))
        columns = columns.sort(dim=1, descending=True).values
        repeated = torch.zeros_like(columns, dtype=torch.bool)
        repeated[:, 1:] = columns[:, 1:] == columns[:, :-1]
        columns = columns.masked_fill(repeated, -1).sort(dim=1, descending=True).values
        width = max(1, int((columns >= 0).sum(dim=1).max())) if columns.numel() else 1
        return columns[:, :width]

    def to_vocabulary_space(self, weights: torch.Tensor, vocab_size: int) -> torch.Tensor:
        """(B, num_terms) -> (B, vocab_size), zero outside ``term_ids``."""
        full = weights.new_zeros(weights.shape[0], vocab_size)
        full[:, self.term_ids] = weights
        return full
