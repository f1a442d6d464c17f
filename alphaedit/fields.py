"""Validation derived from dataclass fields: one source of truth for what a config value may be.

A frozen config dataclass states each field's type (``int``, ``float``, ``str``, ``bool``,
``None`` unions, ``Literal[...]``, ``tuple[X, ...]``, ``Mapping[K, V]``, nested dataclasses) and,
where a range matters, a bound in ``Annotated[int, Range(ge=1)]``. :func:`value_problems` checks
one value against such a type, :func:`instance_problems` every field of a built instance, and
:func:`from_raw` builds a dataclass from a raw mapping (YAML), reporting every problem at once:
unknown and missing keys, wrong types, values outside a ``Literal`` or a bound, and non-finite
floats (NaN and inf are never valid hyper-parameters).

No numeric coercion happens (an ``int`` stays an ``int`` in a ``float`` field), so a config's hash
is that of the values as written; only lists become tuples and mappings become nested dataclasses.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import types
import typing
from collections.abc import Mapping
from typing import Annotated, Any, Literal, Union


@dataclasses.dataclass(frozen=True)
class Range:
    """Bounds of a number field (``Annotated[int, Range(ge=1)]``)."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None

    def problem(self, value: float) -> str | None:
        if self.ge is not None and value < self.ge:
            return f"must be >= {self.ge:g}, got {value!r}"
        if self.gt is not None and value <= self.gt:
            return f"must be > {self.gt:g}, got {value!r}"
        if self.le is not None and value > self.le:
            return f"must be <= {self.le:g}, got {value!r}"
        return None


@dataclasses.dataclass(frozen=True)
class NonEmpty:
    """A tuple field that needs at least one element (``Annotated[tuple[int, ...], NonEmpty()]``)."""


@functools.cache
def field_types(cls: type) -> dict[str, Any]:
    """The resolved type hints of a dataclass's fields, ``Annotated`` extras kept."""
    return typing.get_type_hints(cls, include_extras=True)


