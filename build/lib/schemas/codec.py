"""Generic, strict JSON codec for the message dataclasses.

Every message type is a slotted dataclass; `encode` writes it with orjson (field order = declaration
order, so bytes are deterministic), `decode_as` checks presence and type of every field and then the
type's own invariants. One mechanism for all types keeps the decoders consistent.
"""
from __future__ import annotations

import dataclasses
import json
import math
import typing
from typing import Any, Callable, TypeVar

import orjson

from schemas.errors import SchemaError

T = TypeVar("T")

_FIELD_SPECS: dict[type, tuple[tuple[str, Any, bool], ...]] = {}
_FAST_SPECS: dict[type, tuple[tuple[str, type], ...] | None] = {}
_SCALARS = (float, int, str, bool)


def _spec(cls: type) -> tuple[tuple[str, Any, bool], ...]:
    spec = _FIELD_SPECS.get(cls)
    if spec is None:
        hints = typing.get_type_hints(cls)
        out = []
        for f in dataclasses.fields(cls):
            has_default = f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
            out.append((f.name, hints[f.name], has_default))
        spec = tuple(out)
        _FIELD_SPECS[cls] = spec
    return spec


def _fast_spec(cls: type) -> tuple[tuple[str, ...], tuple[type, ...]] | None:
    """(field names, exact types) when every field is a scalar, else None (no fast path for this type)."""
    if cls not in _FAST_SPECS:
        spec = _spec(cls)
        _FAST_SPECS[cls] = ((tuple(n for n, _, _ in spec), tuple(h for _, h, _ in spec))
                            if all(hint in _SCALARS for _, hint, _ in spec) else None)
    return _FAST_SPECS[cls]


def _is_exact(obj: dict, fast: tuple[tuple[str, ...], tuple[type, ...]], parsed: bool) -> bool:
    """Every field present, in declaration order, with exactly its type (no int for a float, no bool for an
    int), and floats finite (always so when orjson parsed them: it refuses NaN and infinities)."""
    names, types = fast
    if tuple(obj) != names or tuple(map(type, obj.values())) != types:
        return False
    return parsed or all(math.isfinite(v) for v in obj.values() if type(v) is float)


def encode(msg: Any) -> bytes:
    """orjson bytes of a message dataclass; NaN/inf are refused (JSON has no such numbers)."""
    return orjson.dumps(msg)


def _check(type_name: str, name: str, hint: Any, value: Any) -> Any:
    if hint is float:
        # ints are valid JSON numbers for float fields; bools are not numbers here.
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise SchemaError(type_name, name, value, "expected a number")
        value = float(value)
        if not math.isfinite(value):
            raise SchemaError(type_name, name, value, "not finite")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise SchemaError(type_name, name, value, "expected an integer")
        return value
    if hint is str:
        if not isinstance(value, str):
            raise SchemaError(type_name, name, value, "expected a string")
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise SchemaError(type_name, name, value, "expected true/false")
        return value
    origin = typing.get_origin(hint)
    if hint is dict or origin is dict:
        if not isinstance(value, dict):
            raise SchemaError(type_name, name, value, "expected an object")
        return value
    if origin is list or origin is tuple:
        if not isinstance(value, list):
            raise SchemaError(type_name, name, value, "expected an array")
        args = typing.get_args(hint)
        if args and args[0] is float:
            return [_check(type_name, f"{name}[{i}]", float, v) for i, v in enumerate(value)]
        return value
    return value


_NON_FINITE = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


def _with_non_finite(raw: bytes | str) -> Any:
    """The object of a payload orjson refused only for NaN/Infinity tokens (the field checks then name
    the field), else None: such a payload is malformed JSON."""
    try:
        return json.loads(raw, parse_constant=_NON_FINITE.__getitem__)
    except (ValueError, KeyError, TypeError):
        return None


def decode_as(cls: type[T], raw: bytes | str | dict, validate: Callable[[T], None] | None = None) -> T:
    """Decode and validate one message; raises SchemaError naming the field and the value."""
    type_name = cls.__name__
    finite = False    # orjson refuses NaN and infinities: what it parsed needs no finiteness check
    if isinstance(raw, dict):
        obj = raw
    else:
        try:
            obj = orjson.loads(raw)
            finite = True
        except orjson.JSONDecodeError as exc:
            obj = _with_non_finite(raw)
            if obj is None:
                raise SchemaError(type_name, "<payload>", raw[:60] if raw else raw, f"malformed JSON ({exc})") from None
    if not isinstance(obj, dict):
        raise SchemaError(type_name, "<payload>", obj, "expected a JSON object")
    fast = _fast_spec(cls)
    if fast is not None and _is_exact(obj, fast, parsed=finite):
        # what our own encoders write: nothing to coerce, so skip the per-field checks (the slow path
        # below gives the same object, and the precise error for anything else)
        msg = cls(**obj)
        if validate is not None:
            validate(msg)
        return msg
    spec = _spec(cls)
    if len(obj) > len(spec) or not obj.keys() <= {n for n, _, _ in spec}:
        known = {n for n, _, _ in spec}
        extra = next(k for k in obj if k not in known)
        raise SchemaError(type_name, str(extra)[:60], obj[extra], "unknown field")
    kwargs = {}
    for name, hint, has_default in spec:
        if name not in obj:
            if has_default:
                continue
            raise SchemaError(type_name, name, None, "missing")
        kwargs[name] = _check(type_name, name, hint, obj[name])
    msg = cls(**kwargs)
    if validate is not None:
        validate(msg)
    return msg
