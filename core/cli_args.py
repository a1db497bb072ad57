"""Command-line flags generated from a pydantic model, so that a field's type, default and help live once.

Each field becomes ``--kebab-name`` (renames and aliases per field), typed from its annotation, its description as
the help, and its default shown there. argparse holds no default: an absent flag is absent from the namespace, so
the model's own default (for a settings model: its environment, then its default) applies. Fields of a nested
model become ``--<field>-<subfield>``.

    BUILD = ModelArgs(IndexBuildConfig, flags={"output": "--out"}, exclude=("source",))
    BUILD.add_to(parser)                        # when building the parser
    config = BUILD.build(args, source="folder")  # after parsing; keywords fill fields no flag sets
"""

from __future__ import annotations

import argparse
import types
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Generic, Literal, TypeGuard, TypeVar, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

M = TypeVar("M", bound=BaseModel)
_SEQUENCES = (tuple, list, set, frozenset)


@dataclass(frozen=True)
class Flag:
    """What the field alone does not say about its flag."""

    names: tuple[str, ...] = ()  # the flag and its aliases, e.g. ("--out",); default: --kebab-name
    help: str | None = None  # instead of the field's description
    nargs: bool = False  # sequences: space-separated values (shell globs) instead of one comma-separated value
    required: bool | None = None  # default: whether the model requires the field


class FlagError(ValueError):
    """The flags given make no valid model; the message names the flags."""


@dataclass(frozen=True)
class _Option:
    path: str  # dotted field path; also the namespace attribute
    names: tuple[str, ...]
    field: FieldInfo
    default: Any  # PydanticUndefined when there is none to show (required, or a default factory)
    env: str | None


def split_commas(text: str) -> list[str]:
    """``"a, b,"`` -> ``["a", "b"]``; ``""`` -> ``[]`` (so ``--peers ''`` means none)."""
    return [part.strip() for part in text.split(",") if part.strip()]


def split_pairs(text: str) -> dict[str, str]:
    """``"a:x, b:y"`` -> ``{"a": "x", "b": "y"}``; ``""`` -> ``{}``; a part without ``:`` is refused."""
    pairs: dict[str, str] = {}
    for part in split_commas(text):
        key, colon, value = part.partition(":")
        if not colon:
            raise argparse.ArgumentTypeError(f"{part!r}: expected name:value")
        pairs[key.strip()] = value.strip()
    return pairs


def _is_scalar(annotation: Any) -> bool:
    """A value one word on the command line gives: a number, a string, or one of some literals."""
    return annotation in (int, float, str) or get_origin(annotation) is Literal


def _without_none(annotation: Any) -> Any:
    if get_origin(annotation) in (Union, types.UnionType):
        rest = [a for a in get_args(annotation) if a is not type(None)]
        if len(rest) == 1:
            return rest[0]
    return annotation


def _is_model(annotation: Any) -> TypeGuard[type[BaseModel]]:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def _field_paths(model: type[BaseModel], prefix: str = "") -> Iterator[str]:
    for name, field in model.model_fields.items():
        yield prefix + name
        if _is_model(field.annotation):
            yield from _field_paths(field.annotation, f"{prefix}{name}.")


def _shown(value: Any, sep: str) -> str:
    if isinstance(value, _SEQUENCES):
        return sep.join(map(str, value)) if value else "none"
    return str(value)


