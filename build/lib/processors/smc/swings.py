"""Swing highs/lows: causal confirmation N bars late, and the reference's same-side dedup as a stream.

Candidate at pivot p >= 2N-1 (decided at bar t = p + N): high[p] == max(high[p-N+1 .. p+N]) -> high;
else low[p] == min(low[p-N+1 .. p+N]) -> low (the package's np.where gives highs priority).
The package computes the window as high.shift(-N).rolling(2N).max(), which is NaN until 2N shifted
values exist, so no pivot before index 2N-1 can be a swing there; we keep that warm-up.
The package then repeatedly deletes the less extreme of consecutive same-side swings; the
survivor of a run of same-side candidates is its most extreme one (earliest on ties).
Stream form (SwingRun): a candidate is emitted only when it opens a new run (side differs from the
previous emitted one) or is strictly more extreme than the current run's extreme; in the latter case
the event names the pivot it supersedes. Nothing already emitted is rewritten; the set of emitted,
never-superseded swings equals the package's swings (minus its bookends on the first/last bar).
"""
from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view


def swing_candidate(highs, lows, n: int) -> int:
    """highs/lows: the last 2N bars (oldest first); pivot at position N-1. 1, -1 or 0."""
    ph = highs[n - 1]
    if ph == max(highs):
        return 1
    if lows[n - 1] == min(lows):
        return -1
    return 0


def swing_candidate_vector(h, l, n: int):
    """side[t] for the pivot t-N, decided at bar t (0 before bar 2N-1)."""
    size = len(h)
    side = np.zeros(size, dtype=np.int8)
    w = 2 * n
    if size < w:
        return side
    hmax = sliding_window_view(h, w).max(axis=1)   # window k: bars k..k+2N-1, pivot k+N-1
    lmin = sliding_window_view(l, w).min(axis=1)
    ph = h[n - 1: size - n]
    pl = l[n - 1: size - n]
    side[w - 1:] = np.where(ph == hmax, 1, np.where(pl == lmin, -1, 0))
    side[: 3 * n - 1] = 0    # pivots before 2N-1 are never swings in the package (see module doc)
    return side


class SwingRun:
    """Dedup state: side/level/pivot of the current run's extreme."""
    __slots__ = ("side", "level", "pivot")

    def __init__(self):
        self.side = 0
        self.level = 0.0
        self.pivot = -1

    def offer(self, side: int, level: float, pivot: int):
        """Returns None (discarded) or the superseded pivot (-1 when it opens a new run)."""
        if side == self.side:
            if (level > self.level) if side == 1 else (level < self.level):
                old = self.pivot
                self.level, self.pivot = level, pivot
                return old
            return None
        self.side, self.level, self.pivot = side, level, pivot
        return -1

    def to_state(self) -> list:
        return [self.side, self.level, self.pivot]

    @classmethod
    def from_state(cls, s: list) -> "SwingRun":
        o = cls()
        o.side, o.level, o.pivot = s
        return o
