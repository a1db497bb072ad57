"""A write's item from its body (JSON, or multipart form fields beside an image file), held to the limits searches
are held to: body size, image pixels and format, text length; plus the write's own: caption count, id shape."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fastapi import Request
from pydantic import ValidationError
from starlette.datastructures import FormData, UploadFile

from indexer.item_rules import has_content, item_id_problem, trimmed
from service.errors import ApiError, validation_message
from service.images import decode_image
from service.lanes import OffLoop
from service.request_body import (
    JSON,
    MULTIPART,
    JsonField,
    media_type_of,
    parse_json,
    read_form,
    read_json_object,
    unsupported_media_type,
)
from service.schemas import ItemBody
from service.search_input import base64_bytes
from service.settings import ServiceSettings

MAX_METADATA_DEPTH = 32  # deeper JSON is refused here, before it is logged, copied and serialised again
SINGLE_FIELDS = ("id", "text", "metadata")


@dataclass(frozen=True)
class ItemWrite:
    """A validated item: a text, or an image's file bytes (decoded once to check them) and its captions."""

    id: str | None
    metadata: dict[str, Any] | None
    text: str | None = None
    image: bytes | None = None
    captions: tuple[str, ...] = ()


def check_item_id(item_id: str) -> None:
    problem = item_id_problem(item_id)
    if problem is not None:
        raise ApiError(422, "invalid_id", f"the item id {problem}")


def _captions_of(values: list[str]) -> list[str]:
    """Repeated ``captions`` fields, each a caption as it is, or fields sent as JSON (the part's Content-Type is
    application/json), each a list of captions. Only the part's type makes a list: a caption that merely looks like
    JSON stays a caption."""
    captions: list[str] = []
    for value in values:
        if not isinstance(value, JsonField):
            captions.append(value)
            continue
        listed = parse_json(value.encode("utf-8"), "captions")
        if not isinstance(listed, list) or not all(isinstance(c, str) for c in listed):
            raise ApiError(422, "invalid_request", "captions: a JSON part must hold a list of strings")
        captions.extend(listed)
    return captions


def _metadata_of(value: str) -> Any:
    try:  # read as strictly as a JSON body: no lone surrogates, NaN or 5,000-digit numbers
        return parse_json(value.encode("utf-8"), "metadata")
    except ApiError as e:
        raise ApiError(422, "invalid_metadata", e.message) from e


def _depth(value: Any) -> int:
    """How deeply a JSON value nests (a scalar: 0), without recursion."""
    deepest, pending = 0, [(value, 0)]
    while pending:
        node, depth = pending.pop()
        children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else None
        if children is not None:
            deepest = max(deepest, depth + 1)
            if deepest > MAX_METADATA_DEPTH:
                break
            pending.extend((child, depth + 1) for child in children)
    return deepest


def _check_metadata(metadata: dict[str, Any] | None) -> None:
    if metadata is not None and _depth(metadata) > MAX_METADATA_DEPTH:
        raise ApiError(422, "invalid_metadata", f"metadata nests deeper than {MAX_METADATA_DEPTH} levels")


async def _form_payload(form: FormData) -> tuple[dict[str, Any], bytes | None]:
    payload: dict[str, Any] = {}
    captions: list[str] = []
    image: bytes | None = None
    for key, value in form.multi_items():
        if isinstance(value, UploadFile):
            if key != "image":
                raise ApiError(422, "invalid_request", f"unexpected file field {key!r}; send the image as 'image'")
            image = await value.read()
        elif key == "image":
            raise ApiError(422, "invalid_request", "image: send it as a file part (curl -F image=@photo.jpg)")
        elif key == "captions":
            captions.append(value)
        elif key in payload:
            raise ApiError(422, "invalid_request", f"{key}: given more than once")
        else:
            payload[key] = _metadata_of(value) if key == "metadata" else value
    if captions:
        payload["captions"] = _captions_of(captions)
    if image is not None:
        payload["image_base64"] = ""  # placeholder, so that the schema sees an image item: the bytes travel apart
    return payload, image


async def _body(request: Request, settings: ServiceSettings) -> tuple[ItemBody, bytes | None]:
    media_type = media_type_of(request)
    image: bytes | None = None
    if media_type == JSON:
        payload = await read_json_object(request)
    elif media_type == MULTIPART:
        # room for every caption the limit allows, so that one too many gets the caption count's own refusal
        form = await read_form(request, max_fields=settings.max_captions + len(SINGLE_FIELDS) + 1)
        try:
            payload, image = await _form_payload(form)
        finally:
            await form.close()
    else:
        raise unsupported_media_type(media_type)
    try:
        return ItemBody.model_validate(payload, strict=True), image
    except ValidationError as e:
        raise ApiError(422, "invalid_request", validation_message(e)) from e


def _text(text: str, what: str, limit: int) -> str:
    if len(text) > limit:
        raise ApiError(422, "text_too_long", f"{what} has {len(text)} characters; the limit is {limit}")
    if not has_content(text):
        raise ApiError(422, "empty_text", f"{what} is empty")
    return trimmed(text)


async def read_item_write(request: Request, settings: ServiceSettings, off_loop: OffLoop) -> ItemWrite:
    """The validated item of a POST or PUT /v1/items body; an ApiError (4xx) for anything wrong with it."""
    body, image = await _body(request, settings)
    if body.id is not None:
        check_item_id(body.id)
    _check_metadata(body.metadata)
    if body.text is not None:
        return ItemWrite(body.id, body.metadata, text=_text(body.text, "the text", settings.max_text_chars))
    if len(body.captions) > settings.max_captions:
        raise ApiError(422, "too_many_captions",
                       f"{len(body.captions)} captions; the limit is {settings.max_captions} per image")
    captions = tuple(_text(c, f"caption {n}", settings.max_text_chars) for n, c in enumerate(body.captions))
    if image is None:
        image = base64_bytes(body.image_base64 or "")
    # refuses what a search would refuse, the same way; off the event loop, which a large decode would stall
    checked = image
    await off_loop.run(lambda: decode_image(checked, max_pixels=settings.max_image_pixels))
    return ItemWrite(body.id, body.metadata, image=image, captions=captions)
