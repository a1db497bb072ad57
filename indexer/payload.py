"""Payload indexes: the item fields a collection declares filterable, as columns over a side's rows.

A collection declares its payload fields and their types once (``PayloadSchema``, bound in the index manifest):
  keyword    one string              match a value or any of several; facets count its values
  keywords   a list of strings       matches when any of its strings does; facets count each string
  integer    a whole number          match, range
  float      a number                range (match too, exactly)
  datetime   an ISO 8601 string      range, bounds as ISO 8601 (a time without an offset is UTC)
  bool       true or false           match
An item's payload is its own fields (the build's, e.g. ``split``, or a folder's metadata.jsonl fields) and the
``metadata`` object a write gave it; a caption carries its image's. A field an item lacks, or holds null, is
missing: it matches no ``match`` or ``range`` and fails ``exists``. A value of the wrong type is refused where it
enters: by the build, naming the item, and by a write (a 422), never stored unindexed.

``PayloadIndex`` holds one side's columns: keyword fields dictionary-encoded as rows of codes (CSR, so a single
keyword and a list are one structure), the others as a value array and a presence mask. A published index stores
them in ``<side>/payload.npz`` (hashed with the side's files, checked by ``verify``); the rows written since are
indexed from their items when a filter first needs them.
"""

from __future__ import annotations

import datetime as dt
import functools
import io
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal, get_args

import numpy as np

FieldType = Literal["keyword", "keywords", "integer", "float", "datetime", "bool"]
FIELD_TYPES: tuple[FieldType, ...] = get_args(FieldType)
PayloadSchema = dict[str, FieldType]
PAYLOAD_FILE: Final = "payload.npz"
FIELD_NAME_PATTERN: Final = r"^[A-Za-z_][A-Za-z0-9_]{0,63}$"
# an item's own fields that are not payload: what every item of its side has, and where a write's metadata lives
RESERVED_FIELDS: Final = frozenset({"id", "path", "captions", "text", "image_id", "upload", "metadata"})
MAX_KEYWORD_CHARS: Final = 1_000
_NUMERIC: Final = ("integer", "float", "datetime", "bool")