class ModelArgs(Generic[M]):
    """The flags of one model's fields: ``add_to`` a parser, then ``build`` the model from the parsed namespace."""

    def __init__(self, model: type[M], *, flags: Mapping[str, str | Flag] | None = None,
                 include: Collection[str] | None = None, exclude: Collection[str] = ()) -> None:
        """``flags``: per dotted field path, a flag name or a Flag; ``include``/``exclude``: dotted field paths
        (a nested model's path covers its fields) that get flags or none."""
        self.model = model
        self._flags = {path: Flag((f,)) if isinstance(f, str) else f for path, f in (flags or {}).items()}
        self._include = None if include is None else set(include)
        self._exclude = set(exclude)
        self._nested_defaults: dict[str, BaseModel] = {}
        env_prefix = model.model_config.get("env_prefix")  # pydantic-settings: DUET_PORT and the like
        self.options = list(self._walk(model, "", "--", env_prefix if isinstance(env_prefix, str) else None, None))
        if unknown := set(self._flags) - set(_field_paths(model)):  # a typo would leave a flag silently unrenamed
            raise ValueError(f"{model.__name__} has no fields {sorted(unknown)} (named in flags)")

    def _selected(self, path: str) -> bool:
        parts = path.split(".")
        covering = {".".join(parts[:i]) for i in range(1, len(parts) + 1)}
        if covering & self._exclude:
            return False
        return (self._include is None or bool(covering & self._include)
                or any(p.startswith(path + ".") for p in self._include))

    def _walk(self, model: type[BaseModel], prefix: str, flag_prefix: str, env_prefix: str | None,
              parent_default: BaseModel | None) -> Iterator[_Option]:
        for name, field in model.model_fields.items():
            path = prefix + name
            if not self._selected(path):
                continue
            flag = self._flags.get(path, Flag())
            names = flag.names or (flag_prefix + name.replace("_", "-"),)
            default = field.default if parent_default is None else getattr(parent_default, name)
            if _is_model(field.annotation):
                if isinstance(default, BaseModel):
                    self._nested_defaults[path] = default
                nested_default = default if isinstance(default, BaseModel) else None
                yield from self._walk(field.annotation, path + ".", names[0] + "-", None, nested_default)
                continue
            env = f"{env_prefix}{name}".upper() if env_prefix is not None else None
            yield _Option(path, names, field, default, env)

    def add_to(self, parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
        for option in self.options:
            parser.add_argument(*option.names, dest=option.path, default=argparse.SUPPRESS,
                                help=self._help(option), **self._argument(option))

    def _argument(self, option: _Option) -> dict[str, Any]:
        flag = self._flags.get(option.path, Flag())
        annotation = _without_none(option.field.annotation)
        metavar = option.names[0].lstrip("-").replace("-", "_").upper()
        required = option.field.is_required() if flag.required is None else flag.required
        if annotation is bool:
            # a default-True switch needs a way off
            return {"action": argparse.BooleanOptionalAction if option.default is True else "store_true"}
        if get_origin(annotation) is Literal:
            choices = get_args(annotation)
            return {"choices": choices, "type": type(choices[0]), "required": required}
        if get_origin(annotation) in _SEQUENCES:
            # elements stay strings: the model converts and validates them
            if flag.nargs:
                return {"nargs": "+" if required else "*", "metavar": metavar, "required": required}
            return {"type": split_commas, "metavar": metavar, "required": required}
        if get_origin(annotation) is dict and _is_scalar(get_args(annotation)[1]):
            # name:value pairs; the model converts and validates the values
            return {"type": split_pairs, "metavar": "NAME:VALUE,...", "required": required}
        if annotation in (int, float, str):
            return {"type": annotation, "metavar": metavar, "required": required}
        if isinstance(annotation, type) and not _is_model(annotation):
            return {"metavar": metavar, "required": required}  # Path, enums, ...: the model parses the string
        raise TypeError(f"{self.model.__name__}.{option.path}: no flag for {option.field.annotation!r}; exclude it")

    def _help(self, option: _Option) -> str:
        flag = self._flags.get(option.path, Flag())
        text = flag.help if flag.help is not None else (option.field.description or "")
        notes = []
        sequence = get_origin(_without_none(option.field.annotation)) in _SEQUENCES
        if sequence and not flag.nargs:
            notes.append("comma-separated")
        if option.env:
            notes.append(f"env {option.env}")
        if option.default is not PydanticUndefined and option.default is not None and option.default is not False:
            notes.append(f"default: {_shown(option.default, ' ' if flag.nargs else ', ')}")
        if notes:
            text = f"{text} ({'; '.join(notes)})" if text else f"({'; '.join(notes)})"
        return text.replace("%", "%%")  # argparse %-formats help strings

    def given(self, args: argparse.Namespace) -> dict[str, Any]:
        """The values of the flags on the command line, by dotted field path."""
        present = vars(args)
        return {o.path: present[o.path] for o in self.options if o.path in present}

    def build(self, args: argparse.Namespace, **values: Any) -> M:
        """The model from the flags given over ``values`` (fields no flag set: derived, or fixed by the caller).

        Raises FlagError naming the flags (a ValueError: the CLIs report it and exit 2).
        """
        given = self.given(args)
        data: dict[str, Any] = dict(values)
        for path, value in given.items():
            *parents, leaf = path.split(".")
            target = data
            for depth, name in enumerate(parents):
                # fields of a nested model not given keep that model's default (not its class's)
                current = target.get(name, self._nested_defaults.get(".".join(parents[:depth + 1])))
                target[name] = dict(current.model_dump() if isinstance(current, BaseModel) else current or {})
                target = target[name]
            target[leaf] = value
        try:
            # the constructor, not model_validate: a settings model reads its environment there
            return self.model(**data)
        except ValidationError as e:
            raise FlagError(self._message(e, given)) from e

    def _message(self, error: ValidationError, given: Mapping[str, Any]) -> str:
        flags = {o.path: o.names[0] for o in self.options}
        problems = []
        for detail in error.errors():
            loc = [str(p) for p in detail["loc"]]
            paths = [".".join(loc[:i]) for i in range(len(loc), 0, -1)]
            # the flag given for this field (or for the sequence an element of which is wrong), else the field
            label = next((flags[p] for p in paths if p in given), ".".join(loc) or self.model.__name__)
            message = str(detail["ctx"]["error"]) if detail["type"] == "value_error" else detail["msg"]
            if detail["type"] not in ("value_error", "missing") and loc:
                message += f" (got {detail['input']!r})"
            problems.append(f"invalid {label}: {message}")
        return "; ".join(problems)
