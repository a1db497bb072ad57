"""What schemathesis needs to know about this API beyond its OpenAPI, as hooks: the fuzz part loads them, and so can
anyone running the CLI, ``SCHEMATHESIS_HOOKS=benchmarks.reliability.schemathesis_hooks st run URL/openapi.json
--checks all``.

- Images. The OpenAPI says an image field holds an image (a multipart part typed image/*, or base64 with
  ``contentMediaType: image/*``), which no JSON Schema generator makes from random bytes. Registered here,
  schemathesis draws real images for them; a valid case whose image part still holds placeholder bytes (the
  coverage phase fills file parts so) gets a real image before it is sent. Invalid cases keep their bytes.
- Mutations the service never sees. ``negative_data_rejection`` counts a multipart field "changed" from a string (or
  a list of strings) to a number, a boolean or an object as invalid, yet on the wire it is the same text part
  ("false" is a fine caption); schemathesis already skips such mutations for urlencoded forms and for path and query
  strings, not for multipart. And it counts a body as invalid when one alternative of a oneOf was negated, though
  the body matches the other; and it reports a "negative" case that no mutation reached (it labels such a case a
  positive test case itself). Failures of cases whose every mutation is of the first two kinds, or that have none,
  and only those, are dropped here (``filter_failure``).
- What the collection holds. A sparse-mode search whose text has no word of the index's vocabulary is a 422
  ``empty_sparse_query``, and a filter on a field the collection does not index (or with a value of the field's
  other type) a 422 ``invalid_filter`` (README): statements about the collection's content, as a 404 is about an
  id, which no schema can describe. ``positive_data_acceptance`` failures with those answers, and only those, are
  dropped too.
"""

from __future__ import annotations

import base64
import io
from functools import cache
from typing import Any
from urllib.parse import unquote

import schemathesis
from hypothesis import strategies as st
from PIL import Image
from schemathesis.core.failures import AcceptedNegativeData
from schemathesis.core.mutations import OperatorKind
from schemathesis.core.parameters import ParameterLocation
from schemathesis.openapi.checks import EnsureResourceAvailability, RejectedPositiveData

FORMATS = {"image/png": "PNG", "image/jpeg": "JPEG", "image/webp": "WEBP", "image/gif": "GIF", "image/bmp": "BMP"}
SIZES = ((32, 32), (64, 40), (17, 90))  # odd shapes too, each within the aspect-ratio limit


@cache
def samples(media_type: str) -> tuple[bytes, ...]:
    """A few small images of one type, each of distinct content (a plain colour and noise)."""
    out = []
    for n, size in enumerate(SIZES):
        image = Image.effect_noise(size, 40 + 30 * n).convert("RGB")
        buffer = io.BytesIO()
        image.save(buffer, format=FORMATS[media_type])
        out.append(buffer.getvalue())
    return tuple(out)


def base64_samples() -> list[str]:
    return [base64.b64encode(data).decode() for media_type in FORMATS for data in samples(media_type)]


def register() -> None:
    """Image parts of multipart bodies: drawn from the samples (registered once per process)."""
    for media_type in FORMATS:
        schemathesis.openapi.media_type(media_type, st.sampled_from(samples(media_type)))


def with_image_samples(raw: dict[str, Any]) -> dict[str, Any]:
    """The schema with every base64 image field drawing from the samples (in place; returned for chaining)."""
    encoded = base64_samples()
    pending: list[Any] = [raw]
    while pending:
        node = pending.pop()
        if isinstance(node, dict):
            if node.get("contentEncoding") == "base64" and str(node.get("contentMediaType", "")).startswith("image/"):
                options = node.get("anyOf", [])
                for option in options:
                    if option.get("type") == "string":
                        option["enum"] = encoded
                if not options:
                    node["enum"] = encoded
            pending.extend(node.values())
        elif isinstance(node, list):
            pending.extend(node)
    return raw


