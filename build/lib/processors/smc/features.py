"""The 12 model features, one formula each, in scalar (stream) and vector (batch) form.

A = max(atr_eff, 1e-12) (atr_eff: TA-Lib ATR, or the mean true range during warm-up).
vol_ratio = volume / mean(volume of the last volume_window bars incl. this one), 0 when the mean is 0.
 1 market_structure      = clip(0.75 * trend + 0.25 * htf_trend, -1, 1)      trend: BOS/CHoCH state; htf_trend from closed HTF bars
 2 order_blocks_count    = min(open OBs within 3 ATR of the close, 5) / 5    in [0, 1]
 3 institutional_candle  = sign(close - open) * clip(|close - open| / A / 2, 0, 1) * clip(vol_ratio / 2, 0, 1)   in [-1, 1]
 4 liquidity_grab        = sweep_dir * max(0, 1 - age / grab_decay_bars)     last sweep (net dir), age in bars; in [-1, 1]
 5 fvg_size_atr          = clip(size of the nearest open FVG / A / 3, 0, 1)   0 when none
 6 fvg_proximity         = clip(distance from close to the nearest open FVG / A / 3, 0, 1)   0 inside, 1 when none
 7 ob_proximity          = clip(distance from close to the nearest open OB / A / 3, 0, 1)    0 inside, 1 when none
 8 atr_normalized_volume = clip(vol_ratio / 3, 0, 1)
 9 rsi_14                = RSI / 100 (0.5 during warm-up)
10 momentum_atr          = tanh((close - close[t - k]) / A), k = momentum_lookback (0 while t < k)
11 time_to_next_level    = clip(distance to the nearest tracked liquidity level / A / 10, 0, 1)  ~ bars at 1 ATR/bar, /10; 1 when none
12 confidence_ensemble   = heuristic_confidence(1, 4, 5, 7, 10, 9)  (heuristic.py)
"""
from __future__ import annotations

import math

import numpy as np

from .heuristic import heuristic_confidence, heuristic_confidence_vector

FEATURE_NAMES = (
    "market_structure", "order_blocks_count", "institutional_candle", "liquidity_grab", "fvg_size_atr",
    "fvg_proximity", "ob_proximity", "atr_normalized_volume", "rsi_14", "momentum_atr",
    "time_to_next_level", "confidence_ensemble",
)


def _clip01(x: float) -> float:
    return 0.0 if x < 0.0 else (1.0 if x > 1.0 else x)


def features_scalar(o, c, v, atr, rsi, close_k, vol_mean, htf_trend, snap, decay) -> tuple:
    trend, n_near_obs, sweep_dir, sweep_age, fsize, fdist, odist, ldist = snap
    a = atr if atr > 1e-12 else 1e-12
    ms = 0.75 * trend + 0.25 * htf_trend
    ms = -1.0 if ms < -1.0 else (1.0 if ms > 1.0 else ms)
    obc = (n_near_obs if n_near_obs < 5 else 5) / 5.0
    vr = v / vol_mean if vol_mean > 0.0 else 0.0
    body = c - o
    sgn = (body > 0.0) - (body < 0.0)
    inst = sgn * _clip01(abs(body) / a / 2.0) * _clip01(vr / 2.0)
    grab = 0.0
    if sweep_age >= 0:
        w = 1.0 - sweep_age / decay
        grab = sweep_dir * w if w > 0.0 else 0.0
    fsz = _clip01(fsize / a / 3.0)
    fpx = 1.0 if fdist < 0.0 else _clip01(fdist / a / 3.0)
    opx = 1.0 if odist < 0.0 else _clip01(odist / a / 3.0)
    anv = _clip01(vr / 3.0)
    r = 0.5 if rsi is None else rsi / 100.0
    mom = 0.0 if close_k is None else math.tanh((c - close_k) / a)
    ttl = 1.0 if ldist < 0.0 else _clip01(ldist / a / 10.0)
    conf = heuristic_confidence(ms, grab, fsz, opx, mom, r)
    return (ms, obc, inst, grab, fsz, fpx, opx, anv, r, mom, ttl, conf)


def features_vector(o, c, v, atr, rsi, close_k, vol_mean, htf_trend, snap: dict, decay) -> np.ndarray:
    """All inputs are arrays (rsi/close_k: NaN where undefined); snap: SNAPSHOT_FIELDS -> arrays. -> (n, 12)."""
    a = np.where(atr > 1e-12, atr, 1e-12)
    ms = np.clip(0.75 * snap["trend"] + 0.25 * htf_trend, -1.0, 1.0)
    obc = np.minimum(snap["n_near_obs"], 5) / 5.0
    with np.errstate(divide="ignore", invalid="ignore"):
        vr = np.where(vol_mean > 0.0, v / np.where(vol_mean > 0.0, vol_mean, 1.0), 0.0)
    body = c - o
    inst = np.sign(body) * np.clip(np.abs(body) / a / 2.0, 0.0, 1.0) * np.clip(vr / 2.0, 0.0, 1.0)
    age = snap["sweep_age"]
    w = 1.0 - age / decay
    grab = np.where((age >= 0) & (w > 0.0), snap["sweep_dir"] * w, 0.0)
    fsz = np.clip(snap["fvg_size"] / a / 3.0, 0.0, 1.0)
    fd, od, ld = snap["fvg_dist"], snap["ob_dist"], snap["level_dist"]
    fpx = np.where(fd < 0.0, 1.0, np.clip(fd / a / 3.0, 0.0, 1.0))
    opx = np.where(od < 0.0, 1.0, np.clip(od / a / 3.0, 0.0, 1.0))
    anv = np.clip(vr / 3.0, 0.0, 1.0)
    r = np.where(np.isnan(rsi), 0.5, rsi / 100.0)
    mom = np.where(np.isnan(close_k), 0.0, np.tanh((c - np.nan_to_num(close_k)) / a))
    ttl = np.where(ld < 0.0, 1.0, np.clip(ld / a / 10.0, 0.0, 1.0))
    conf = heuristic_confidence_vector(ms, grab, fsz, opx, mom, r)
    out = np.column_stack([ms, obc, inst, grab, fsz, fpx, opx, anv, r, mom, ttl, conf])
    return out + 0.0   # normalise -0.0
