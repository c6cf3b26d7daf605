"""Heuristic confidence: the fallback score when no LightGBM model is present.

conf = 0.5
     + 0.10 * market_structure                       (signed: bullish structure raises it)
     + 0.15 if liquidity_grab != 0                   (a sweep within the last grab_decay_bars bars)
     + 0.10 if fvg_size_atr > 1/3                    (nearest open FVG larger than 1 ATR)
     + 0.10 if ob_proximity < 0.5                    (price within 1.5 ATR of an open OB)
     + 0.05 if d * momentum_atr > tanh(0.3)          (momentum > 0.3 ATR in direction d)
     + rsi zone: with d = +1: +0.05 if 50 <= RSI <= 70, -0.05 if RSI > 80;
                 with d = -1: +0.05 if 30 <= RSI <= 50, -0.05 if RSI < 20; else 0
clipped to [0, 1]; d = +1 if market_structure >= 0 else -1 (the prevailing side).
"""
from __future__ import annotations

import math

import numpy as np

_MOM = math.tanh(0.3)
_FVG = 1.0 / 3.0


def heuristic_confidence(ms: float, grab: float, fvg_size_atr: float, ob_prox: float, momentum: float,
                         rsi01: float) -> float:
    d = 1.0 if ms >= 0.0 else -1.0
    conf = 0.5 + 0.1 * ms
    if grab != 0.0:
        conf += 0.15
    if fvg_size_atr > _FVG:
        conf += 0.1
    if ob_prox < 0.5:
        conf += 0.1
    if d * momentum > _MOM:
        conf += 0.05
    r = rsi01 * 100.0
    if d > 0.0:
        if 50.0 <= r <= 70.0:
            conf += 0.05
        elif r > 80.0:
            conf -= 0.05
    else:
        if 30.0 <= r <= 50.0:
            conf += 0.05
        elif r < 20.0:
            conf -= 0.05
    return 0.0 if conf < 0.0 else (1.0 if conf > 1.0 else conf)


def heuristic_confidence_vector(ms, grab, fvg_size_atr, ob_prox, momentum, rsi01):
    ms = np.asarray(ms, dtype=float)
    d = np.where(ms >= 0.0, 1.0, -1.0)
    conf = 0.5 + 0.1 * ms
    conf = conf + np.where(np.asarray(grab) != 0.0, 0.15, 0.0)
    conf = conf + np.where(np.asarray(fvg_size_atr) > _FVG, 0.1, 0.0)
    conf = conf + np.where(np.asarray(ob_prox) < 0.5, 0.1, 0.0)
    conf = conf + np.where(d * np.asarray(momentum) > _MOM, 0.05, 0.0)
    r = np.asarray(rsi01) * 100.0
    up = np.where((r >= 50.0) & (r <= 70.0), 0.05, np.where(r > 80.0, -0.05, 0.0))
    dn = np.where((r >= 30.0) & (r <= 50.0), 0.05, np.where(r < 20.0, -0.05, 0.0))
    conf = conf + np.where(d > 0.0, up, dn)
    return np.clip(conf, 0.0, 1.0)
