"""Incremental SMC engine: one bar in, one BarOutput out, O(1) amortised, bounded state, bytes round trip."""
from __future__ import annotations

from collections import deque
from typing import Any, NamedTuple

import orjson

from .bars import Bar, as_bar, validate_bar
from .config import SmcConfig
from .core import DetectorCore
from .features import features_scalar, trailing_mean
from .indicators import AtrState, RsiState
from .setup import Setup

_STATE_VERSION = 1


class BarOutput(NamedTuple):
    timeframe: str
    open_time: int
    open: float
    high: float
    low: float
    close: float
    volume: float
    atr: float            # TA-Lib ATR; NaN during warm-up
    rsi: float            # TA-Lib RSI; NaN during warm-up
    events: dict          # SMC events decided at this bar (JSON-serialisable); {} when none
    features: tuple       # 12 floats, FEATURE_NAMES order
    setup: Setup

    def events_json(self) -> bytes:
        return orjson.dumps(self.events, option=orjson.OPT_SORT_KEYS)


def timeframe_label(interval_ms: int) -> str:
    for unit, ms in (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000)):
        if interval_ms % ms == 0:
            return f"{interval_ms // ms}{unit}"
    return f"{interval_ms}ms"


class SmcEngine:
    """Per-timeframe engine. update(bar, htf_trend=0) -> BarOutput."""

    __slots__ = ("cfg", "timeframe", "last_time", "atr", "rsi", "core", "closes", "vols")

    def __init__(self, config: SmcConfig | None = None, timeframe: str | None = None):
        cfg = config or SmcConfig()
        self.cfg = cfg
        self.timeframe = timeframe or timeframe_label(cfg.interval_ms)
        self.last_time: int | None = None
        self.atr = AtrState(cfg.atr_period)
        self.rsi = RsiState(cfg.rsi_period)
        self.core = DetectorCore(cfg)
        self.closes: deque[float] = deque(maxlen=cfg.momentum_lookback + 1)
        self.vols: deque[float] = deque(maxlen=cfg.volume_window)

    @property
    def trend(self) -> int:
        return self.core.structure.trend

    def update(self, bar: Any, htf_trend: int = 0) -> BarOutput:
        b = bar if type(bar) is Bar else as_bar(bar)
        validate_bar(b, self.last_time)          # raises before any state changes
        return self.update_validated(b, htf_trend)

    def update_validated(self, b: Bar, htf_trend: int = 0) -> BarOutput:
        """update() for a Bar the caller already passed through validate_bar(b, self.last_time)."""
        t, o, h, l, c, v = b
        self.last_time = t
        atr, atr_eff = self.atr.update(h, l, c)
        rsi = self.rsi.update(c)
        ev, snap, setup = self.core.step(t, o, h, l, c, v, atr_eff)
        closes = self.closes
        closes.append(c)
        close_k = closes[0] if len(closes) == closes.maxlen else None
        vols = self.vols
        vols.append(v)
        vol_mean = trailing_mean(vols)
        feats = features_scalar(o, c, v, atr_eff, rsi, close_k, vol_mean, htf_trend, snap, self.cfg.grab_decay_bars)
        return BarOutput(self.timeframe, t, o, h, l, c, v,
                         float("nan") if atr is None else atr, float("nan") if rsi is None else rsi,
                         ev or {}, feats, setup)

    # -- serialisation
    def to_state(self) -> list:
        return [_STATE_VERSION, self.cfg.to_dict(), self.timeframe, self.last_time, self.atr.to_state(),
                self.rsi.to_state(), self.core.to_state(), list(self.closes), list(self.vols)]

    @classmethod
    def from_state(cls, s: list) -> "SmcEngine":
        if s[0] != _STATE_VERSION:
            raise ValueError(f"unsupported SmcEngine state version {s[0]}")
        cfg = SmcConfig.from_dict(s[1])
        e = cls(cfg, s[2])
        e.last_time = s[3]
        e.atr = AtrState.from_state(s[4])
        e.rsi = RsiState.from_state(s[5])
        e.core = DetectorCore.from_state(cfg, s[6])
        e.closes.extend(s[7])
        e.vols.extend(s[8])
        return e

    def to_bytes(self) -> bytes:
        return orjson.dumps(self.to_state())

    @classmethod
    def from_bytes(cls, data: bytes) -> "SmcEngine":
        return cls.from_state(orjson.loads(data))
