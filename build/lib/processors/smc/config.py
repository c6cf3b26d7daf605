"""Engine configuration: one frozen dataclass, serialisable as a plain dict."""
from __future__ import annotations

from dataclasses import asdict, dataclass

_DICTS: dict = {}   # SmcConfig -> its dict: a state snapshot per symbol per batch must not pay for asdict()


@dataclass(frozen=True)
class SmcConfig:
    swing_length: int = 5          # N: pivot = extreme of [p-N+1, p+N]; confirmed at bar p+N (5 reproduces the package's stored swings)
    atr_period: int = 14
    rsi_period: int = 14
    max_open_fvgs: int = 20        # bounded state: oldest open FVG is dropped (no mitigation event for it afterwards)
    max_open_obs: int = 20
    max_levels: int = 20           # per side (highs / lows) tracked for sweeps
    cluster_atr: float = 0.1       # equal highs/lows: within cluster_atr * ATR of a tracked level
    ob_require_down_candle: bool = True   # DESIGN: the *down* candle with the lowest low (fallback: any candle)
    momentum_lookback: int = 5
    volume_window: int = 20
    grab_decay_bars: int = 5
    rr: float = 2.0
    min_stop_atr: float = 0.5
    interval_ms: int = 60_000      # base bar interval (SymbolState only)
    htf_factor: int = 5            # HTF = htf_factor * interval_ms on the UTC grid from epoch

    def to_dict(self) -> dict:
        d = _DICTS.get(self)
        if d is None:
            d = _DICTS[self] = asdict(self)
        return dict(d)   # a copy: callers may edit theirs

    @classmethod
    def from_dict(cls, d: dict) -> "SmcConfig":
        return cls(**d)

    def buffer_len(self) -> int:
        # bars kept: the 2N swing window (it also covers the bars after a pivot for the OB trackers) and the 3 FVG bars
        return max(2 * self.swing_length, 3)
