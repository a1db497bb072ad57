"""Checkpoint format: trainable weights (safetensors) + validated config JSON + content hash, published atomically.

Layout of a checkpoint directory:
  model.safetensors   DuetModel state (projections, sparse head incl. term_ids, temperature)
  checkpoint.json     {"format", "model_config", "backbone_fingerprint", "content_hash", "dims", "metadata",
                       "words": a word head's terms, each the list of word forms it matches (shown form first)}
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError
from safetensors.torch import load_file, save_file

from core.atomic import atomic_directory
from core.config import ModelConfig
from core.model import DuetModel
from core.words import WordVocabulary

FORMAT = "duet-checkpoint/1"
WEIGHTS = "model.safetensors"
MANIFEST = "checkpoint.json"


class CheckpointError(ValueError):
    """A checkpoint is missing, corrupt, or belongs to another base model."""


@dataclass
class Checkpoint:
    model: DuetModel
    backbone_fingerprint: str
    content_hash: str
    metadata: dict[str, Any] = field(default_factory=dict)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save_checkpoint(path: str | Path, model: DuetModel, *, backbone_fingerprint: str,
                    metadata: dict[str, Any] | None = None) -> str:
    """Write the checkpoint atomically; return its content hash."""
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_directory(path) as tmp:
        save_file(state, str(tmp / WEIGHTS))
        content_hash = sha256_file(tmp / WEIGHTS)
        manifest: dict[str, Any] = {
            "format": FORMAT,
            "model_config": model.config.model_dump(mode="json"),
            "backbone_fingerprint": backbone_fingerprint,
            "content_hash": content_hash,
            "dims": {"image_feature": model.image_proj.in_features, "text_feature": model.text_proj.in_features,
                     "embed": model.image_proj.out_features, "text_width": model.sparse_head.width,
                     "num_terms": model.sparse_head.num_terms},
            "metadata": metadata or {},
        }
        words = model.sparse_head.words
        if words is not None:
            manifest["words"] = [list(forms) for forms in words.terms]
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))
    return content_hash


def read_manifest(path: str | Path) -> dict[str, Any]:
    directory = Path(path)
    manifest_path = directory / MANIFEST
    if not manifest_path.is_file():
        raise CheckpointError(f"not a Duet checkpoint (no {MANIFEST}): {directory}")
    try:
        manifest = json.loads(manifest_path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"corrupt checkpoint manifest {manifest_path}: {e}") from e
    if manifest.get("format") != FORMAT:
        raise CheckpointError(f"{manifest_path}: unsupported format {manifest.get('format')!r}, expected {FORMAT}")
    return manifest


def load_checkpoint(path: str | Path, *, expected_fingerprint: str | None = None,
                    map_location: str = "cpu") -> Checkpoint:
    """Load and verify a checkpoint; refuse one whose base model differs from ``expected_fingerprint``."""
    directory = Path(path)
    manifest = read_manifest(directory)
    fingerprint = manifest["backbone_fingerprint"]
    if expected_fingerprint is not None and fingerprint != expected_fingerprint:
        raise CheckpointError(
            f"checkpoint {directory} was trained on base model {fingerprint}, but the base model in use is "
            f"{expected_fingerprint}; use the matching backbone config or retrain")
    weights_path = directory / WEIGHTS
    if not weights_path.is_file():
        raise CheckpointError(f"checkpoint weights missing: {weights_path}")
    actual = sha256_file(weights_path)
    if actual != manifest["content_hash"]:
        raise CheckpointError(f"checkpoint {weights_path} is corrupt: content hash {actual[:12]} does not match "
                              f"the manifest's {manifest['content_hash'][:12]}")
    try:
        config = ModelConfig.model_validate(manifest["model_config"])
    except ValidationError as e:
        raise CheckpointError(f"{directory / MANIFEST}: invalid model_config: {e}") from e
    state = load_file(str(weights_path), device=map_location)
    dims = manifest["dims"]
    words = None
    if config.sparse_head.vocabulary == "words":
        terms = manifest.get("words")
        if not isinstance(terms, list) or len(terms) < dims["num_terms"]:
            raise CheckpointError(f"{directory / MANIFEST}: a word head's checkpoint must list its words")
        words = WordVocabulary(tuple(tuple(str(f) for f in forms) for forms in terms),
                               inflections=config.sparse_head.inflections == "merge")
    model = DuetModel(
        config,
        image_projection=torch.zeros(dims["embed"], dims["image_feature"]),
        text_projection=torch.zeros(dims["embed"], dims["text_feature"]),
        token_embedding=torch.zeros(dims["num_terms"], dims["text_width"]),
        term_ids=torch.arange(dims["num_terms"]),
        words=words,
    )
    model.load_state_dict(state, strict=True)
    return Checkpoint(model=model, backbone_fingerprint=fingerprint, content_hash=actual,
                      metadata=manifest.get("metadata", {}))
