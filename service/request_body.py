"""Reading a request body by hand (the search and write routes take JSON or multipart): its media type, a JSON
object, or a multipart form, each refused with the service's own error codes."""

from __future__ import annotations

import json
from typing import Any

from fastapi import Request
from starlette.datastructures import FormData
from starlette.exceptions import HTTPException as StarletteHTTPException

from service.errors import ApiError

MAX_FORM_FIELDS = 32
JSON = "application/json"
MULTIPART = "multipart/form-data"


def media_type_of(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


def unsupported_media_type(media_type: str) -> ApiError:
    return ApiError(415, "unsupported_media_type",
                    f"unsupported content type {media_type or '(none)'}; send {JSON} or {MULTIPART}")


def parse_json(raw: bytes, what: str = "the request body") -> Any:
    try:
        return json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise ApiError(400, "invalid_encoding", f"{what} is not valid UTF-8") from e
    except json.JSONDecodeError as e:
        raise ApiError(400, "malformed_json", f"{what} is not valid JSON: {e}") from e
    except RecursionError as e:  # e.g. 100,000 '[': the decoder's own stack is the limit
        raise ApiError(400, "malformed_json", f"{what} nests too deeply") from e


async def read_json_object(request: Request) -> dict[str, Any]:
    payload = parse_json(await request.body())
    if not isinstance(payload, dict):
        raise ApiError(422, "invalid_request", "the JSON body must be an object")
    return payload


async def read_form(request: Request, *, max_fields: int = MAX_FORM_FIELDS) -> FormData:
    try:
        return await request.form(max_files=1, max_fields=max_fields)
    except StarletteHTTPException as e:
        raise ApiError(400, "malformed_multipart", str(e.detail)) from e