class PayloadError(ValueError):
    """A payload value or field that does not fit the collection's schema; names the field."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


def check_schema(schema: Mapping[str, str]) -> PayloadSchema:
    """A declared schema, its names and types checked."""
    checked: PayloadSchema = {}
    for name, kind in schema.items():
        if not re.match(FIELD_NAME_PATTERN, name):
            raise PayloadError(name, "a payload field's name is a letter or _ then up to 63 letters, digits or _")
        if name in RESERVED_FIELDS:
            raise PayloadError(name, f"is an item's own field, not payload (reserved: {sorted(RESERVED_FIELDS)})")
        if kind not in FIELD_TYPES:
            raise PayloadError(name, f"unknown type {kind!r} (types: {', '.join(FIELD_TYPES)})")
        checked[name] = kind
    return checked


def payload_of(item: Mapping[str, Any]) -> dict[str, Any]:
    """An item's payload: its own non-reserved fields, and its ``metadata`` object's (which win)."""
    own = {key: value for key, value in item.items() if key not in RESERVED_FIELDS}
    metadata = item.get("metadata")
    return {**own, **metadata} if isinstance(metadata, Mapping) else own


# ----- values -----
def datetime_micros(value: Any, field: str) -> int:
    """An ISO 8601 date or time as microseconds since the epoch (UTC; a time without an offset is UTC)."""
    if not isinstance(value, str):
        raise PayloadError(field, f"a datetime is an ISO 8601 string, not {type(value).__name__}")
    try:
        parsed = dt.datetime.fromisoformat(value)
    except ValueError as e:
        raise PayloadError(field, f"{value!r} is not an ISO 8601 date or time") from e
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.UTC)
    delta = parsed - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def micros_datetime(value: int) -> str:
    """Microseconds since the epoch as ISO 8601 UTC (how facets and errors show a datetime)."""
    return (dt.datetime(1970, 1, 1, tzinfo=dt.UTC) + dt.timedelta(microseconds=int(value))).isoformat()


def _keyword(value: Any, field: str) -> str:
    if not isinstance(value, str):
        raise PayloadError(field, f"a keyword is a string, not {type(value).__name__} ({value!r})")
    if len(value) > MAX_KEYWORD_CHARS:
        raise PayloadError(field, f"a keyword has at most {MAX_KEYWORD_CHARS} characters")
    return value


def _number(value: Any, field: str, kind: FieldType) -> float | int:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise PayloadError(field, f"{kind} field: {value!r} is not a number")
    if isinstance(value, float) and not math.isfinite(value):
        raise PayloadError(field, f"{kind} field: {value!r} is not a finite number")
    if kind == "integer":
        if isinstance(value, float) and not value.is_integer():
            raise PayloadError(field, f"integer field: {value!r} is not a whole number")
        if not -(2**63) <= int(value) < 2**63:
            raise PayloadError(field, f"integer field: {value!r} is out of the 64-bit range")
        return int(value)
    return float(value)


def stored_value(kind: FieldType, value: Any, field: str) -> Any:
    """A payload value as its column stores it (keywords: a tuple of strings; datetime: microseconds; bool: 0/1),
    or None when missing; a value of another type raises ``PayloadError``."""
    if value is None:
        return None
    if kind == "keyword":
        return _keyword(value, field)
    if kind == "keywords":
        values = [value] if isinstance(value, str) else value
        if not isinstance(values, list):
            raise PayloadError(field, f"a keywords field is a list of strings, not {type(value).__name__}")
        return tuple(_keyword(v, field) for v in values)
    if kind == "datetime":
        return datetime_micros(value, field)
    if kind == "bool":
        if not isinstance(value, bool):
            raise PayloadError(field, f"a bool field is true or false, not {value!r}")
        return int(value)
    return _number(value, field, kind)


def check_payload(schema: Mapping[str, FieldType], payload: Mapping[str, Any]) -> None:
    """Refuse a payload whose declared fields hold values of another type (a write's, before it is logged)."""
    for field, kind in schema.items():
        stored_value(kind, payload.get(field), field)


# ----- columns -----
@dataclass(frozen=True)
class KeywordColumn:
    """A keyword or keywords field: its distinct strings (sorted) and each row's codes into them (CSR)."""

    vocabulary: np.ndarray  # (V,) str, sorted
    indptr: np.ndarray  # (n + 1,) int64
    codes: np.ndarray  # (nnz,) int32

    @property
    def rows(self) -> int:
        return int(self.indptr.size - 1)

    @functools.cached_property
    def _code_rows(self) -> np.ndarray:
        return np.repeat(np.arange(self.rows, dtype=np.int64), np.diff(self.indptr))

    def code_rows(self) -> np.ndarray:
        """The row of each code."""
        return self._code_rows

    @functools.cached_property
    def _by_value(self) -> tuple[np.ndarray, np.ndarray]:
        """The rows of each value (an inverted index): value c's rows are ``rows[indptr[c]:indptr[c+1]]``."""
        order = np.argsort(self.codes, kind="stable")
        counts = np.bincount(self.codes, minlength=self.vocabulary.size)
        return np.concatenate([[0], np.cumsum(counts)]).astype(np.int64), self._code_rows[order]

    def codes_of(self, values: Iterable[str]) -> np.ndarray:
        """The codes of the values this column has (values it never saw have none)."""
        if not self.vocabulary.size:  # no row holds any value (a side with no items yet)
            return np.zeros(0, np.int32)
        wanted = np.asarray(list(values), dtype=str)
        at = np.searchsorted(self.vocabulary, wanted)
        found = (at < self.vocabulary.size) & (self.vocabulary[np.minimum(at, self.vocabulary.size - 1)] == wanted)
        return at[found].astype(np.int32)

    def _postings(self, values: Iterable[str]) -> list[np.ndarray]:
        """Each value's rows, ascending (the inverted index: not every row's codes)."""
        indptr, rows = self._by_value
        return [rows[indptr[code]:indptr[code + 1]] for code in self.codes_of(values).tolist()]

    def rows_holding(self, values: Iterable[str]) -> np.ndarray:
        """The rows holding any of ``values``, ascending."""
        each = self._postings(values)
        if len(each) == 1:
            return each[0]  # one value's rows are ascending already (a stable sort of the codes)
        # a keywords row holding two of the values is in both
        return np.unique(np.concatenate(each)) if each else np.zeros(0, np.int64)

    def rows_with(self, values: Iterable[str]) -> np.ndarray:
        """A mask of the rows holding any of ``values`` (each posting set in place: no sort of their union)."""
        mask = np.zeros(self.rows, bool)
        for rows in self._postings(values):
            mask[rows] = True
        return mask

    def present(self) -> np.ndarray:
        return np.diff(self.indptr) > 0

    def counts(self, rows: np.ndarray) -> dict[str, int]:
        """How many of ``rows`` (a mask) hold each value (a row counts once per distinct value it holds)."""
        positions = rows[self.code_rows()]
        counted = np.bincount(self.codes[positions], minlength=self.vocabulary.size)
        return {str(self.vocabulary[c]): int(counted[c]) for c in np.flatnonzero(counted)}


@dataclass(frozen=True)
class ValueColumn:
    """An integer, float, datetime (microseconds) or bool (0/1) field: a value per row and whether it has one."""

    values: np.ndarray  # (n,) the narrowest signed integers that hold them (``narrowest``), or float64
    present_mask: np.ndarray  # (n,) bool

    @property
    def rows(self) -> int:
        return int(self.values.size)

    def present(self) -> np.ndarray:
        return self.present_mask

    @functools.cached_property
    def complete(self) -> bool:
        """Every row has a value (a filter need not check which do)."""
        return bool(self.present_mask.all())

    def counts(self, rows: np.ndarray) -> dict[int | float, int]:
        """How many of ``rows`` (a mask) hold each value (as stored: a bool's is 0 or 1)."""
        values, counted = np.unique(self.values[rows & self.present_mask], return_counts=True)
        return dict(zip(values.tolist(), counted.tolist(), strict=True))


Column = KeywordColumn | ValueColumn


def _keyword_column(values: Sequence[tuple[str, ...]]) -> KeywordColumn:
    distinct = sorted({v for row in values for v in row})
    vocabulary = np.asarray(distinct, dtype=str) if distinct else np.zeros(0, dtype="<U1")
    code = {v: n for n, v in enumerate(distinct)}
    lengths = np.fromiter((len(row) for row in values), np.int64, count=len(values))
    indptr = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    codes = np.fromiter((code[v] for row in values for v in row), np.int32, count=int(indptr[-1]))
    return KeywordColumn(vocabulary, indptr, codes)


def narrowest(values: np.ndarray) -> np.ndarray:
    """Integers in the smallest signed type that holds them all (floats as they are): a filter's comparison over a
    million rows reads 1-4 bytes a row, not 8 (a range over 1M int16 values: about 0.15 ms less a search)."""
    if values.dtype.kind != "i" or not values.size:
        return values
    low, high = int(values.min()), int(values.max())
    for dtype in (np.int8, np.int16, np.int32):
        if np.iinfo(dtype).min <= low and high <= np.iinfo(dtype).max:
            return values.astype(dtype)
    return values


def _value_column(kind: FieldType, values: Sequence[Any]) -> ValueColumn:
    present = np.fromiter((v is not None for v in values), bool, count=len(values))
    dtype = np.float64 if kind == "float" else np.int64
    array = np.fromiter((0 if v is None else v for v in values), dtype, count=len(values))
    return ValueColumn(narrowest(array), present)


@dataclass(frozen=True)
class PayloadIndex:
    """One side's payload columns over its rows (a published index's, or the rows written since)."""

    schema: PayloadSchema
    columns: dict[str, Column]
    rows: int

    @classmethod
    def empty(cls, rows: int = 0) -> PayloadIndex:
        return cls({}, {}, rows)

    @classmethod
    def from_items(cls, schema: Mapping[str, FieldType], items: Sequence[Mapping[str, Any]]) -> PayloadIndex:
        """The columns of ``items``' payloads; a value of another type than declared raises ``PayloadError`` naming
        the item."""
        stored: dict[str, list[Any]] = {field: [] for field in schema}
        for item in items:
            payload = payload_of(item)
            for field, kind in schema.items():
                try:
                    stored[field].append(stored_value(kind, payload.get(field), field))
                except PayloadError as e:
                    raise PayloadError(field, f"item {item.get('id')!r}: {e}") from e
        columns: dict[str, Column] = {}
        for field, kind in schema.items():
            if kind in ("keyword", "keywords"):
                columns[field] = _keyword_column([() if v is None else (v,) if isinstance(v, str) else v
                                                  for v in stored[field]])
            else:
                columns[field] = _value_column(kind, stored[field])
        return cls(dict(schema), columns, len(items))

    def column(self, field: str) -> Column:
        return self.columns[field]

    def save(self, path: Path) -> None:
        arrays: dict[str, Any] = {}
        for field, column in self.columns.items():
            if isinstance(column, KeywordColumn):
                arrays.update({f"{field}.vocabulary": column.vocabulary, f"{field}.indptr": column.indptr,
                               f"{field}.codes": column.codes})
            else:
                arrays.update({f"{field}.values": column.values, f"{field}.present": column.present_mask})
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        path.write_bytes(buffer.getvalue())

    @classmethod
    def load(cls, path: Path, schema: Mapping[str, FieldType], rows: int) -> PayloadIndex:
        """A side's stored columns; a missing field or a column of another length is an error (the caller's)."""
        columns: dict[str, Column] = {}
        with np.load(path, allow_pickle=False) as stored:
            for field, kind in schema.items():
                if kind in ("keyword", "keywords"):
                    column: Column = KeywordColumn(stored[f"{field}.vocabulary"], stored[f"{field}.indptr"],
                                                   stored[f"{field}.codes"])
                else:
                    column = ValueColumn(narrowest(stored[f"{field}.values"]), stored[f"{field}.present"])
                if column.rows != rows:
                    raise ValueError(f"{path}: field {field} has {column.rows} rows, not {rows}")
                columns[field] = column
        return cls(dict(schema), columns, rows)

    def equals(self, other: PayloadIndex) -> bool:
        """The same columns (what ``verify`` checks the stored ones against, rebuilt from the items)."""
        if self.schema != other.schema or self.rows != other.rows:
            return False
        for field, column in self.columns.items():
            mine, theirs = vars(column), vars(other.columns[field])
            if any(not np.array_equal(value, theirs[name]) for name, value in mine.items()):
                return False
        return True


def is_keyword(kind: FieldType) -> bool:
    return kind in ("keyword", "keywords")


def is_numeric(kind: FieldType) -> bool:
    return kind in _NUMERIC


def _json_kind(value: Any) -> str:
    """The payload type a JSON value would be indexed as ("other": none)."""
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "keyword"
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return "keywords"
    return "other"


# types seen together that one type holds
_WIDER: Final = {frozenset({"integer", "float"}): "float", frozenset({"keyword", "keywords"}): "keywords"}


def inferred_schema(payloads: Iterable[Mapping[str, Any]]) -> PayloadSchema:
    """The fields a source's items hold with one JSON type each (a folder's metadata.jsonl): strings as keyword,
    lists of strings as keywords, whole numbers as integer, numbers as float, true/false as bool. A field holding
    several types, or objects, is left unindexed (declare it to have it checked); datetimes are never guessed."""
    kinds: dict[str, set[str]] = {}
    for payload in payloads:
        for name, value in payload.items():
            if value is not None:
                kinds.setdefault(name, set()).add(_json_kind(value))
    schema: dict[str, str] = {}
    for name, seen in sorted(kinds.items()):
        kind = _WIDER.get(frozenset(seen), next(iter(seen)) if len(seen) == 1 else "other")
        if kind != "other" and re.match(FIELD_NAME_PATTERN, name) and name not in RESERVED_FIELDS:
            schema[name] = kind
    return check_schema(schema)
