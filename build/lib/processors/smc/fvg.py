"""Fair value gaps: causal detection at the gap's third bar, and mitigation of open gaps.

Bullish FVG at bar t: high[t-2] < low[t] and bar t-1 closed up; zone [high[t-2], low[t]].
Bearish FVG at bar t: low[t-2] > high[t] and bar t-1 closed down; zone [high[t], low[t-2]].
The smartmoneyconcepts package marks the same gap at index t-1 (it reads bar t via shift(-1)).
Mitigation: the first bar j >= t+1 with low[j] <= top (bull) / high[j] >= bottom (bear); the
package's MitigatedIndex starts its scan at i+2 == t+1, so the index is the same bar.
"""
from __future__ import annotations

import numpy as np


def detect_fvg(o1: float, c1: float, h2: float, l2: float, h0: float, l0: float):
    """(dir, top, bottom) for bars t-2 (h2, l2), t-1 (o1, c1), t (h0, l0); dir 0 when no gap."""
    if h2 < l0 and c1 > o1:
        return 1, l0, h2
    if l2 > h0 and c1 < o1:
        return -1, l2, h0
    return 0, 0.0, 0.0


def detect_fvg_vector(o, h, l, c):
    """Vectorised detect_fvg over whole arrays -> (dir int8, top, bottom)."""
    n = len(o)
    d = np.zeros(n, dtype=np.int8)
    top = np.zeros(n)
    bot = np.zeros(n)
    if n < 3:
        return d, top, bot
    bull = (h[:-2] < l[2:]) & (c[1:-1] > o[1:-1])
    bear = (l[:-2] > h[2:]) & (c[1:-1] < o[1:-1])
    d[2:] = np.where(bull, 1, np.where(bear, -1, 0))
    top[2:] = np.where(bull, l[2:], np.where(bear, l[:-2], 0.0))
    bot[2:] = np.where(bull, h[:-2], np.where(bear, h[2:], 0.0))
    return d, top, bot


class FvgBook:
    """Open (unmitigated) gaps, oldest first, at most `cap` (the oldest is dropped)."""
    __slots__ = ("cap", "open")

    def __init__(self, cap: int):
        self.cap = cap
        self.open: list[list] = []   # [dir, top, bottom, created_bar]

    def mitigate(self, h: float, l: float) -> list | None:
        hit = [g for g in self.open if ((l <= g[1]) if g[0] == 1 else (h >= g[2]))]
        if not hit:
            return None
        self.open = [g for g in self.open if not ((l <= g[1]) if g[0] == 1 else (h >= g[2]))]
        return [{"dir": g[0], "top": g[1], "bottom": g[2], "created": g[3]} for g in hit]

    def add(self, d: int, top: float, bottom: float, t: int) -> None:
        self.open.append([d, top, bottom, t])
        if len(self.open) > self.cap:
            del self.open[0]

    def nearest(self, c: float):
        """(size, distance) of the open gap nearest to price c (ties: most recent); (0, -1) when none."""
        best_d = -1.0
        size = 0.0
        for g in self.open:
            top, bot = g[1], g[2]
            dist = bot - c if c < bot else (c - top if c > top else 0.0)
            if best_d < 0.0 or dist <= best_d:
                best_d = dist
                size = top - bot
        return size, best_d
