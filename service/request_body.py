"""Reading a request body by hand (the search and write routes take JSON or multipart): its media type, a JSON
object, or a multipart form, each refused with the service's own error codes.

JSON is read strictly: UTF-8 only, no lone surrogates (they cannot be encoded again, in a log line or a response),
no NaN/Infinity literals, no number too long to convert; multipart text fields must be UTF-8 too (Starlette would
read them as latin-1 instead)."""

from __future__ import annotations

import asyncio
import json
import re
from contextlib import aclosing
from functools import cache
from typing import Any

from fastapi import Request
from pydantic import BaseModel
from starlette.datastructures import FormData
from starlette.formparsers import MultiPartException, MultiPartParser

from service.errors import ApiError

MAX_FORM_FIELDS = 32
_SURROGATE = re.compile("[\ud800-\udfff]")
# a JSON body larger than this is parsed off the event loop (a 9 MB one takes tens of milliseconds)
PARSE_OFF_LOOP_BYTES = 64 * 1024
JSON = "application/json"
MULTIPART = "multipart/form-data"


def media_type_of(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


def unsupported_media_type(media_type: str) -> ApiError:
    return ApiError(415, "unsupported_media_type",
                    f"unsupported content type {media_type or '(none)'}; send {JSON} or {MULTIPART}")


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _lone_surrogate(value: Any) -> bool:
    """Whether a string anywhere in a parsed JSON value (keys included) holds a lone surrogate; no recursion."""
    pending = [value]
    while pending:
        node = pending.pop()
        if isinstance(node, str):
            if _SURROGATE.search(node) is not None:  # a regex scan: a 9 MB string in milliseconds
                return True
        elif isinstance(node, dict):
            pending.extend(node.keys())
            pending.extend(node.values())
        elif isinstance(node, list):
            pending.extend(node)
    return False


def parse_json(raw: bytes, what: str = "the request body") -> Any:
    try:
        payload = json.loads(raw.decode("utf-8"), parse_constant=_no_constant)
    except UnicodeDecodeError as e:
        raise ApiError(400, "invalid_encoding", f"{what} is not valid UTF-8") from e
    except json.JSONDecodeError as e:
        raise ApiError(400, "malformed_json", f"{what} is not valid JSON: {e}") from e
    except RecursionError as e:  # e.g. 100,000 '[': the decoder's own stack is the limit
        raise ApiError(400, "malformed_json", f"{what} nests too deeply") from e
    except ValueError as e:  # NaN or Infinity, or an integer of more digits than Python converts (4,300)
        raise ApiError(400, "malformed_json", f"{what} is not valid JSON: {e}") from e
    if _lone_surrogate(payload):
        raise ApiError(400, "invalid_encoding", f"{what} holds a lone surrogate escape (e.g. \\ud800): not text")
    return payload


async def read_json_object(request: Request) -> dict[str, Any]:
    raw = await request.body()
    payload = parse_json(raw) if len(raw) <= PARSE_OFF_LOOP_BYTES else await asyncio.to_thread(parse_json, raw)
    if not isinstance(payload, dict):
        raise ApiError(422, "invalid_request", "the JSON body must be an object")
    return payload


class JsonField(str):
    """A multipart text field whose part was sent as ``Content-Type: application/json``."""


class _StrictTextParser(MultiPartParser):
    """Starlette's multipart parser, but a text field that is not valid in its charset is refused, not re-read, and
    one sent as JSON is marked so (``JsonField``)."""

    def on_part_end(self) -> None:
        part = self._current_part
        if part.file is None:
            try:
                bytes(part.data).decode("utf-8")
            except UnicodeDecodeError as e:
                raise MultiPartException(f"form field {part.field_name!r} is not valid UTF-8 text") from e
        super().on_part_end()
        declared = dict(part.item_headers).get(b"content-type", b"").split(b";")[0].strip().lower()
        if part.file is None and declared == JSON.encode():
            name, value = self.items[-1]
            self.items[-1] = (name, JsonField(value))


async def read_form(request: Request, *, max_fields: int = MAX_FORM_FIELDS) -> FormData:
    """The form, its file parts spooled; the caller closes it (``FormData.close``)."""
    try:
        async with aclosing(request.stream()) as stream:
            return await _StrictTextParser(request.headers, stream, max_files=1, max_fields=max_fields).parse()
    except MultiPartException as e:
        raise ApiError(400, "malformed_multipart", e.message) from e


def _textual_fields(model: type[BaseModel]) -> frozenset[str]:
    """The fields a form carries as they are: strings, and choices among strings."""
    textual = set()
    for name, schema in model.model_json_schema()["properties"].items():
        options = schema.get("anyOf", [schema])
        if any(o.get("type") == "string" or "enum" in o or "const" in o for o in options):
            textual.add(name)
    return frozenset(textual)


@cache
def _integer_fields(model: type[BaseModel]) -> frozenset[str]:
    schema = model.model_json_schema()["properties"]
    return frozenset(name for name, field in schema.items()
                     if any(o.get("type") == "integer" for o in field.get("anyOf", [field])))


def integral_floats_as_ints(model: type[BaseModel], payload: dict[str, Any]) -> dict[str, Any]:
    """JSON Schema counts 10.0 as an integer, and so does the service: an integer field given a whole float gets
    it as an int before strict validation (which refuses floats, and strings, for ints)."""
    integers = _integer_fields(model)
    return {name: int(value) if name in integers and isinstance(value, float) and value.is_integer() else value
            for name, value in payload.items()}


def typed_form_fields(model: type[BaseModel], fields: dict[str, str]) -> dict[str, Any]:
    """Form fields as the model's types, for strict validation: a field that is not text is read as JSON, so that
    ``top_k=10`` is 10 and ``explain=true`` is True, while ``explain=yes`` stays a string the model refuses."""
    textual = _textual_fields(model)
    typed: dict[str, Any] = {}
    for name, value in fields.items():
        if name in textual or name not in model.model_fields:
            typed[name] = value  # an unknown field stays as it came: the model names it in its refusal
            continue
        try:
            typed[name] = json.loads(value, parse_constant=_no_constant)
        except (ValueError, RecursionError):  # not JSON: left as text, which a non-text field refuses
            typed[name] = value
    return typed
