"""A write made ready to log: its input checked, its items encoded, its upload's bytes beside it.

Preparing needs the encoder; applying (``LiveCollection.apply``) needs only the collection. A single collection
does both; a sharded one prepares where the encoder is (the ingress) and applies on the shard that owns the id.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from PIL import Image, UnidentifiedImageError

from core.encoder import DuetEncoder, EncodedItems
from indexer.item_rules import has_content, item_id_problem, trimmed
from indexer.payload import FieldType, PayloadError, check_payload


class WriteRejectedError(ValueError):
    """A write the collection refuses as given (the input is wrong, not the collection)."""


class IdConflictError(WriteRejectedError):
    """A write whose id is taken by an item it cannot replace (one on the other side, or another image's caption)."""


@dataclass(frozen=True)
class Upload:
    name: str  # content-addressed: sha256 of the bytes + the format's suffix
    data: bytes


@dataclass(frozen=True)
class PreparedWrite:
    """One upsert as the log records it: the item's side and id, its entries (``log_entry``), and its upload."""

    op: Literal["upsert", "delete"]
    side: str
    item_id: str
    entries: list[dict[str, Any]]
    upload: Upload | None = None


def b64(array: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(array).tobytes()).decode("ascii")


def log_entry(side: str, item: dict[str, Any], encoded: EncodedItems, row: int) -> dict[str, Any]:
    """One item as a log record holds it: its side, its metadata and row ``row`` of its vectors."""
    ids, weights = encoded.sparse.row(row)
    return {"side": side, "item": item, "dense": b64(encoded.dense[row].astype(np.float32)),
            "terms": b64(ids.astype(np.int32)), "weights": b64(weights.astype(np.float32))}


def decoded_image(data: bytes) -> tuple[Image.Image, str]:
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as e:
        raise WriteRejectedError(f"not a readable image: {e}") from e
    suffix = {"JPEG": ".jpg", "PNG": ".png", "WEBP": ".webp", "GIF": ".gif", "BMP": ".bmp"}.get(
        image.format or "", ".img")
    return image, suffix


def checked_id(item_id: str) -> str:
    problem = item_id_problem(item_id)
    if problem is not None:
        raise WriteRejectedError(f"the item id {problem}: {item_id[:80]!r}")
    return item_id


def checked_text(text: str, what: str) -> str:
    if not isinstance(text, str) or not has_content(text):
        raise WriteRejectedError(f"a {what} must be non-empty text")
    return trimmed(text)


def checked_metadata(metadata: Mapping[str, Any] | None, payload: Mapping[str, FieldType]) -> dict[str, Any]:
    """A write's metadata as JSON, its payload fields (``payload``: the collection's indexed ones) of their types."""
    if metadata is None:
        return {}
    if not isinstance(metadata, Mapping):
        raise WriteRejectedError("metadata must be a JSON object")
    try:
        checked = dict(json.loads(json.dumps(dict(metadata))))
    except (TypeError, ValueError) as e:
        raise WriteRejectedError(f"metadata must be JSON-serialisable: {e}") from e
    try:
        check_payload(payload, checked)
    except PayloadError as e:
        raise WriteRejectedError(f"metadata.{e}") from e
    return checked


def prepare_image(encoder: DuetEncoder, pruning: Mapping[str, int | None], sides: Sequence[str], data: bytes, *,
                  item_id: str | None = None, captions: Sequence[str] = (),
                  metadata: Mapping[str, Any] | None = None,
                  payload: Mapping[str, FieldType] | None = None) -> PreparedWrite:
    """An image (its file's bytes) and its captions, encoded (its captions only where the collection has texts);
    its captions carry its metadata, as built ones carry their image's payload."""
    image, suffix = decoded_image(data)
    digest = hashlib.sha256(data).hexdigest()
    item_id = checked_id(item_id if item_id is not None else f"{digest[:24]}{suffix}")
    texts = [checked_text(c, "caption") for c in captions]
    extra = checked_metadata(metadata, payload or {})
    encoded_image = encoder.encode_upload(data, image, prune=pruning.get("images"))
    upload = Upload(f"{digest}{suffix}", data)
    item = {"id": item_id, "upload": upload.name, "captions": texts, **({"metadata": extra} if extra else {})}
    entries = [log_entry("images", item, encoded_image, 0)]
    if texts and "texts" in sides:
        encoded_texts = encoder.encode_texts(texts, prune=pruning.get("texts"))
        entries += [log_entry("texts", {"id": f"{item_id}#{n}", "text": text, "image_id": item_id,
                                        **({"metadata": extra} if extra else {})},
                              encoded_texts, n) for n, text in enumerate(texts)]
    return PreparedWrite("upsert", "images", item_id, entries, upload)


def prepare_text(encoder: DuetEncoder, pruning: Mapping[str, int | None], sides: Sequence[str], text: str, *,
                 item_id: str | None = None, metadata: Mapping[str, Any] | None = None,
                 payload: Mapping[str, FieldType] | None = None) -> PreparedWrite:
    """A text item of its own on the texts side, encoded."""
    text = checked_text(text, "text")
    if "texts" not in sides:
        raise WriteRejectedError("this collection has no texts side")
    item_id = checked_id(item_id if item_id is not None else
                         f"text-{hashlib.sha256(text.encode()).hexdigest()[:24]}")
    extra = checked_metadata(metadata, payload or {})
    encoded = encoder.encode_texts([text], prune=pruning.get("texts"))
    item = {"id": item_id, "text": text, **({"metadata": extra} if extra else {})}
    return PreparedWrite("upsert", "texts", item_id, [log_entry("texts", item, encoded, 0)])


def owner_id(item_id: str) -> str:
    """The id whose shard holds an item: a caption ``<image>#<n>`` lives with its image."""
    return item_id.split("#", 1)[0]
