"""Market structure: BOS / CHoCH at the bar whose close breaks the last unbroken confirmed swing.

State: trend in {-1, 0, 1}; the latest emitted swing high and swing low (each with a broken flag and
an ObTracker). A close above the unbroken swing high is a bullish break: BOS if trend was already
+1 (or 0: nothing to reverse yet), CHoCH if trend was -1; trend becomes +1. Bearish mirrored. If both
levels would break on one bar (only possible when the swing low sits above the swing high) the high
is taken first and the low is checked on later bars. A swing level is replaced by a newly emitted
same-side swing (new or superseding), which is unbroken.
"""
from __future__ import annotations

from .order_blocks import ObTracker


class Structure:
    __slots__ = ("trend", "hi", "lo", "hi_trk", "lo_trk")

    def __init__(self):
        self.trend = 0
        self.hi = None        # [pivot, time, level, broken]
        self.lo = None
        self.hi_trk = None
        self.lo_trk = None

    def check_break(self, c: float):
        """-> None or (kind, dir, swing, tracker) for a break by close c."""
        hi = self.hi
        if hi is not None and not hi[3] and c > hi[2]:
            hi[3] = True
            kind = "choch" if self.trend == -1 else "bos"
            self.trend = 1
            trk, self.hi_trk = self.hi_trk, None
            return kind, 1, hi, trk
        lo = self.lo
        if lo is not None and not lo[3] and c < lo[2]:
            lo[3] = True
            kind = "choch" if self.trend == 1 else "bos"
            self.trend = -1
            trk, self.lo_trk = self.lo_trk, None
            return kind, -1, lo, trk
        return None

    def push(self, b) -> None:
        if self.hi_trk is not None:
            self.hi_trk.push(b)
        if self.lo_trk is not None:
            self.lo_trk.push(b)

    def set_swing(self, side: int, pivot: int, time: int, level: float, bars_after) -> None:
        trk = ObTracker(side)
        for b in bars_after:
            trk.push(b)
        if side == 1:
            self.hi, self.hi_trk = [pivot, time, level, False], trk
        else:
            self.lo, self.lo_trk = [pivot, time, level, False], trk

    def to_state(self) -> list:
        return [self.trend, self.hi, self.lo,
                None if self.hi_trk is None else self.hi_trk.to_state(),
                None if self.lo_trk is None else self.lo_trk.to_state()]

    @classmethod
    def from_state(cls, s: list) -> "Structure":
        o = cls()
        o.trend, o.hi, o.lo = s[0], s[1], s[2]
        o.hi_trk = None if s[3] is None else ObTracker.from_state(s[3])
        o.lo_trk = None if s[4] is None else ObTracker.from_state(s[4])
        return o
