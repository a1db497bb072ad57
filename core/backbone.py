"""Frozen open_clip towers cut just before their final projection ("the final layer" of the paper).

``build_backbone`` returns the towers, their tokenizer and image transform, the term vocabulary, the initial
weights of both projections and of the token embedding (the sparse head's initialisation), and a fingerprint
of everything frozen, so features, checkpoints and indexes can be bound to the exact base model.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from core.config import BackboneConfig
from core.terms import TermSpace
from core.vocab import Vocabulary
from core.words import WordVocabulary

_logger = logging.getLogger(__name__)


class UnsupportedBackboneError(ValueError):
    """The open_clip model has a tower whose final layer Duet cannot locate."""


class StaleBackboneFactsError(RuntimeError):
    """Towers built for saved facts do not have the facts' fingerprint (the facts outlived what made them)."""


@dataclass
class Towers:
    clip: Any  # an open_clip model (nn.Module); projections removed; eval mode; no gradients
    tokenizer: Callable[[Sequence[str]], torch.Tensor]
    preprocess: Callable[[Any], torch.Tensor]


@dataclass
class Backbone:
    """The frozen towers and what is known of them without running them.

    A backbone read from saved facts (``core.backbone_facts``) has no towers until something encodes or
    tokenises: ``build`` makes them then, and they must have the facts' fingerprint. ``remembered_tokenizer``, where
    set, gives the towers' token ids from a file of earlier outputs (see ``term_tokenizer``).
    """

    vocabulary: Vocabulary
    token_embedding: torch.Tensor  # (V, text_width)
    image_projection: torch.Tensor  # (embed_dim, image_feature_dim), nn.Linear weight layout
    text_projection: torch.Tensor  # (embed_dim, text_feature_dim)
    fingerprint: str
    description: dict[str, Any]
    # HF towers mask padding by id, so trailing pad columns can be cut (4x less work on short captions);
    # open_clip's own text tower uses a fixed-size causal mask and must see the full context.
    pad_id_for_trimming: int | None = None
    towers: Towers | None = None
    build: Callable[[], Backbone] | None = None
    remembered_tokenizer: Callable[[Sequence[str]], torch.Tensor] | None = None
    placed_on: torch.device = field(default_factory=lambda: torch.device("cpu"))
    _building: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def built_towers(self) -> Towers:
        """The towers, built now if they are not yet (on the device the backbone was moved to)."""
        with self._building:  # a tokenising thread and the encoder may both ask first
            if self.towers is None:
                if self.build is None:
                    raise RuntimeError("this backbone has neither towers nor a way to build them")
                built = self.build()
                if built.fingerprint != self.fingerprint:
                    raise StaleBackboneFactsError(
                        f"the towers built now have fingerprint {built.fingerprint}, the saved facts "
                        f"{self.fingerprint}: remove the saved backbone facts and run again")
                assert built.towers is not None
                built.towers.clip.to(self.placed_on)
                self.towers = built.towers
            return self.towers

    @property
    def clip(self) -> Any:
        return self.built_towers().clip

    @property
    def tokenizer(self) -> Callable[[Sequence[str]], torch.Tensor]:
        """The towers' tokenizer; before they are built, one that builds them at its first call."""
        return self.towers.tokenizer if self.towers is not None else self.tokenize

    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        return self.built_towers().tokenizer(texts)

    @property
    def term_tokenizer(self) -> Callable[[Sequence[str]], torch.Tensor]:
        """The tokenizer for a term space (the same ids): the remembering one where there is one, so a run that
        tokenises the same words every time builds no towers for them."""
        return self.remembered_tokenizer if self.remembered_tokenizer is not None else self.tokenizer

    @property
    def preprocess(self) -> Callable[[Any], torch.Tensor]:
        return self.built_towers().preprocess

    def term_space(self, words: WordVocabulary | None = None) -> TermSpace:
        """The sparse head's terms over this backbone: its pieces, or ``words``."""
        return TermSpace(self.vocabulary, self.term_tokenizer, words)

    @property
    def image_feature_dim(self) -> int:
        return int(self.image_projection.shape[1])

    @property
    def text_feature_dim(self) -> int:
        return int(self.text_projection.shape[1])

    @property
    def embed_dim(self) -> int:
        return int(self.image_projection.shape[0])

    @property
    def text_width(self) -> int:
        return int(self.token_embedding.shape[1])

    def to(self, device: str | torch.device) -> Backbone:
        self.placed_on = torch.device(device)
        if self.towers is not None:
            self.towers.clip.to(self.placed_on)
        return self

    @property
    def device(self) -> torch.device:
        return self.placed_on

    def autocast(self) -> Any:
        """bf16 autocast where the towers run on a CUDA device (a GPU's tensor cores), nothing on a CPU."""
        device = self.device
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")

    @torch.inference_mode()
    def image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) preprocessed pixels -> (B, image_feature_dim) pre-projection features."""
        with self.autocast():
            return self.clip.encode_image(pixels.to(self.device, non_blocking=True)).float()

    @torch.inference_mode()
    def text_features(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, L) token ids -> (B, text_feature_dim) pre-projection features."""
        if self.pad_id_for_trimming is not None:
            used = (tokens != self.pad_id_for_trimming).any(dim=0).nonzero()
            length = int(used.max()) + 1 if used.numel() else 1
            tokens = tokens[:, :length]
        with self.autocast():
            return self.clip.encode_text(tokens.to(self.device, non_blocking=True)).float()


