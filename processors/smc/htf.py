"""Multi-timeframe: HTF bar aggregation on the UTC grid, and SymbolState (what a stream stores per symbol).

HTF period P = htf_factor * interval_ms; a base bar with open_time t belongs to bucket t // P * P.
An HTF bar is closed (emitted) when
  * the base bar that ends it arrives (open_time + interval_ms == bucket + P), or
  * a gap skipped that bar and the first base bar of a later bucket arrives (the partial HTF bar is
    closed then, at that bar's close, before the new bucket starts).
So at most two HTF bars close on one base bar (a gap-closed one and a one-bar bucket). The still-open
HTF bar at the end of the input is never emitted. The base engine sees the HTF trend after every HTF
bar closed at or before this base bar: no lookahead.
"""
from __future__ import annotations

from typing import Any

import orjson

from .bars import Bar, as_bar, validate_bar
from .config import SmcConfig
from .engine import BarOutput, SmcEngine, timeframe_label

_STATE_VERSION = 1


class HtfAggregator:
    __slots__ = ("interval", "period", "cur")

    def __init__(self, interval_ms: int, factor: int):
        self.interval = interval_ms
        self.period = interval_ms * factor
        self.cur = None     # [bucket, o, h, l, c, v]

    def push(self, t: int, o: float, h: float, l: float, c: float, v: float) -> list:
        """Add a base bar; returns the HTF bars closed at this bar (0, 1 or 2 Bar tuples)."""
        out = []
        bucket = t - t % self.period
        cur = self.cur
        if cur is not None and bucket != cur[0]:
            out.append(Bar(*cur))
            cur = None
        if cur is None:
            cur = [bucket, o, h, l, c, v]
        else:
            if h > cur[2]:
                cur[2] = h
            if l < cur[3]:
                cur[3] = l
            cur[4] = c
            cur[5] += v
        if t + self.interval == bucket + self.period:
            out.append(Bar(*cur))
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

    def to_bytes(self) -> bytes:
        return orjson.dumps([_STATE_VERSION, self.base.to_state(), self.agg.cur, self.htf.to_state()])

    @classmethod
    def from_bytes(cls, data: bytes) -> "SymbolState":
        s = orjson.loads(data)
        if s[0] != _STATE_VERSION:
            raise ValueError(f"unsupported SymbolState state version {s[0]}")
        base = SmcEngine.from_state(s[1])
        o = cls(base.cfg)
        o.base = base
        o.agg.cur = s[2]
        o.htf = SmcEngine.from_state(s[3])
        return o
