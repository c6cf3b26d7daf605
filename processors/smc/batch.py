"""Batch form: a whole series -> polars DataFrame, equal to the incremental outputs for every bar.

Vectorised: validation, FVG candidates, swing candidates (sliding-window max/min), HTF aggregation,
rolling inputs and all 12 features. Sequential (plain Python floats, the same state machines as the
stream, so the logic exists once): the Wilder recurrences (ATR/RSI) and the stateful detectors
(mitigation, swing dedup, structure, order blocks, sweeps), which are inherently order-dependent.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import orjson
import polars as pl
from numpy.lib.stride_tricks import sliding_window_view

from .bars import BadBar
from .config import SmcConfig
from .core import SNAPSHOT_FIELDS, DetectorCore
from .engine import timeframe_label
from .features import FEATURE_NAMES, features_vector
from .fvg import detect_fvg_vector
from .indicators import AtrState, RsiState
from .swings import swing_candidate_vector

_COLS = ("open_time", "open", "high", "low", "close", "volume")


def _arrays(df: Any) -> dict:
    if isinstance(df, pl.DataFrame):
        get = lambda k: df[k].to_numpy()
    else:                                     # pandas or a mapping of arrays
        get = lambda k: np.asarray(df[k])
    try:
        cols = {k: get(k) for k in _COLS}
    except Exception as e:  # noqa: BLE001 - report which column is missing
        raise BadBar(f"input is missing a column of {_COLS}: {e}") from None
    cols["open_time"] = cols["open_time"].astype(np.int64)
    for k in _COLS[1:]:
        cols[k] = cols[k].astype(np.float64)
    return cols


def validate_arrays(a: dict) -> None:
    """Vectorised validate_bar: raises BadBar for the first offending row."""
    o, h, l, c, v, t = a["open"], a["high"], a["low"], a["close"], a["volume"], a["open_time"]
    checks = []
    for k in ("open", "high", "low", "close", "volume"):
        checks.append((~np.isfinite(a[k]), k, "is not finite"))
    checks += [((h < o) | (h < c), "high", "is below max(open, close)"),
               ((l > o) | (l > c), "low", "is above min(open, close)"),
               (v < 0, "volume", "is negative")]
    first = None
    for mask, field, what in checks:
        idx = np.flatnonzero(mask)
        if idx.size and (first is None or idx[0] < first[0]):
            first = (int(idx[0]), field, what)
    if len(t) > 1:
        idx = np.flatnonzero(np.diff(t) <= 0)
        if idx.size and (first is None or idx[0] + 1 < first[0]):
            first = (int(idx[0]) + 1, "open_time", "is not after the previous bar's open_time")
    if first is not None:
        i, field, what = first
        raise BadBar(f"row {i}: field {field!r}={a[field][i]!r} {what} (open_time={int(t[i])})")


def _run(a: dict, cfg: SmcConfig, timeframe: str, htf_trend: np.ndarray | None):
    """-> (polars frame, trend array)."""
    t, o, h, l, c, v = (a[k] for k in _COLS)
    n = len(t)
    T, O, H, L, C, V = (x.tolist() for x in (t, o, h, l, c, v))

    atr_s, rsi_s = AtrState(cfg.atr_period), RsiState(cfg.rsi_period)
    atr = np.full(n, np.nan)
    atr_eff = np.empty(n)
    rsi = np.full(n, np.nan)
    au, ru = atr_s.update, rsi_s.update
    for i in range(n):
        x, e = au(H[i], L[i], C[i])
        if x is not None:
            atr[i] = x
        atr_eff[i] = e
        y = ru(C[i])
        if y is not None:
            rsi[i] = y

    fd, ft, fb = detect_fvg_vector(o, h, l, c)
    sw = swing_candidate_vector(h, l, cfg.swing_length).tolist()
    fvgs = list(zip(fd.tolist(), ft.tolist(), fb.tolist()))
    AE = atr_eff.tolist()

    core = DetectorCore(cfg)
    step = core.step
    events = [None] * n
    snaps = [None] * n
    setups = [None] * n
    dumps, sort = orjson.dumps, orjson.OPT_SORT_KEYS
    for i in range(n):
        ev, snaps[i], setups[i] = step(T[i], O[i], H[i], L[i], C[i], V[i], AE[i], fvgs[i], sw[i])
        events[i] = dumps(ev, option=sort).decode() if ev else "{}"

    snap_arr = dict(zip(SNAPSHOT_FIELDS, (np.array(col, dtype=float) for col in zip(*snaps)))) if n else \
        {k: np.zeros(0) for k in SNAPSHOT_FIELDS}
    k = cfg.momentum_lookback
    close_k = np.full(n, np.nan)
    if n > k:
        close_k[k:] = c[: n - k]
    w = cfg.volume_window
    vol_mean = np.cumsum(v) / np.arange(1, n + 1)
    if n >= w:
        vol_mean[w - 1:] = sliding_window_view(v, w).sum(axis=1) / w
    ht = np.zeros(n) if htf_trend is None else htf_trend.astype(float)
    feats = features_vector(o, c, v, atr_eff, rsi, close_k, vol_mean, ht, snap_arr, cfg.grab_decay_bars)

    cols = {"timeframe": [timeframe] * n, "open_time": t, "open": o, "high": h, "low": l, "close": c, "volume": v,
            "atr": atr, "rsi": rsi, "events": events}
    for j, name in enumerate(FEATURE_NAMES):
        cols[name] = feats[:, j] if n else np.zeros(0)
    cols["setup_side"] = [s[0] for s in setups]
    cols["setup_entry"] = [s[1] for s in setups]
    cols["setup_stop"] = [s[2] for s in setups]
    cols["setup_target"] = [s[3] for s in setups]
    trend = snap_arr["trend"].astype(np.int8)
    cols["trend"] = trend
    return pl.DataFrame(cols, schema_overrides={"events": pl.Utf8, "setup_side": pl.Utf8, "timeframe": pl.Utf8}), trend


def aggregate_htf(a: dict, interval_ms: int, factor: int):
    """HTF bars (arrays) and, for each, the base index at which it closes (see htf.py)."""
    t = a["open_time"]
    n = len(t)
    period = interval_ms * factor
    if n == 0:
        return {k: np.zeros(0, dtype=a[k].dtype) for k in _COLS}, np.zeros(0, dtype=np.int64)
    bucket = t - t % period
    starts = np.flatnonzero(np.r_[True, bucket[1:] != bucket[:-1]])
    ends = np.r_[starts[1:] - 1, n - 1]
    ended = t[ends] + interval_ms == bucket[starts] + period
    close_idx = np.where(ended, ends, np.r_[starts[1:], -1])
    keep = close_idx >= 0
    V = a["volume"].tolist()
    vol = []
    for s, e in zip(starts.tolist(), ends.tolist()):
        acc = V[s]
        for j in range(s + 1, e + 1):
            acc += V[j]
        vol.append(acc)
    bars = {"open_time": bucket[starts], "open": a["open"][starts],
            "high": np.maximum.reduceat(a["high"], starts), "low": np.minimum.reduceat(a["low"], starts),
            "close": a["close"][ends], "volume": np.array(vol)}
    return {k: x[keep] for k, x in bars.items()}, close_idx[keep]


def compute_batch_all(df: Any, config: SmcConfig | None = None) -> dict[str, pl.DataFrame]:
    """Base and HTF frames, equal to SymbolState's outputs ({"1m": ..., "5m": ...})."""
    cfg = config or SmcConfig()
    a = _arrays(df)
    validate_arrays(a)
    hb, close_idx = aggregate_htf(a, cfg.interval_ms, cfg.htf_factor)
    htf_label = timeframe_label(cfg.interval_ms * cfg.htf_factor)
    htf_frame, htf_tr = _run(hb, cfg, htf_label, None)
    g = np.searchsorted(close_idx, np.arange(len(a["open_time"])), side="right") - 1
    htf_trend = np.where(g >= 0, htf_tr[np.maximum(g, 0)] if len(htf_tr) else 0, 0)
    base_frame, _ = _run(a, cfg, timeframe_label(cfg.interval_ms), htf_trend)
    return {timeframe_label(cfg.interval_ms): base_frame, htf_label: htf_frame}


def compute_batch(df: Any, config: SmcConfig | None = None, htf: bool = True) -> pl.DataFrame:
    """Base-timeframe outputs for every bar. htf=True: as SymbolState (HTF trend in the features);
    htf=False: as a lone SmcEngine (htf_trend = 0)."""
    cfg = config or SmcConfig()
    if htf:
        return compute_batch_all(df, cfg)[timeframe_label(cfg.interval_ms)]
    a = _arrays(df)
    validate_arrays(a)
    return _run(a, cfg, timeframe_label(cfg.interval_ms), None)[0]
