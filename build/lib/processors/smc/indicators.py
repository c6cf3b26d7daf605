"""Wilder ATR and RSI exactly as TA-Lib computes them (talib.ATR / talib.RSI, unstable period 0).

State machines on plain floats. TA-Lib's recurrences are reproduced operation by operation
(seed = arithmetic mean of the first `period` values, then (prev*(period-1) + x) / period) so the
results equal TA-Lib to rounding. Before warm-up the value is None (TA-Lib: NaN).

ATR: TR[0] is undefined in TA-Lib (no previous close); first ATR at bar index `period`.
`atr_eff` is what the detectors use for scale: ATR when ready, else the running mean of the true
ranges seen so far (TR[0] = high - low), so tolerances are defined from the first bar.
RSI: first value at bar index `period`; 0 when avg gain + avg loss == 0 (flat prices), as TA-Lib 0.6
(verified: a ramp of 1e-300 steps still gives 100 there, so its zero test is exact).
"""
from __future__ import annotations

class AtrState:
    __slots__ = ("period", "n", "prev_close", "tr_sum", "atr")

    def __init__(self, period: int = 14):
        self.period = period
        self.n = 0                  # bars seen
        self.prev_close = 0.0
        self.tr_sum = 0.0           # sum of TR[1..] during the seed; sum of all TR (incl. TR[0]=h-l) for atr_eff
        self.atr: float | None = None

    def update(self, h: float, l: float, c: float) -> tuple[float | None, float]:
        """Returns (atr or None, atr_eff)."""
        p = self.period
        n = self.n
        if n == 0:
            tr = h - l
            self.tr_sum = 0.0
            self.n = 1
            self.prev_close = c
            return None, tr
        pc = self.prev_close
        tr = h - l
        v2 = abs(pc - h)
        if v2 > tr:
            tr = v2
        v3 = abs(pc - l)
        if v3 > tr:
            tr = v3
        self.prev_close = c
        self.n = n + 1
        atr = self.atr
        if atr is None:
            self.tr_sum += tr
            if n == p:
                atr = self.tr_sum / p
                self.atr = atr
                return atr, atr
            # warm-up scale: mean of TR[1..n] (falls back to h-l of bar 0 only at n == 0)
            return None, self.tr_sum / n
        atr = atr * (p - 1)
        atr += tr
        atr /= p
        self.atr = atr
        return atr, atr

    def to_state(self) -> list:
        return [self.period, self.n, self.prev_close, self.tr_sum, self.atr]

    @classmethod
    def from_state(cls, s: list) -> "AtrState":
        o = cls(s[0])
        o.n, o.prev_close, o.tr_sum, o.atr = s[1], s[2], s[3], s[4]
        return o


class RsiState:
    __slots__ = ("period", "n", "prev", "gain", "loss", "rsi")

    def __init__(self, period: int = 14):
        self.period = period
        self.n = 0
        self.prev = 0.0
        self.gain = 0.0
        self.loss = 0.0
        self.rsi: float | None = None

    def update(self, c: float) -> float | None:
        p = self.period
        n = self.n
        self.n = n + 1
        if n == 0:
            self.prev = c
            return None
        d = c - self.prev
        self.prev = c
        if n < p:                   # seed accumulation
            if d < 0:
                self.loss -= d
            else:
                self.gain += d
            return None
        if n == p:
            if d < 0:
                self.loss -= d
            else:
                self.gain += d
            self.loss /= p
            self.gain /= p
        else:
            self.loss *= (p - 1)
            self.gain *= (p - 1)
            if d < 0:
                self.loss -= d
            else:
                self.gain += d
            self.loss /= p
            self.gain /= p
        s = self.gain + self.loss
        r = 100.0 * (self.gain / s) if s != 0.0 else 0.0
        self.rsi = r
        return r

    def to_state(self) -> list:
        return [self.period, self.n, self.prev, self.gain, self.loss, self.rsi]

    @classmethod
    def from_state(cls, s: list) -> "RsiState":
        o = cls(s[0])
        o.n, o.prev, o.gain, o.loss, o.rsi = s[1], s[2], s[3], s[4], s[5]
        return o
