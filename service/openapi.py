"""The OpenAPI document states what this server accepts: the request bodies the routes read by hand (JSON, and the
multipart forms beside an image file), and the limits that are settings (top_k, text length, captions, ...).
Generated-input tests (schemathesis, benchmarks/reliability/fuzz.py) send what it calls valid and expect it taken."""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel

from indexer.item_rules import ITEM_ID_PATTERN
from service.settings import ServiceSettings

JSON = "application/json"
MULTIPART = "multipart/form-data"
IMAGE_PART_TYPES = "image/jpeg, image/png, image/webp, image/gif, image/bmp"
WRITE_PATH = "/v1/items/{item_id}"


def _as_form_field(schema: dict[str, Any]) -> dict[str, Any]:
    """A nullable text field's schema less its null: a form part "null" is the text null (an absent part is the
    null). Other fields keep theirs: their parts are read as JSON, so "null" is a null there."""
    options = schema.get("anyOf")
    if options is None:
        return schema
    kept = [o for o in options if o.get("type") != "null"]
    if len(kept) != 1 or kept[0].get("type") != "string":
        return schema
    rest = {k: v for k, v in schema.items() if k not in ("anyOf", "default")}
    return {**rest, **kept[0]}


def form_of(model: type[BaseModel], *, exclude: tuple[str, ...] = ()) -> dict[str, Any]:
    """The multipart twin of a model that takes ``image_base64``: the image as a file part named ``image``, every
    other field a part of its own, the model's 'exactly one of' rules kept, nothing else accepted."""
    schema = model.model_json_schema()
    properties: dict[str, Any] = {"image": {"type": "string", "format": "binary"}}
    for name, field in schema["properties"].items():
        if name not in ("image_base64", *exclude):
            properties[name] = _as_form_field(field)
    return {"type": "object", "properties": properties, "additionalProperties": False,
            "oneOf": [_form_branch(branch) for branch in schema["oneOf"]]}


def _form_branch(branch: dict[str, Any]) -> dict[str, Any]:
    """A JSON branch of 'exactly one of text and image' for a form: a part is always text or a file, so the branch
    need only say which parts are there (and keep a text item's 'no captions')."""

    def named(fields: list[str]) -> list[str]:
        return ["image" if f == "image_base64" else f for f in fields]

    form: dict[str, Any] = {"required": named(branch["required"]), "not": {"required": named(
        branch["not"]["required"])}}
    captions = branch["properties"].get("captions")
    if captions is not None:
        form["properties"] = {"captions": captions}
    return form


def request_body(model: type[BaseModel], *, exclude: tuple[str, ...] = (),
                 json_parts: tuple[str, ...] = ()) -> dict[str, Any]:
    """``openapi_extra`` of a route that reads ``model`` as JSON or as a multipart form (``json_parts``: the form's
    fields sent as JSON parts)."""
    schema = model.model_json_schema()
    schema["properties"] = {k: v for k, v in schema["properties"].items() if k not in exclude}
    encoding = {"image": {"contentType": IMAGE_PART_TYPES}, **{p: {"contentType": JSON} for p in json_parts}}
    return {"requestBody": {"required": True, "content": {
        JSON: {"schema": schema},
        MULTIPART: {"schema": form_of(model, exclude=exclude), "encoding": encoding}}}}


def _objects(node: Any) -> Iterator[dict[str, Any]]:
    pending = [node]
    while pending:
        item = pending.pop()
        if isinstance(item, dict):
            yield item
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)


def with_limits(document: dict[str, Any], settings: ServiceSettings) -> dict[str, Any]:
    """The document with this server's limits in every schema that has such a field."""
    document = copy.deepcopy(document)
    limits: dict[str, dict[str, Any]] = {
        "top_k": {"maximum": settings.max_top_k}, "offset": {"maximum": settings.max_offset},
        "candidate_k": {"maximum": settings.max_candidate_k}, "text": {"maxLength": settings.max_text_chars},
        "captions": {"maxItems": settings.max_captions}}
    for node in _objects(document.get("paths", {})):
        properties = node.get("properties")
        if isinstance(properties, dict):
            for name, limit in limits.items():
                field = properties.get(name)
                if isinstance(field, dict) and field.get("maxItems") != 0:  # 0: a text item's "no captions"
                    field.update(limit)
                    if name == "captions" and "items" in field:
                        field["items"]["maxLength"] = settings.max_text_chars
    write_paths = [path for path in document["paths"] if path.endswith(WRITE_PATH.removeprefix("/v1"))]
    for operation, pattern in (("put", ITEM_ID_PATTERN), ("delete", "(?<!/image)$")):
        for path in write_paths:
            for parameter in document["paths"][path].get(operation, {}).get("parameters", []):
                if parameter["name"] == "item_id":
                    parameter["schema"]["pattern"] = pattern
    return document


def with_shared_definitions(document: dict[str, Any]) -> dict[str, Any]:
    """The document with the definitions hand-written bodies carry (a model's ``$defs``: e.g. the recursive search
    filter) moved into ``components/schemas``, and their references pointed there: ``#/$defs/...`` means nothing
    inside an OpenAPI document."""
    document = copy.deepcopy(document)
    shared = document.setdefault("components", {}).setdefault("schemas", {})
    for node in list(_objects(document.get("paths", {}))):
        definitions = node.pop("$defs", None)
        if isinstance(definitions, dict):
            for name, definition in definitions.items():
                shared.setdefault(name, definition)
    for node in _objects(document):
        reference = node.get("$ref")
        if isinstance(reference, str) and reference.startswith(LOCAL_DEFINITIONS):
            node["$ref"] = "#/components/schemas/" + reference.removeprefix(LOCAL_DEFINITIONS)
    return document


LOCAL_DEFINITIONS = "#/$defs/"


def install_openapi(app: FastAPI, settings: ServiceSettings) -> None:
    """``app.openapi()`` gives the document with this server's limits (built once)."""
    build: Callable[[], dict[str, Any]] = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = with_limits(with_shared_definitions(build()), settings)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
