"""The filter language of a search, and its evaluation over a side's payload indexes (indexer/payload.py).

A filter is a boolean clause, as in Qdrant's:
  {"must": [C, ...], "should": [C, ...], "must_not": [C, ...]}
every ``must`` condition holds, at least one ``should`` holds (when there are any), no ``must_not`` holds. A
condition C is
  {"key": "split", "match": {"value": "test"}}          the field holds the value (a keywords field: among them)
  {"key": "split", "match": {"any": ["val", "test"]}}   it holds any of them
  {"key": "year", "range": {"gte": 2010, "lt": 2020}}   gt, gte, lt, lte; a datetime's bounds in ISO 8601
  {"key": "year", "exists": true}                       the item has the field (false: it has not)
  {"has_id": ["id1", "id2"]}                            the item is one of these
or a nested clause (two deep below the top one). A condition on a field the collection has no payload index for, a
value of the field's wrong type, a range over a keyword and an empty ``any`` are refused (``PayloadError``, naming
the field) before any shard is asked. ``compile_filter`` checks a filter against a schema once;
``CompiledFilter.mask`` evaluates it over the rows of a part of a side (a published index, or the rows written since)
as a boolean mask.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr, model_validator

from indexer.payload import (
    FieldType,
    KeywordColumn,
    PayloadError,
    PayloadIndex,
    PayloadSchema,
    ValueColumn,
    datetime_micros,
    is_keyword,
    stored_value,
)

MAX_VALUES: Final = 1_000  # values of one ``any``, ids of one ``has_id``
MAX_CONDITIONS: Final = 64  # conditions in one clause

Scalar = StrictStr | StrictInt | StrictFloat | StrictBool


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _given(names: tuple[str, ...], *, exactly_one: bool) -> Callable[[dict[str, Any]], None]:
    """A model's JSON schema stating what its validator checks: ``names`` are given (not null), exactly one of them
    or at least one."""
    def edit(schema: dict[str, Any]) -> None:
        for name in names:
            field = schema["properties"][name]
            options = [o for o in field.pop("anyOf", []) if o.get("type") != "null"]
            field.pop("default", None)
            field.update(options[0] if len(options) == 1 else {"anyOf": options})
        branches: list[dict[str, Any]] = [{"required": [name]} for name in names]
        if exactly_one:
            branches = [{**branch, "not": {"anyOf": [{"required": [other]} for other in names if other != name]}}
                        for branch, name in zip(branches, names, strict=True)]
            schema["oneOf"] = branches
        else:
            schema["anyOf"] = branches
    return edit


class MatchSpec(_Strict):
    """A value, or any of several."""

    model_config = ConfigDict(json_schema_extra=_given(("value", "any"), exactly_one=True))

    value: Scalar | None = None
    any: list[Scalar] | None = Field(None, max_length=MAX_VALUES)

    @model_validator(mode="after")
    def _one(self) -> MatchSpec:
        if (self.value is None) == (self.any is None):
            raise ValueError("a match gives exactly one of 'value' or 'any'")
        return self


class RangeSpec(_Strict):
    """Bounds of a numeric or datetime field (datetimes as ISO 8601 strings)."""

    model_config = ConfigDict(json_schema_extra=_given(("gt", "gte", "lt", "lte"), exactly_one=False))

    gt: StrictInt | StrictFloat | StrictStr | None = None
    gte: StrictInt | StrictFloat | StrictStr | None = None
    lt: StrictInt | StrictFloat | StrictStr | None = None
    lte: StrictInt | StrictFloat | StrictStr | None = None

    @model_validator(mode="after")
    def _some(self) -> RangeSpec:
        if all(bound is None for bound in (self.gt, self.gte, self.lt, self.lte)):
            raise ValueError("a range gives at least one of gt, gte, lt, lte")
        return self


class FieldCondition(_Strict):
    """One field's condition: ``match``, ``range`` or ``exists``."""

    model_config = ConfigDict(json_schema_extra=_given(("match", "range", "exists"), exactly_one=True))

    key: StrictStr = Field(description="A payload field of the collection.")
    match: MatchSpec | None = None
    range: RangeSpec | None = None
    exists: StrictBool | None = None

    @model_validator(mode="after")
    def _one(self) -> FieldCondition:
        if sum(part is not None for part in (self.match, self.range, self.exists)) != 1:
            raise ValueError(f"the condition on {self.key!r} gives exactly one of 'match', 'range' or 'exists'")
        return self


class HasId(_Strict):
    has_id: list[StrictStr] = Field(min_length=1, max_length=MAX_VALUES, description="Items with these ids.")


