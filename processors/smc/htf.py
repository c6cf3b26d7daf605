"""Multi-timeframe: HTF bar aggregation on the UTC grid, and SymbolState (what a stream stores per symbol).

HTF period P = htf_factor * interval_ms; a base bar with open_time t belongs to bucket t // P * P.
An HTF bar is closed (emitted) when
  * the base bar that ends it arrives (open_time + interval_ms == bucket + P), or
  * a gap skipped that bar and the first base bar of a later bucket arrives (the partial HTF bar is
    closed then, at that bar's close, before the new bucket starts).
So at most two HTF bars close on one base bar (a gap-closed one and a one-bar bucket). The still-open
HTF bar at the end of the input is never emitted. The base engine sees the HTF trend after every HTF
bar closed at or before this base bar: no lookahead.

The HTF bar under construction (the "window") is [bucket, open, high, low, close, volume, last, bars]:
`last` is the open_time of the newest base bar folded in, so folding is idempotent (a bar at or before
`last` is already in it). The stream processors keep windows in a tumbling windowed Faust table and the
engines in SymbolState.to_bytes(), which therefore leaves the window out (see processors/app.py).
"""
from __future__ import annotations

from typing import Any

import orjson

from .bars import Bar, as_bar, validate_bar
from .config import SmcConfig
from .engine import BarOutput, SmcEngine, timeframe_label

def bucket_of(t, period: int):
    """(int or int array) The open time of the HTF bucket (UTC grid of `period` ms) that the base bar opening at t falls in."""
    return t - t % period


_STATE_VERSION = 2   # 1 carried the open HTF bar inside the state; 2 keeps it in the window table


def window_to_bytes(window: list) -> bytes:
    """An HTF window as the window table's value (self-describing JSON, readable by analytics tools)."""
    b, o, h, l, c, v, last, n = window
    return orjson.dumps({"open_time": b, "open": o, "high": h, "low": l, "close": c, "volume": v,
                         "last_open_time": last, "bars": n})


def window_from_bytes(data: bytes) -> list:
    d = orjson.loads(data)
    return [d["open_time"], d["open"], d["high"], d["low"], d["close"], d["volume"], d["last_open_time"], d["bars"]]


class HtfAggregator:
    __slots__ = ("interval", "period", "cur", "window")

    def __init__(self, interval_ms: int, factor: int):
        self.interval = interval_ms
        self.period = interval_ms * factor
        self.cur: list | None = None      # the open window (see the module doc), None when no HTF bar is open
        self.window: list | None = None   # the window the last push folded into (closed or not): what a table stores

    def open_bucket(self, last_time: int | None) -> int | None:
        """The bucket whose window is open after a base bar at last_time (None: none is open)."""
        if last_time is None or (last_time + self.interval) % self.period == 0:
            return None
        return bucket_of(last_time, self.period)

    def push(self, t: int, o: float, h: float, l: float, c: float, v: float) -> list:
        """Add a base bar; returns the HTF bars closed at this bar (0, 1 or 2 Bar tuples)."""
        out = []
        bucket = bucket_of(t, self.period)
        cur = self.cur
        if cur is not None and bucket != cur[0]:
            out.append(Bar(*cur[:6]))
            cur = None
        if cur is None:
            cur = [bucket, o, h, l, c, v, t, 1]
        elif t > cur[6]:    # else the window already holds this bar (it was stored ahead of the engines)
            if h > cur[2]:
                cur[2] = h
            if l < cur[3]:
                cur[3] = l
            cur[4] = c
            cur[5] += v
            cur[6] = t
            cur[7] += 1
        self.window = cur
        if t + self.interval == bucket + self.period:
            out.append(Bar(*cur[:6]))
            cur = None
        self.cur = cur
        return out


class SymbolState:
    """Base engine + HTF aggregator + HTF engine. update(bar) -> [base output, *closed HTF outputs]."""

    __slots__ = ("cfg", "base", "agg", "htf")

    def __init__(self, config: SmcConfig | None = None):
        cfg = config or SmcConfig()
        self.cfg = cfg
        self.base = SmcEngine(cfg, timeframe_label(cfg.interval_ms))
        self.agg = HtfAggregator(cfg.interval_ms, cfg.htf_factor)
        self.htf = SmcEngine(cfg, timeframe_label(cfg.interval_ms * cfg.htf_factor))

    def update(self, bar: Any) -> list[BarOutput]:
        b = bar if type(bar) is Bar else as_bar(bar)
        validate_bar(b, self.base.last_time)   # reject before the aggregator changes
        htf_out = [self.htf.update(x) for x in self.agg.push(*b)]
        return [self.base.update_validated(b, self.htf.trend), *htf_out]   # validated above

    @property
    def open_bucket(self) -> int | None:
        """The bucket of the open HTF window, the one from_bytes needs back (None: no window is open)."""
        return self.agg.open_bucket(self.base.last_time)

    @property
    def open_window(self) -> list | None:
        return self.agg.cur

    def to_bytes(self) -> bytes:
        """The engines' state; the open window is not in it (it lives in the window table: open_window)."""
        return orjson.dumps([_STATE_VERSION, self.base.to_state(), self.htf.to_state()])

    @classmethod
    def from_bytes(cls, data: bytes, open_window: list | None = None) -> "SymbolState":
        """open_window: the stored window of `open_bucket` (it may hold bars past the engines' last one,
        when the window was stored ahead of the state: those are not folded twice)."""
        s = orjson.loads(data)
        if s[0] == 1:           # the open window was in the state: [bucket, o, h, l, c, v]
            base, cur, htf = SmcEngine.from_state(s[1]), s[2], SmcEngine.from_state(s[3])
            step = base.cfg.interval_ms
            open_window = cur + [base.last_time, (base.last_time - cur[0]) // step + 1] if cur is not None else None
        elif s[0] == _STATE_VERSION:
            base, htf = SmcEngine.from_state(s[1]), SmcEngine.from_state(s[2])
        else:
            raise ValueError(f"unsupported SymbolState state version {s[0]}")
        o = cls(base.cfg)
        o.base = base
        o.htf = htf
        bucket = o.open_bucket
        if open_window is not None and open_window[0] != bucket:
            raise ValueError(f"SymbolState.from_bytes: open_window of bucket {open_window[0]} given, the open one is {bucket}")
        o.agg.cur = open_window
        return o
