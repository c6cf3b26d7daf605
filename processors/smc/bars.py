"""Bar input, validation and the BadBar exception."""
from __future__ import annotations

import math
from typing import Any, NamedTuple


class BadBar(ValueError):
    """A bar that violates OHLCV invariants; the engine state is unchanged when this is raised."""


class Bar(NamedTuple):
    open_time: int   # ms UTC
    open: float
    high: float
    low: float
    close: float
    volume: float


FIELDS = ("open_time", "open", "high", "low", "close", "volume")


def as_bar(bar: Any) -> Bar:
    """Accept a Bar, a 6-sequence or a mapping with the FIELDS keys."""
    try:
        if isinstance(bar, dict):
            vals = [bar[f] for f in FIELDS]
        else:
            vals = list(bar)
            if len(vals) != 6:
                raise BadBar(f"bar must have 6 fields {FIELDS}, got {len(vals)}")
    except KeyError as e:
        raise BadBar(f"bar is missing field {e.args[0]!r}") from None
    except TypeError:
        raise BadBar(f"bar of type {type(bar).__name__} is not a sequence or mapping") from None
    t = vals[0]
    if isinstance(t, bool) or not isinstance(t, int):
        try:
            if isinstance(t, float) and not math.isfinite(t):
                raise BadBar(f"field 'open_time' is not finite: {t!r}")
            ti = int(t)
            if ti != t:
                raise BadBar(f"field 'open_time' must be an integer ms timestamp, got {t!r}")
            t = ti
        except (TypeError, ValueError):
            raise BadBar(f"field 'open_time' must be an integer ms timestamp, got {t!r}") from None
    out: list[float] = []
    for name, v in zip(FIELDS[1:], vals[1:]):
        try:
            f = float(v)
        except (TypeError, ValueError):
            raise BadBar(f"field {name!r} is not a number: {v!r}") from None
        out.append(f)
    return Bar(t, *out)


def validate_bar(bar: Bar, last_open_time: int | None) -> None:
    """Raise BadBar naming the field and value; pure (no state change)."""
    t, o, h, l, c, v = bar
    for name, x in zip(FIELDS[1:], (o, h, l, c, v)):
        if not math.isfinite(x):
            raise BadBar(f"field {name!r} is not finite: {x!r} (open_time={t})")
    if h < o or h < c:
        raise BadBar(f"field 'high'={h!r} is below max(open, close)={max(o, c)!r} (open_time={t})")
    if l > o or l > c:
        raise BadBar(f"field 'low'={l!r} is above min(open, close)={min(o, c)!r} (open_time={t})")
    if v < 0:
        raise BadBar(f"field 'volume'={v!r} is negative (open_time={t})")
    if last_open_time is not None and t <= last_open_time:
        raise BadBar(f"field 'open_time'={t} is not after the previous bar's open_time={last_open_time}")