# Clauses nest two deep below the top one, each level its own model: a finite schema (a recursive one makes a
# schema-driven client or test generator unfold it without end) that still says (a or b) and not (c and (d or e)).
class InnerFilter(_Strict):
    """A clause of conditions (the deepest level): must, should, must_not."""

    must: list[FieldCondition | HasId] = Field(default_factory=list, max_length=MAX_CONDITIONS)
    should: list[FieldCondition | HasId] = Field(default_factory=list, max_length=MAX_CONDITIONS)
    must_not: list[FieldCondition | HasId] = Field(default_factory=list, max_length=MAX_CONDITIONS)


class NestedFilter(_Strict):
    """A clause of conditions and clauses: must, should, must_not."""

    must: list[FieldCondition | HasId | InnerFilter] = Field(default_factory=list, max_length=MAX_CONDITIONS)
    should: list[FieldCondition | HasId | InnerFilter] = Field(default_factory=list, max_length=MAX_CONDITIONS)
    must_not: list[FieldCondition | HasId | InnerFilter] = Field(default_factory=list, max_length=MAX_CONDITIONS)


class Filter(_Strict):
    """must: all hold; should: at least one holds (when given); must_not: none holds."""

    must: list[FieldCondition | HasId | NestedFilter] = Field(default_factory=list, max_length=MAX_CONDITIONS)
    should: list[FieldCondition | HasId | NestedFilter] = Field(default_factory=list, max_length=MAX_CONDITIONS)
    must_not: list[FieldCondition | HasId | NestedFilter] = Field(default_factory=list, max_length=MAX_CONDITIONS)


Clause = Filter | NestedFilter | InnerFilter
Condition = FieldCondition | HasId | NestedFilter | InnerFilter


# ----- compiled -----
@dataclass(frozen=True)
class Part:
    """Rows of a side a filter is evaluated over: a published index's, or the rows written since (``first``: the
    part's first global row)."""

    payload: PayloadIndex
    first: int
    rows: int
    rows_of_ids: Callable[[Sequence[str]], np.ndarray]  # the live global rows of these ids (any part)


Evaluate = Callable[[Part], np.ndarray]  # a fresh mask of the part's rows, which the caller may change


def _given_values(field: str, spec: MatchSpec) -> list[Any]:
    given = [spec.value] if spec.any is None else spec.any
    if not given:
        raise PayloadError(field, "'any' needs at least one value")
    return given


def _match(field: str, kind: FieldType, spec: MatchSpec) -> Evaluate:
    given = _given_values(field, spec)
    if is_keyword(kind):
        values = [stored_value("keyword", v, field) for v in given]

        def keyword(part: Part) -> np.ndarray:
            column = part.payload.column(field)
            assert isinstance(column, KeywordColumn)
            return column.rows_with(values)
        return keyword
    wanted = np.asarray([_comparable(field, kind, v) for v in given])

    def value(part: Part) -> np.ndarray:
        column = part.payload.column(field)
        assert isinstance(column, ValueColumn)
        return column.present_mask & np.isin(column.values, wanted)
    return value


def _comparable(field: str, kind: FieldType, value: Any) -> int | float:
    """A match value or range bound as the field's column compares it."""
    if kind == "datetime":
        return datetime_micros(value, field)
    if kind == "bool":
        return int(stored_value("bool", value, field))
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise PayloadError(field, f"{kind} field: {value!r} is not a number")
    return float(stored_value("float", value, field)) if kind == "float" or isinstance(value, float) else int(value)


def _range(field: str, kind: FieldType, spec: RangeSpec) -> Evaluate:
    if kind not in ("integer", "float", "datetime"):
        raise PayloadError(field, f"a range needs an integer, float or datetime field; {field} is {kind}")
    bounds = [(name, _comparable(field, kind, bound)) for name in ("gt", "gte", "lt", "lte")
              if (bound := getattr(spec, name)) is not None]
    compare = {"gt": np.greater, "gte": np.greater_equal, "lt": np.less, "lte": np.less_equal}

    def evaluate(part: Part) -> np.ndarray:
        column = part.payload.column(field)
        assert isinstance(column, ValueColumn)
        mask = compare[bounds[0][0]](column.values, bounds[0][1]) if bounds else np.ones(part.rows, bool)
        for name, bound in bounds[1:]:
            mask &= compare[name](column.values, bound)
        if not column.complete:
            mask &= column.present_mask
        return mask
    return evaluate


def _exists(field: str, wanted: bool) -> Evaluate:
    def evaluate(part: Part) -> np.ndarray:
        present = part.payload.column(field).present()
        return present.copy() if wanted else ~present  # a fresh mask: the clause ANDs into it
    return evaluate


