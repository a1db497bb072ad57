"""A search request from its body (JSON, or multipart form fields beside an image file), held to the service's
limits, and its query image decoded."""

from __future__ import annotations

import base64
import binascii
import time
from typing import Any

from fastapi import Request
from PIL import Image
from pydantic import ValidationError
from starlette.datastructures import UploadFile

from indexer.filters import Filter
from indexer.item_rules import has_content, trimmed
from service.errors import ApiError, validation_message
from service.images import QUERY_SIDE, decode_image
from service.request_body import (
    JSON,
    MULTIPART,
    integral_floats_as_ints,
    media_type_of,
    read_form,
    read_json_object,
    typed_form_fields,
    unsupported_media_type,
)
from service.schemas import SearchRequest
from service.settings import ServiceSettings


async def _multipart_payload(request: Request) -> tuple[dict[str, Any], bytes | None]:
    form = await read_form(request)
    fields: dict[str, str] = {}
    image_bytes: bytes | None = None
    try:
        for key, value in form.multi_items():
            if not isinstance(value, UploadFile):
                if key in fields:
                    raise ApiError(422, "invalid_request", f"{key}: given more than once")
                fields[key] = value
            elif key != "image":
                raise ApiError(422, "invalid_request", f"unexpected file field {key!r}; send the image as 'image'")
            else:
                image_bytes = await value.read()
    finally:
        await form.close()
    payload = typed_form_fields(SearchRequest, fields)
    if image_bytes is not None:
        payload["image_base64"] = ""  # placeholder, so that the schema sees an image query: the bytes travel apart
    return payload, image_bytes


async def read_search_request(request: Request) -> tuple[SearchRequest, bytes | None]:
    """The validated request, and the uploaded image's bytes when it came as a multipart file."""
    media_type = media_type_of(request)
    image_bytes: bytes | None = None
    if media_type == JSON:
        payload = await read_json_object(request)
    elif media_type == MULTIPART:
        payload, image_bytes = await _multipart_payload(request)
    else:
        raise unsupported_media_type(media_type)
    try:  # strict: true is not 1, "yes" is not true (the form's fields arrive typed, see typed_form_fields)
        search = SearchRequest.model_validate(integral_floats_as_ints(SearchRequest, payload), strict=True)
    except ValidationError as e:
        raise ApiError(422, "invalid_request", validation_message(e)) from e
    return search, image_bytes


def check_limits(search: SearchRequest, settings: ServiceSettings) -> None:
    """The limits that are settings rather than part of the schema."""
    for name, value, limit in (("top_k", search.top_k, settings.max_top_k),
                               ("offset", search.offset, settings.max_offset),
                               ("candidate_k", search.candidate_k, settings.max_candidate_k)):
        if value > limit:
            raise ApiError(422, "invalid_request", f"{name} must be at most {limit} (got {value})")
    if search.text is not None:
        text = search.text
        if len(text) > settings.max_text_chars:
            raise ApiError(422, "text_too_long",
                           f"the text query has {len(text)} characters; the limit is {settings.max_text_chars}")
        if not has_content(text):
            raise ApiError(422, "empty_text", "the text query is empty")


def base64_bytes(text: str) -> bytes:
    """The bytes an ``image_base64`` field carries."""
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as e:
        raise ApiError(422, "invalid_base64", f"image_base64 is not valid base64: {e}") from e


def query_of(search: SearchRequest, image_bytes: bytes | None,
             settings: ServiceSettings) -> tuple[str | Image.Image, float]:
    """The query, a stripped text or a decoded image, and the milliseconds decoding the image took."""
    if search.text is not None:
        return trimmed(search.text), 0.0
    if image_bytes is None:
        image_bytes = base64_bytes(search.image_base64 or "")
    started = time.perf_counter()
    image = decode_image(image_bytes, max_pixels=settings.max_image_pixels, shorter_side=QUERY_SIDE)
    return image, (time.perf_counter() - started) * 1000


def filter_of(text: str | None) -> Filter | None:
    """A filter given as JSON text (a facet query's parameter)."""
    if text is None:
        return None
    try:
        return Filter.model_validate_json(text, strict=True)
    except ValidationError as e:
        raise ApiError(422, "invalid_filter", f"filter: {validation_message(e)}") from e
