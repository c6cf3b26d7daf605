"""Order blocks: the candle tracker behind each active swing level, and the book of open OBs.

Bullish OB (on a bullish break of swing high p at bar t): among bars p+1 .. t-1, the down candle
(close < open) with the lowest low (ties: the later one); if there is none (or
ob_require_down_candle is False), the candle with the lowest low (the package's rule). Zone = that
candle's [low, high]. Bearish mirrored (up candle with the highest high).
strength = |close - open| of the OB candle / ATR at the break; volume_share = OB candle volume /
total volume of bars p+1 .. t-1. Mitigated at the first later bar that trades through the zone
(bull: low < bottom, bear: high > top), the package's non-close mitigation test.
"""
from __future__ import annotations

# bar tuples: (idx, time, open, high, low, close, volume)


class ObTracker:
    """Running best OB candle for one swing level (side 1: swing high -> bullish OB)."""
    __slots__ = ("side", "best_down", "best_any", "vol_sum")

    def __init__(self, side: int):
        self.side = side
        self.best_down = None
        self.best_any = None
        self.vol_sum = 0.0

    def push(self, b) -> None:
        if self.side == 1:   # lowest low, down candle preferred
            low = b[4]
            if b[5] < b[2] and (self.best_down is None or low <= self.best_down[4]):
                self.best_down = b
            if self.best_any is None or low <= self.best_any[4]:
                self.best_any = b
        else:                # highest high, up candle preferred
            high = b[3]
            if b[5] > b[2] and (self.best_down is None or high >= self.best_down[3]):
                self.best_down = b
            if self.best_any is None or high >= self.best_any[3]:
                self.best_any = b
        self.vol_sum += b[6]

    def candle(self, require_opposite: bool):
        if require_opposite and self.best_down is not None:
            return self.best_down
        return self.best_any

    def to_state(self) -> list:
        return [self.side, self.best_down, self.best_any, self.vol_sum]

    @classmethod
    def from_state(cls, s: list) -> "ObTracker":
        o = cls(s[0])
        o.best_down, o.best_any, o.vol_sum = s[1], s[2], s[3]
        return o


class ObBook:
    """Open OBs [dir, top, bottom, candle_idx], oldest first, at most `cap`."""
    __slots__ = ("cap", "open")

    def __init__(self, cap: int):
        self.cap = cap
        self.open: list[list] = []

    def mitigate(self, h: float, l: float) -> list | None:
        if not self.open:
            return None
        hit = [b for b in self.open if ((l < b[2]) if b[0] == 1 else (h > b[1]))]
        if not hit:
            return None
        self.open = [b for b in self.open if not ((l < b[2]) if b[0] == 1 else (h > b[1]))]
        return [{"dir": b[0], "top": b[1], "bottom": b[2], "index": b[3]} for b in hit]

    def add(self, d: int, top: float, bottom: float, idx: int) -> None:
        self.open.append([d, top, bottom, idx])
        if len(self.open) > self.cap:
            del self.open[0]

    def nearest_distance(self, c: float, reach: float):
        """(distance from c to the nearest open OB or -1.0, number of open OBs within `reach`)."""
        best = -1.0
        near = 0
        for b in self.open:
            top, bot = b[1], b[2]
            dist = bot - c if c < bot else (c - top if c > top else 0.0)
            if best < 0.0 or dist < best:
                best = dist
            if dist <= reach:
                near += 1
        return best, near
