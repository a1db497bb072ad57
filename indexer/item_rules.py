"""The rules a text and an item id are held to, written once as regular expressions: the writes of a collection and
the service's validation apply them, and the service's OpenAPI schema states them, so what the schema calls valid is
what the service accepts (generated-input tests hold the two together). Written in the part of regex syntax that
Python and ECMA-262 read alike: no ``\\s``, whose meaning differs between the two."""

from __future__ import annotations

import re

# whitespace as Python's str.isspace() has it, with U+FEFF, which ECMA-262 counts as whitespace too
SPACE = "\\t\\n\\x0b\\x0c\\r\\x1c-\\x20\\x85\\xa0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000\\ufeff"
# characters that would break a log line, a header or a terminal: C0, DEL, C1, and the Unicode line separators
CONTROL = "\\x00-\\x1f\\x7f-\\x9f\\u2028\\u2029"
# a text (a query, an item's text, a caption) needs one character that is not whitespace
TEXT_PATTERN = f"[^{SPACE}]"
# an item id: no '#' (caption ids are '<image id>#<n>'), no control character, no whitespace at either end, and not
# ending in /image (the route of an item's image)
ITEM_ID_PATTERN = f"^[^#{SPACE}{CONTROL}](?:[^#{CONTROL}]*[^#{SPACE}{CONTROL}])?(?<!/image)$"
IMAGE_ROUTE = "/image"
MAX_ID_CHARS = 512

_TEXT = re.compile(TEXT_PATTERN)
_ITEM_ID = re.compile(ITEM_ID_PATTERN)
_EDGE_SPACE = re.compile(f"^[{SPACE}]+|[{SPACE}]+$")


def has_content(text: str) -> bool:
    return _TEXT.search(text) is not None


def trimmed(text: str) -> str:
    """The text without whitespace at either end (whitespace as the schema has it)."""
    return _EDGE_SPACE.sub("", text)


def item_id_problem(item_id: str) -> str | None:
    """What is wrong with an item id, or None."""
    if not item_id or len(item_id) > MAX_ID_CHARS:
        return f"must have 1 to {MAX_ID_CHARS} characters"
    if "#" in item_id:
        return "must not contain '#' (caption ids are '<image id>#<n>')"
    if item_id.endswith(IMAGE_ROUTE):
        return f"must not end with {IMAGE_ROUTE!r} (that is the route of an item's image)"
    if _ITEM_ID.fullmatch(item_id) is None:
        return "must hold no control character and no whitespace at either end"
    return None