def describe(tp: Any) -> str:
    """A type hint in words, for error messages."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Annotated:
        return describe(args[0])
    if origin in (Union, types.UnionType):
        return " or ".join(describe(a) for a in args)
    if origin is Literal:
        return f"one of {list(args)}"
    if origin is tuple:
        return f"a list of {describe(args[0])}" if args else "a list"
    if origin in (dict, Mapping) or tp in (dict, Mapping):
        return "a mapping"
    if dataclasses.is_dataclass(tp):
        return f"a mapping of {tp.__name__} fields"
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false",
            type(None): "null", Any: "anything"}.get(tp, getattr(tp, "__name__", str(tp)))


def _is_tuple_type(tp: Any) -> bool:
    return typing.get_origin(tp) is tuple


def _strip(tp: Any) -> tuple[Any, tuple[Any, ...]]:
    """(base type, Annotated metadata)."""
    if typing.get_origin(tp) is Annotated:
        base, *meta = typing.get_args(tp)
        return base, tuple(meta)
    return tp, ()


def value_problems(tp: Any, value: Any, where: str) -> list[str]:
    """Every way ``value`` fails type hint ``tp`` (empty when it fits), each naming ``where``."""
    base, meta = _strip(tp)
    problems = _base_problems(base, value, where)
    if problems:
        return problems
    for m in meta:
        if isinstance(m, Range) and isinstance(value, int | float) and not isinstance(value, bool):
            msg = m.problem(value)
            if msg:
                problems.append(f"{where}: {msg}")
        if isinstance(m, NonEmpty) and isinstance(value, list | tuple) and not value:
            problems.append(f"{where}: must not be empty")
    return problems


def _base_problems(tp: Any, value: Any, where: str) -> list[str]:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return []
    if origin in (Union, types.UnionType):
        per_arg = [value_problems(a, value, where) for a in args]
        if any(not p for p in per_arg):
            return []
        # one alternative matched the kind of value but not its range: say that, not "expected X or Y"
        specific = [p for a, p in zip(args, per_arg, strict=True) if _kind_matches(a, value)]
        return specific[0] if specific else [f"{where}: expected {describe(tp)}, got {value!r}"]
    if origin is Literal:
        return [] if value in args and not isinstance(value, bool) else [
            f"{where}: {value!r} is not one of {list(args)}"]
    if origin is tuple:
        items = value if isinstance(value, list | tuple) else [value]
        elem_types = [args[0]] * len(items) if len(args) == 2 and args[1] is Ellipsis else list(args)
        if len(elem_types) != len(items):
            return [f"{where}: expected {len(elem_types)} items, got {len(items)}"]
        return [p for i, (t, v) in enumerate(zip(elem_types, items, strict=True))
                for p in value_problems(t, v, f"{where}.{i}")]
    if origin in (dict, Mapping) or tp in (dict, Mapping):
        if not isinstance(value, Mapping):
            return [f"{where}: expected a mapping, got {value!r}"]
        if not args:
            return []
        return [p for k, v in value.items()
                for p in value_problems(args[0], k, f"{where} key {k!r}") + value_problems(args[1], v, f"{where}.{k}")]
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return instance_problems(value, where)
        if not isinstance(value, Mapping):
            return [f"{where}: expected {describe(tp)}, got {value!r}"]
        return from_raw(tp, value, where)[1]
    if tp is type(None):
        return [] if value is None else [f"{where}: expected null, got {value!r}"]
    if tp is bool:
        return [] if isinstance(value, bool) else [f"{where}: expected true or false, got {value!r}"]
    if tp is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
        return [] if ok else [f"{where}: expected an integer, got {value!r}"]
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            return [f"{where}: expected a number, got {value!r}"]
        return [] if math.isfinite(value) else [f"{where}: must be a finite number, got {value!r}"]
    if isinstance(tp, type):
        return [] if isinstance(value, tp) else [f"{where}: expected {describe(tp)}, got {value!r}"]
    return []


def _kind_matches(tp: Any, value: Any) -> bool:
    """Whether ``value`` is of the right kind for ``tp`` ignoring ranges (for union messages)."""
    base, _ = _strip(tp)
    if base is type(None):
        return value is None
    if base is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if base is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return False


def convert(tp: Any, value: Any) -> Any:
    """A raw value (already checked) as the field holds it: lists as tuples, mappings as dataclasses."""
    base, _ = _strip(tp)
    origin, args = typing.get_origin(base), typing.get_args(base)
    if origin in (Union, types.UnionType):
        for a in args:
            if not value_problems(a, value, ""):
                return convert(a, value)
        return value
    if origin is tuple:
        items = value if isinstance(value, list | tuple) else [value]
        elem_types = [args[0]] * len(items) if len(args) == 2 and args[1] is Ellipsis else list(args)
        return tuple(convert(t, v) for t, v in zip(elem_types, items, strict=True))
    if dataclasses.is_dataclass(base) and isinstance(value, Mapping):
        built, _ = from_raw(base, value, "")
        return built
    return value


def from_raw(cls: type, raw: Mapping[str, Any], where: str = "") -> tuple[Any, list[str]]:
    """``(instance or None, problems)``: ``cls`` built from ``raw`` after checking every field.

    Unknown keys, missing required fields and every field's type, ``Literal`` and bounds are all
    checked before anything is built, so the problems list is complete. ``where`` prefixes the
    field names (``models.0``).
    """
    prefix = f"{where}." if where else ""
    if not isinstance(raw, Mapping):
        return None, [f"{where or cls.__name__}: expected {describe(cls)}, got {raw!r}"]
    hints = field_types(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    problems = [f"{prefix}{key}: unknown key (known: {sorted(fields)})" for key in raw if key not in fields]
    values: dict[str, Any] = {}
    for name, f in fields.items():
        if name not in raw:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                problems.append(f"{prefix}{name}: required")
            continue
        field_problems = value_problems(hints[name], raw[name], f"{prefix}{name}")
        problems += field_problems
        if not field_problems:
            values[name] = convert(hints[name], raw[name])
    if problems:
        return None, problems
    try:
        return cls(**values), []
    except (TypeError, ValueError) as exc:  # the dataclass's own cross-field invariants
        return None, [f"{where or cls.__name__}: {exc}"]


def instance_problems(obj: Any, where: str | None = None) -> list[str]:
    """Every field of a built dataclass ``obj`` checked against its type hint."""
    cls = type(obj)
    prefix = f"{where if where is not None else cls.__name__}."
    hints = field_types(cls)
    return [p for f in dataclasses.fields(obj)
            for p in value_problems(hints[f.name], getattr(obj, f.name), f"{prefix}{f.name}")]
