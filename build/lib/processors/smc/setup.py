"""Trade setup, derived causally at the close of the bar (simple first rule, to be refined).

long  when this bar has a bullish trigger (a sweep of lows, or a bullish BOS/CHoCH) and no bearish
      one, and an open bullish OB or FVG lies with its bottom below the close (support). The support
      is the one with the highest top (nearest). entry = close; stop = min(support bottom, bar low if
      the trigger was a sweep, entry - min_stop_atr * ATR); target = entry + rr * (entry - stop).
short mirrored (open bearish OB/FVG with top above the close; stop above it).
flat  otherwise (entry = stop = target = 0.0).
"""
from __future__ import annotations

from typing import NamedTuple


class Setup(NamedTuple):
    side: str      # "long" | "short" | "flat"
    entry: float
    stop: float
    target: float


FLAT = Setup("flat", 0.0, 0.0, 0.0)


def derive_setup(bull: int, bear: int, c: float, h: float, l: float, atr: float,
                 sweep_bull: bool, sweep_bear: bool, fvgs, obs, rr: float, min_stop_atr: float) -> Setup:
    """bull/bear: trigger flags; fvgs/obs: open zones [dir, top, bottom, ...]."""
    if bull and not bear:
        best = None
        for z in fvgs:
            if z[0] == 1 and z[2] < c and (best is None or z[1] >= best[1]):
                best = z
        for z in obs:
            if z[0] == 1 and z[2] < c and (best is None or z[1] >= best[1]):
                best = z
        if best is None:
            return FLAT
        stop = best[2]
        if sweep_bull and l < stop:
            stop = l
        floor = c - min_stop_atr * atr
        if floor < stop:
            stop = floor
        return Setup("long", c, stop, c + rr * (c - stop))
    if bear and not bull:
        best = None
        for z in fvgs:
            if z[0] == -1 and z[1] > c and (best is None or z[2] <= best[2]):
                best = z
        for z in obs:
            if z[0] == -1 and z[1] > c and (best is None or z[2] <= best[2]):
                best = z
        if best is None:
            return FLAT
        stop = best[1]
        if sweep_bear and h > stop:
            stop = h
        ceil = c + min_stop_atr * atr
        if ceil > stop:
            stop = ceil
        return Setup("short", c, stop, c - rr * (stop - c))
    return FLAT