FORM_TEXT_TYPES = {"string", "array"}  # a text part, or repeated text parts
ABOUT_THE_COLLECTION = frozenset({"empty_sparse_query", "invalid_filter"})


def _form_text_retyped(mutation: Any) -> bool:
    """A field retyped from text, or to a list (whose one element is the same part on the wire)."""
    return (mutation.operator == OperatorKind.CHANGE_TYPE and mutation.parameter_location == ParameterLocation.BODY
            and (bool(FORM_TEXT_TYPES & set(str(mutation.original_value or "").split(" | ")))
                 or mutation.new_value == "array"))


def _inside_one_of(mutation: Any) -> bool:
    # a mutation inside one alternative of "exactly one of text and image": the service enforces every rule of
    # those alternatives itself, so a body it accepted kept them (negating one alternative of a oneOf does not make
    # a body that matches the other invalid)
    return mutation.operator != OperatorKind.CHANGE_TYPE and "/oneOf/" in mutation.schema_pointer


def only_unseen_mutations(case: Any) -> bool:
    """Whether every mutation of a negative case leaves the request the service receives valid: text fields of a
    multipart form retyped (still text on the wire), or a rule inside one alternative of a oneOf."""
    data = getattr(getattr(case.meta, "phase", None), "data", None)
    mutations = getattr(data, "mutations", None)
    if mutations is None:  # a phase that records no mutations (the coverage phase's own negative cases)
        return False
    if not mutations:  # a "negative" case no mutation reached: schemathesis itself labels it a positive test case
        return True
    form = str(case.media_type or "").startswith("multipart/form-data")
    return all((form and _form_text_retyped(m)) or _inside_one_of(m) for m in mutations)


def about_the_collection(response: Any) -> bool:
    """A 422 saying a sparse-mode text has no word the index knows, or a filter names a field the collection does
    not index (or gives it a value of another type): an answer about the collection's content, which no schema can
    describe (as a 404 is about an id), not a refusal of the request's form."""
    if response.status_code != 422:
        return False
    try:
        return response.json()["error"]["code"] in ABOUT_THE_COLLECTION
    except (ValueError, KeyError, TypeError):
        return False


def spells_a_percent_escape(case: Any) -> bool:
    """Whether a path parameter is a text that spells a percent-escape ("%C3%89"). The runner unquotes each path
    parameter before it quotes it (its quote_all, "to keep quoting idempotent"), so such an id, taken from a
    response by a link, reaches the service as the character it spells ("É"): another id. The service keeps the
    six characters as the id and finds it at its Location, %25C3%2589 (tests/test_collections.py)."""
    return any(isinstance(value, str) and unquote(value) != value for value in (case.path_parameters or {}).values())


@schemathesis.hook
def filter_failure(context: Any, failure: Any, case: Any, response: Any) -> bool:  # noqa: ARG001 (the signature)
    if isinstance(failure, AcceptedNegativeData):
        return not only_unseen_mutations(case)
    if isinstance(failure, EnsureResourceAvailability) and spells_a_percent_escape(case):
        return False
    return not (isinstance(failure, RejectedPositiveData) and about_the_collection(response))


def _is_image(data: Any) -> bool:
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.verify()
    except Exception:  # anything Pillow cannot read is not an image
        return False
    return True


@schemathesis.hook
def before_call(context: Any, case: Any, **kwargs: Any) -> None:  # noqa: ARG001 (the signature)
    meta = case.meta
    valid = meta is None or meta.generation.mode.is_positive
    body = case.body
    if not (valid and isinstance(body, dict) and "image" in body):
        return
    part = body["image"]
    data = getattr(part, "data", part)  # schemathesis wraps some file parts (Binary)
    if isinstance(data, bytes | bytearray) and not _is_image(data):
        body["image"] = samples("image/png")[0]


@schemathesis.hook
def before_load_schema(context: Any, raw_schema: dict[str, Any]) -> None:  # noqa: ARG001 (the hook's signature)
    with_image_samples(raw_schema)


register()