def _linear_weight(layer: nn.Module | nn.Parameter) -> torch.Tensor:
    """A projection as nn.Linear weight (out, in); open_clip Parameters are used as ``x @ P`` (in, out)."""
    if isinstance(layer, nn.Linear):
        return layer.weight.detach().clone()
    if isinstance(layer, nn.Parameter):
        return layer.detach().t().contiguous().clone()
    raise UnsupportedBackboneError(f"unsupported projection type {type(layer).__name__}")


def _detach_image_projection(clip: Any) -> torch.Tensor:
    visual = clip.visual
    head = getattr(visual, "head", None)
    if head is not None and isinstance(getattr(head, "proj", None), nn.Linear):  # timm tower
        weight = _linear_weight(head.proj)
        head.proj = nn.Identity()
        return weight
    if isinstance(getattr(visual, "proj", None), nn.Parameter):  # ViT tower
        weight = _linear_weight(visual.proj)
        visual.proj = None
        return weight
    raise UnsupportedBackboneError(
        f"image tower {type(visual).__name__} has no final projection Duet can detach "
        "(supported: open_clip VisionTransformer, timm towers with a linear projection)"
    )


def _detach_text_projection(clip: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Remove the text projection; return (projection weight, token embedding weight)."""
    text = getattr(clip, "text", None)
    if text is None:  # open_clip CLIP: text tower parts live on the model itself
        owner, embedding = clip, clip.token_embedding.weight
    elif hasattr(text, "transformer") and hasattr(text.transformer, "get_input_embeddings"):  # HF tower
        if not isinstance(getattr(text, "proj", None), nn.Linear):
            raise UnsupportedBackboneError("HF text tower needs hf_proj_type='linear' for a single final layer")
        weight = _linear_weight(text.proj)
        text.proj = nn.Identity()
        return weight, text.transformer.get_input_embeddings().weight.detach().clone()
    else:  # open_clip TextTransformer inside CustomTextCLIP
        owner, embedding = text, text.token_embedding.weight
    projection = getattr(owner, "text_projection", None)
    if projection is None:
        raise UnsupportedBackboneError("text tower has no text_projection to detach")
    weight = _linear_weight(projection)
    owner.text_projection = None
    return weight, embedding.detach().clone()


def _vocabulary_from_tokenizer(tokenizer: Any) -> Vocabulary:
    inner = getattr(tokenizer, "tokenizer", None)
    if inner is not None and hasattr(inner, "convert_ids_to_tokens"):  # open_clip HFTokenizer
        size = len(inner)
        tokens = inner.convert_ids_to_tokens(list(range(size)))
        special = set(inner.all_special_ids)
        special |= {i for i, t in enumerate(tokens) if re.fullmatch(r"\[[^\]]*\]", t or "")}  # [unusedN] etc.
        return Vocabulary(tokens, sorted(special))
    if hasattr(tokenizer, "decoder") and hasattr(tokenizer, "all_special_ids"):  # open_clip SimpleTokenizer
        size = tokenizer.vocab_size
        byte_decoder = tokenizer.byte_decoder
        tokens = [bytearray(byte_decoder[c] for c in tokenizer.decoder[i]).decode("utf-8", errors="replace")
                  for i in range(size)]
        # '</w>' marks a word end; keep it so that 'dog' (word) and 'dog' (prefix) stay distinct terms.
        pad_id = 0  # open_clip pads with id 0
        return Vocabulary(tokens, sorted({*tokenizer.all_special_ids, pad_id}))
    raise UnsupportedBackboneError(f"unsupported tokenizer {type(tokenizer).__name__}")


def _fingerprint(description: dict[str, Any], clip: nn.Module, vocabulary: Vocabulary) -> str:
    digest = hashlib.sha256(json.dumps(description, sort_keys=True).encode())
    for name, tensor in sorted(clip.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    digest.update("\n".join(vocabulary.tokens).encode())
    return digest.hexdigest()[:16]


def is_local_checkpoint(pretrained: str) -> bool:
    """A ``pretrained`` that names a file (else it is an open_clip tag, read from a hub cache)."""
    return pretrained.endswith((".pt", ".pth", ".bin", ".safetensors")) or os.sep in pretrained


def _resolve_open_clip_name(model_name: str) -> str:
    """Accept a registered open_clip name or a path to an architecture JSON (registered on the fly)."""
    import open_clip

    path = Path(model_name)
    if model_name.endswith(".json"):
        if not path.is_file():
            raise FileNotFoundError(f"open_clip model config not found: {path}")
        open_clip.add_model_config(path)
        return path.stem
    if model_name not in open_clip.list_models():
        known = ", ".join(open_clip.list_models()[:8])
        raise ValueError(f"unknown open_clip model name {model_name!r} (known include: {known}, ...; "
                         "or pass a path to an architecture .json)")
    return model_name


def build_backbone(config: BackboneConfig) -> Backbone:
    """Create the frozen towers described by ``config``; nothing is fetched from a hub."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # weights come from local packages or paths only
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import open_clip

    from core import packaged

    # Random parts (projections of the packaged model, tiny test towers) get a reproducible init.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.init_seed)
        if config.kind == "packaged":
            clip = packaged.build_packaged_clip(config.embed_dim, config.context_length)
            tokenizer = open_clip.tokenizer.HFTokenizer(str(packaged.minilm_path()),
                                                        context_length=config.context_length)
            preprocess = open_clip.image_transform(packaged.IMAGE_SIZE, is_train=False,
                                                   mean=packaged.IMAGE_MEAN, std=packaged.IMAGE_STD)
            description: dict[str, Any] = {"kind": "packaged", "embed_dim": config.embed_dim,
                                           "context_length": config.context_length,
                                           "image": packaged.TIMM_NAME, "text": "all-MiniLM-L6-v2"}
        else:
            assert config.model_name is not None  # guaranteed by BackboneConfig validation
            name = _resolve_open_clip_name(config.model_name)
            pretrained = config.pretrained
            if pretrained and is_local_checkpoint(pretrained):
                if not Path(pretrained).is_file():
                    raise FileNotFoundError(f"open_clip checkpoint not found: {pretrained}")
            try:
                clip, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=pretrained)
            except RuntimeError as e:
                raise RuntimeError(
                    f"could not load open_clip model {name!r} with pretrained={pretrained!r}: {e}") from e
            tokenizer = open_clip.get_tokenizer(name)
            description = {"kind": "open_clip", "model_name": name, "pretrained": pretrained}
            if pretrained is None:
                description["init_seed"] = config.init_seed
    image_projection = _detach_image_projection(clip)
    text_projection, token_embedding = _detach_text_projection(clip)
    clip.eval().requires_grad_(False)
    vocabulary = _vocabulary_from_tokenizer(tokenizer)
    if len(vocabulary) != token_embedding.shape[0]:
        raise UnsupportedBackboneError(
            f"tokenizer has {len(vocabulary)} tokens but the token embedding has {token_embedding.shape[0]} rows")
    fingerprint = _fingerprint(description, clip, vocabulary)
    hf_config = getattr(getattr(clip, "text", None), "config", None)  # HF text towers pad with their own id
    pad_id = hf_config.pad_token_id if hf_config is not None else None
    _logger.info("backbone %s ready (fingerprint %s)", description, fingerprint)
    return Backbone(vocabulary=vocabulary, token_embedding=token_embedding, image_projection=image_projection,
                    text_projection=text_projection, fingerprint=fingerprint, description=description,
                    pad_id_for_trimming=pad_id, towers=Towers(clip, tokenizer, preprocess))