def _has_id(ids: Sequence[str]) -> Evaluate:
    def evaluate(part: Part) -> np.ndarray:
        mask = np.zeros(part.rows, bool)
        rows = part.rows_of_ids(ids) - part.first
        mask[rows[(rows >= 0) & (rows < part.rows)]] = True
        return mask
    return evaluate


def _clause(filter_: Clause, schema: PayloadSchema) -> Evaluate:
    must = [_condition(c, schema) for c in filter_.must]
    should = [_condition(c, schema) for c in filter_.should]
    must_not = [_condition(c, schema) for c in filter_.must_not]

    def evaluate(part: Part) -> np.ndarray:
        mask = must[0](part) if must else np.ones(part.rows, bool)  # a condition's mask is its own: ANDed in place
        for condition in must[1:]:
            mask &= condition(part)
        if should:
            any_of = np.zeros(part.rows, bool)
            for condition in should:
                any_of |= condition(part)
            mask &= any_of
        for condition in must_not:
            mask &= ~condition(part)
        return mask
    return evaluate


def _condition(condition: Condition, schema: PayloadSchema) -> Evaluate:
    if isinstance(condition, NestedFilter | InnerFilter):
        return _clause(condition, schema)
    if isinstance(condition, HasId):
        return _has_id(condition.has_id)
    field = condition.key
    if field not in schema:
        indexed = ", ".join(sorted(schema)) or "none"
        raise PayloadError(field, f"no payload index on this field (the collection's indexed fields: {indexed})")
    kind = schema[field]
    if condition.match is not None:
        return _match(field, kind, condition.match)
    if condition.range is not None:
        return _range(field, kind, condition.range)
    return _exists(field, bool(condition.exists))


@dataclass(frozen=True)
class KeywordMatch:
    """A keyword ``match`` a filter must pass: every row the filter passes holds one of ``values`` in ``field``."""

    field: str
    values: tuple[str, ...]

    def rows(self, part: Part) -> np.ndarray:
        """The part's rows holding one of the values, ascending (the field's inverted index)."""
        column = part.payload.column(self.field)
        assert isinstance(column, KeywordColumn)
        return column.rows_holding(self.values)


def _must_keywords(filter_: Filter, schema: PayloadSchema) -> tuple[KeywordMatch, ...]:
    """The keyword ``match`` conditions at the filter's top that it must pass."""
    return tuple(KeywordMatch(c.key, tuple(stored_value("keyword", v, c.key) for v in _given_values(c.key, c.match)))
                 for c in filter_.must
                 if isinstance(c, FieldCondition) and c.match is not None and is_keyword(schema.get(c.key, "integer")))


@dataclass(frozen=True)
class CompiledFilter:
    """A filter checked against a collection's schema, ready to evaluate over any part of a side."""

    source: Filter
    evaluate: Evaluate
    keywords: tuple[KeywordMatch, ...] = ()  # keyword matches it must pass: their postings hold every row it passes

    def mask(self, part: Part) -> np.ndarray:
        return self.evaluate(part)

    def narrowest(self, part: Part) -> tuple[KeywordMatch, np.ndarray] | None:
        """The keyword match with the fewest rows in the part, and those rows (None without one)."""
        found = [(keyword, keyword.rows(part)) for keyword in self.keywords]
        return min(found, key=lambda pair: pair[1].size) if found else None


def compile_filter(filter_: Filter, schema: PayloadSchema) -> CompiledFilter:
    """Check ``filter_`` against the schema (``PayloadError`` naming the field) and compile it."""
    return CompiledFilter(filter_, _clause(filter_, schema), _must_keywords(filter_, schema))


@dataclass(frozen=True)
class Allowed:
    """The rows a filtered search may return over a side's rows: a mask, and (``listed``) the same rows ascending
    where an inverted index listed them, for a search that reads rows rather than tests them. Scanning a million
    rows' mask for its set ones costs about 1 ms; a keyword's posting lists them in a tenth of that."""

    mask: np.ndarray
    listed: np.ndarray | None = None
    listed_by: KeywordMatch | None = None  # the match whose posting listed them

    @functools.cached_property
    def count(self) -> int:
        return int(self.listed.size) if self.listed is not None else int(np.count_nonzero(self.mask))

    @functools.cached_property
    def rows(self) -> np.ndarray:
        """The allowed rows, ascending."""
        return self.listed if self.listed is not None else np.flatnonzero(self.mask)

    def below(self, end: int) -> Allowed:
        """The allowed rows under ``end`` (a side's published rows, before those written since)."""
        listed = None if self.listed is None else self.listed[:int(np.searchsorted(self.listed, end))]
        return Allowed(self.mask[:end], listed, self.listed_by)


def is_empty(filter_: Filter | None) -> bool:
    """No condition at all (every row passes)."""
    return filter_ is None or not (filter_.must or filter_.should or filter_.must_not)
