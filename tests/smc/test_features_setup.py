"""Features: bounded, finite, and equal to independent recomputations; heuristic scalar == vector; setups."""
from __future__ import annotations

import math

import orjson

import numpy as np
import pandas as pd
import talib

import smc_testutil as U
from processors.smc import (FEATURE_NAMES, SmcConfig, compute_batch, heuristic_confidence,
                            heuristic_confidence_vector)


def test_feature_bounds_and_independent_values(btc_1m):
    d = btc_1m.slice(0, 15000)
    f = compute_batch(d)
    X = f.select(list(FEATURE_NAMES)).to_numpy()
    assert len(FEATURE_NAMES) == 12 and np.isfinite(X).all()
    assert (X >= -1).all() and (X <= 1).all()
    assert (X[:, [1, 4, 5, 6, 7, 8, 10, 11]] >= 0).all()
    c, o, v = (d[k].to_numpy() for k in ("close", "open", "volume"))
    atr = talib.ATR(*(d[k].to_numpy() for k in ("high", "low", "close")), 14)
    rsi = talib.RSI(c, 14)
    w = 20
    k = 14
    # rsi_14
    assert np.allclose(X[k:, 8], rsi[k:] / 100, atol=1e-9) and np.all(X[:k, 8] == 0.5)
    # momentum_atr (lookback 5)
    mom = np.tanh((c[k:] - c[k - 5:-5]) / atr[k:])
    assert np.allclose(X[k:, 9], mom, atol=1e-9)
    # atr_normalized_volume: volume / rolling mean of 20 (pandas, independent) / 3, clipped
    vm = pd.Series(v).rolling(w, min_periods=1).mean().to_numpy()
    assert np.allclose(X[:, 7], np.clip(np.where(vm > 0, v / vm, 0) / 3, 0, 1), atol=1e-9)
    # institutional candle sign follows the candle
    assert np.all(np.sign(X[:, 2]) * np.sign(c - o) >= 0)
    # market structure = 0.75 * trend + 0.25 * HTF trend, both in {-1, 0, 1}
    assert set(np.round(X[:, 0] * 4).astype(int)) <= set(range(-4, 5))
    # confidence = heuristic of its inputs
    conf = heuristic_confidence_vector(X[:, 0], X[:, 3], X[:, 4], X[:, 6], X[:, 9], X[:, 8])
    assert np.array_equal(conf, X[:, 11])
    # features actually vary on real data (not constant placeholders)
    assert all(np.std(X[:, j]) > 0.01 for j in range(12)), np.std(X, axis=0)


def test_liquidity_grab_decays_from_sweep_events(btc_1m):
    d = btc_1m.slice(0, 5000)
    f = compute_batch(d)
    ev = [orjson.loads(e) for e in f["events"].to_list()]
    grab = f["liquidity_grab"].to_numpy()
    last, last_dir = None, 0
    for i, e in enumerate(ev):
        if "sweep" in e:
            net = sum(s["dir"] for s in e["sweep"])
            last, last_dir = i, (net > 0) - (net < 0)
        want = 0.0 if last is None else last_dir * max(0.0, 1 - (i - last) / 5)
        assert abs(grab[i] - want) < 1e-12, i


def test_heuristic_scalar_equals_vector():
    rng = np.random.default_rng(1)
    n = 5000
    cols = [rng.choice([-1, -0.75, -0.5, -0.25, 0, 0.25, 0.5, 0.75, 1], n), rng.choice([-1, 0, 0.4, 1], n),
            rng.uniform(0, 1, n), rng.uniform(0, 1, n), rng.uniform(-1, 1, n), rng.uniform(0, 1, n)]
    cols[2][:50] = 1 / 3
    cols[3][50:100] = 0.5
    cols[5][100:200] = rng.choice([0.2, 0.3, 0.5, 0.7, 0.8], 100)
    vec = heuristic_confidence_vector(*cols)
    sca = np.array([heuristic_confidence(*(c[i] for c in cols)) for i in range(n)])
    assert np.array_equal(vec, sca)
    assert vec.min() >= 0 and vec.max() <= 1
    # spot checks of the documented rule
    assert heuristic_confidence(1.0, 1.0, 0.5, 0.1, 0.9, 0.6) == 1.0     # 0.5+.1+.15+.1+.1+.05+.05 clipped
    assert math.isclose(heuristic_confidence(0.0, 0.0, 0.0, 1.0, 0.0, 0.9), 0.45)   # RSI 90 with d=+1
    assert math.isclose(heuristic_confidence(-1.0, 0.0, 0.0, 1.0, -0.9, 0.4), 0.5)  # -0.1 +0.05 mom +0.05 rsi


def test_setups_are_consistent_with_events(klines_1h):
    import orjson
    cfg = SmcConfig(interval_ms=3_600_000)
    n_long = n_short = 0
    for sym in ("BTCUSDT", "ETHUSDT", "SOLUSDT"):
        f = compute_batch(U.symbol_frame(klines_1h, sym), cfg)
        for r in f.iter_rows(named=True):
            e = orjson.loads(r["events"])
            bull = any(x["dir"] == 1 for x in e.get("sweep", [])) or any(e.get(k, {}).get("dir") == 1 for k in ("bos", "choch"))
            bear = any(x["dir"] == -1 for x in e.get("sweep", [])) or any(e.get(k, {}).get("dir") == -1 for k in ("bos", "choch"))
            s, en, st, tg = r["setup_side"], r["setup_entry"], r["setup_stop"], r["setup_target"]
            if s == "long":
                n_long += 1
                assert bull and not bear and en == r["close"] and st < en
                assert st <= en - 0.5 * r["atr"] + 1e-9 * en if not math.isnan(r["atr"]) else True
                assert math.isclose(tg - en, 2.0 * (en - st), rel_tol=1e-9)
            elif s == "short":
                n_short += 1
                assert bear and not bull and en == r["close"] and st > en
                assert math.isclose(en - tg, 2.0 * (st - en), rel_tol=1e-9)
            else:
                assert s == "flat" and (en, st, tg) == (0.0, 0.0, 0.0)
    assert n_long > 20 and n_short > 20
