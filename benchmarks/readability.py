"""Readability through the index: are the indexed images' strongest terms the words of their captions, and are
the captions' (queries') terms their own words?

Reads the index's forward store (the vectors Lucene serves) and the captions stored with the items, so it
measures what a user of the web page sees. The caption vocabulary and the frequency floor come from the
dataset's training captions (the split's own captions when the dataset has no training split).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from benchmarks.datasets import BenchmarkDataset
from core.data import DatasetError, load_karpathy
from core.encoder import SparseRows
from core.readability import GroundingReference, readability, whole_word_mask
from core.vocab import tokenize_in_batches
from indexer.search import SearchEngine

# Queries whose terms the report prints (the first one is the README's running example).
EXAMPLE_QUERIES = ("a dog running on the beach", "two children play in the snow", "a man rides a red bicycle")


def _token_space(sparse: SparseRows, vocab_size: int) -> torch.Tensor:
    weights = torch.zeros(len(sparse), vocab_size)
    rows = torch.from_numpy(np.repeat(np.arange(len(sparse)), sparse.terms_per_row()))
    weights[rows, torch.from_numpy(sparse.indices.astype(np.int64))] = torch.from_numpy(sparse.values)
    return weights


def readability_section(engine: SearchEngine, dataset: BenchmarkDataset) -> dict[str, Any]:
    encoder = engine.encoder
    term_rows, vocabulary = encoder.term_rows, encoder.vocabulary
    data = load_karpathy(dataset.directory, json_name=dataset.json_name, image_root=dataset.image_root)
    try:
        train_captions, vocabulary_from = [c.text for r in data.split("train") for c in r.captions], "train"
    except DatasetError:
        train_captions, vocabulary_from = [c.text for r in data.split(dataset.split) for c in r.captions], \
            dataset.split
    whole_words = torch.from_numpy(whole_word_mask(vocabulary, train_captions))
    reference = GroundingReference(vocabulary.content_mask(), tokenize_in_batches(term_rows, train_captions))

    images = engine.reader.stores["images"]
    captions = [(row, text) for row, item in enumerate(images.items) for text in item.get("captions", [])]
    caption_tokens = tokenize_in_batches(term_rows, [text for _, text in captions])
    caption_image = torch.tensor([row for row, _ in captions], dtype=torch.long)
    weights = _token_space(images.sparse, len(vocabulary))
    targets = reference.targets(caption_tokens, caption_image, len(images.ids))
    out: dict[str, Any] = {
        "images": readability(weights, targets, reference.caption_vocabulary, whole_words=whole_words),
        "frequency_floor": reference.floor(caption_tokens, caption_image, len(images.ids)),
        "caption_vocabulary_from": vocabulary_from,
    }
    if "texts" in engine.reader.stores:
        out["texts"] = _own_words(engine)
        text_terms = torch.from_numpy(engine.reader.stores["texts"].sparse.indices.astype(np.int64))
        out["texts"]["piece_rate"] = float((~whole_words[text_terms]).float().mean()) if text_terms.numel() else 0.0
        out["flops"] = _flops(engine.reader.stores["texts"].sparse, images.sparse, len(vocabulary))
    out["examples"] = [{"query": text, "terms": [[term, round(weight, 3)] for term, weight in
                                                 engine.query_terms(engine.encode_text(text), limit=10)]}
                       for text in EXAMPLE_QUERIES]
    term = vocabulary.display
    out["image_examples"] = []
    for row in range(min(3, len(images.ids))):
        ids, values = images.sparse.row(row)
        top = np.argsort(-values, kind="stable")[:10]
        out["image_examples"].append({"id": images.ids[row], "caption": (images.items[row].get("captions") or [""])[0],
                                      "terms": [[term(int(ids[i])), round(float(values[i]), 3)] for i in top]})
    return out


def _own_words(engine: SearchEngine) -> dict[str, float]:
    """Terms per indexed caption, and the share of captions whose every term is one of its own tokens."""
    texts = engine.reader.stores["texts"]
    tokens = tokenize_in_batches(engine.encoder.term_rows, [item["text"] for item in texts.items])
    counts = texts.sparse.terms_per_row()
    own = 0
    for row in range(len(texts.ids)):
        ids, _ = texts.sparse.row(row)
        own += int(np.isin(ids, tokens[row].numpy()).all())
    return {"mean_terms": float(counts.mean()), "max_terms": int(counts.max()), "own_words_share": own / len(texts.ids)}


def _flops(queries: SparseRows, docs: SparseRows, vocab_size: int) -> float:
    """Expected multiplications per caption-image pair, sum_j p_q(j) p_d(j), over the indexed vectors."""
    def share(rows: SparseRows) -> np.ndarray:
        return np.bincount(rows.indices, minlength=vocab_size) / max(1, len(rows))

    return float((share(queries) * share(docs)).sum())
