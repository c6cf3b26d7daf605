"""Batch form: a whole series -> polars DataFrame, equal to the incremental outputs for every bar.

Vectorised: validation, FVG candidates, swing candidates (sliding-window max/min), HTF aggregation,
rolling inputs and all 12 features. Sequential, in one numba kernel (batch_kernels.run_detectors, an
operation-by-operation port of the stream's state machines, bit-identical; proven bar by bar by
tests/smc/test_forms_agree.py and test_batch_kernel.py): the Wilder recurrences (ATR/RSI), the stateful
detectors (mitigation, structure/BOS/CHoCH, order blocks, swing dedup, sweeps/levels), the snapshot and
the setup; the kernel also writes the events JSON (sorted keys, floats formatted by orjson).
numba is a runtime dependency (cache=True: ~7 s compile once per install/kernel change, then ~0.2 s load).
"""
from __future__ import annotations

from typing import Any

import numpy as np
import polars as pl

from .bars import BadBar
from .config import SmcConfig
from .batch_kernels import events_json, run_detectors, segment_sums, trailing_means
from .core import SNAPSHOT_FIELDS
from .engine import timeframe_label
from .features import FEATURE_NAMES, features_vector
from .htf import bucket_of
from .fvg import detect_fvg_vector
from .swings import swing_candidate_vector

_COLS = ("open_time", "open", "high", "low", "close", "volume")
_SIDES = pl.Series("setup_side", ["short", "flat", "long"], dtype=pl.Utf8)


def _arrays(df: Any) -> dict:
    def get(k):
        if isinstance(df, pl.DataFrame):
            return df[k].to_numpy()
        return np.asarray(df[k])              # pandas or a mapping of arrays
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
    fd, ft, fb = detect_fvg_vector(o, h, l, c)
    sw = swing_candidate_vector(h, l, cfg.swing_length)
    (atr, atr_eff, rsi, snaps, side, entry, stop, target, buf, fl) = run_detectors(
        t, o, h, l, c, v, fd.astype(np.int64), ft, fb, sw.astype(np.int64), cfg.swing_length, cfg.atr_period,
        cfg.rsi_period, cfg.max_open_fvgs, cfg.max_open_obs, cfg.max_levels, float(cfg.cluster_atr),
        bool(cfg.ob_require_down_candle), float(cfg.rr), float(cfg.min_stop_atr))
    events = events_json(buf, fl, n)
    snap_arr = dict(zip(SNAPSHOT_FIELDS, snaps))

    k = cfg.momentum_lookback
    close_k = np.full(n, np.nan)
    if n > k:
        close_k[k:] = c[: n - k]
    w = cfg.volume_window
    vol_mean = trailing_means(v, w)        # features.trailing_mean's arithmetic, window by window
    ht = np.zeros(n) if htf_trend is None else htf_trend.astype(float)
    feats = features_vector(o, c, v, atr_eff, rsi, close_k, vol_mean, ht, snap_arr, cfg.grab_decay_bars)

    cols = {"timeframe": pl.repeat(timeframe, n, dtype=pl.Utf8, eager=True), "open_time": t, "open": o,
            "high": h, "low": l, "close": c, "volume": v, "atr": atr, "rsi": rsi,
            "events": pl.Series(events, dtype=pl.Utf8)}
    for j, name in enumerate(FEATURE_NAMES):
        cols[name] = feats[:, j] if n else np.zeros(0)
    cols["setup_side"] = _SIDES.gather(side.astype(np.int64) + 1) if n else pl.Series([], dtype=pl.Utf8)
    cols["setup_entry"] = entry
    cols["setup_stop"] = stop
    cols["setup_target"] = target
    trend = snap_arr["trend"].astype(np.int8)
    cols["trend"] = trend
    return pl.DataFrame(cols), trend


def aggregate_htf(a: dict, interval_ms: int, factor: int):
    """HTF bars (arrays) and, for each, the base index at which it closes (see htf.py)."""
    t = a["open_time"]
    n = len(t)
    period = interval_ms * factor
    if n == 0:
        return {k: np.zeros(0, dtype=a[k].dtype) for k in _COLS}, np.zeros(0, dtype=np.int64)
    bucket = bucket_of(t, period)   # elementwise on the array: the stream's grid, one definition
    starts = np.flatnonzero(np.r_[True, bucket[1:] != bucket[:-1]])
    ends = np.r_[starts[1:] - 1, n - 1]
    ended = t[ends] + interval_ms == bucket[starts] + period
    # asarray: numpy's stubs type this 3-argument where() as the 1-argument form's tuple
    close_idx = np.asarray(np.where(ended, ends, np.r_[starts[1:], -1]), dtype=np.int64)
    keep = close_idx >= 0
    vol = segment_sums(a["volume"], starts.astype(np.int64), ends.astype(np.int64))
    bars = {"open_time": bucket[starts], "open": a["open"][starts],
            "high": np.maximum.reduceat(a["high"], starts), "low": np.minimum.reduceat(a["low"], starts),
            "close": a["close"][ends], "volume": vol}
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
