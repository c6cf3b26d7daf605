"""Liquidity levels and sweeps.

Every emitted swing high (low) becomes a tracked level. A new swing within cluster_atr * ATR of a
tracked same-side level joins it (count += 1; level = the more extreme one) - equal highs/lows.
At each bar, for tracked highs L: high > L and close <= L -> sweep (wick beyond, close back inside);
close > L -> broken. Either removes the level. Lows mirrored. A sweep of highs has dir -1 (bearish
signal), of lows dir +1. The package instead groups swings within 1% of the whole frame's range
(lookahead) and reports the first bar beyond the group; see README for the comparison.
"""
from __future__ import annotations


class LevelBook:
    __slots__ = ("cap", "highs", "lows")

    def __init__(self, cap: int):
        self.cap = cap
        self.highs: list[list] = []   # [level, count, pivot]
        self.lows: list[list] = []

    def sweep(self, h: float, l: float, c: float) -> list | None:
        out = None
        if self.highs:
            hit = [x for x in self.highs if h > x[0]]
            if hit:
                self.highs = [x for x in self.highs if not h > x[0]]
                swept = [x for x in hit if c <= x[0]]
                if swept:
                    top = max(swept, key=lambda x: x[0])
                    out = [{"dir": -1, "side": "high", "level": top[0], "count": sum(x[1] for x in swept),
                            "pivot": top[2]}]
        if self.lows:
            hit = [x for x in self.lows if l < x[0]]
            if hit:
                self.lows = [x for x in self.lows if not l < x[0]]
                swept = [x for x in hit if c >= x[0]]
                if swept:
                    bot = min(swept, key=lambda x: x[0])
                    ev = {"dir": 1, "side": "low", "level": bot[0], "count": sum(x[1] for x in swept),
                          "pivot": bot[2]}
                    out = [ev] if out is None else out + [ev]
        return out

    def add(self, side: int, level: float, pivot: int, tol: float) -> None:
        book = self.highs if side == 1 else self.lows
        for x in book:
            if abs(x[0] - level) <= tol:
                x[1] += 1
                if (level > x[0]) if side == 1 else (level < x[0]):
                    x[0] = level
                    x[2] = pivot
                return
        book.append([level, 1, pivot])
        if len(book) > self.cap:
            del book[0]

    def nearest_distance(self, c: float) -> float:
        best = -1.0
        for x in self.highs:
            d = abs(x[0] - c)
            if best < 0.0 or d < best:
                best = d
        for x in self.lows:
            d = abs(x[0] - c)
            if best < 0.0 or d < best:
                best = d
        return best
