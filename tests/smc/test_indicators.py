"""ATR and RSI equal TA-Lib (talib.ATR / talib.RSI) to 1e-9 after warm-up, NaN before, in both forms."""
from __future__ import annotations

import numpy as np
import polars as pl
import pytest
import talib

import smc_testutil as U
from processors.smc import SmcConfig, SmcEngine, compute_batch


def _check(d: pl.DataFrame, cfg=SmcConfig()):
    h, l, c = (d[k].to_numpy() for k in ("high", "low", "close"))
    ta_atr, ta_rsi = talib.ATR(h, l, c, 14), talib.RSI(c, 14)
    outs = U.run_engine(d, SmcEngine(cfg))
    b = compute_batch(d, cfg, htf=False)
    for ours in (np.array([o.atr for o in outs]), b["atr"].to_numpy()):
        assert np.array_equal(np.isnan(ours), np.isnan(ta_atr))
        assert np.nanmax(np.abs(ours - ta_atr), initial=0) <= 1e-9 * max(1.0, np.nanmax(ta_atr, initial=0))
    for ours in (np.array([o.rsi for o in outs]), b["rsi"].to_numpy()):
        assert np.array_equal(np.isnan(ours), np.isnan(ta_rsi))
        assert np.nanmax(np.abs(ours - ta_rsi), initial=0) <= 1e-9


def test_atr_rsi_btc_1m(btc_1m):
    _check(btc_1m.slice(0, 20000))


@pytest.mark.parametrize("sym", ["BTCUSDT", "1000BONKUSDT", "1000PEPEUSDT", "ADAUSDT", "XRPUSDT"])
def test_atr_rsi_binance_1h(klines_1h, sym):
    d = U.symbol_frame(klines_1h, sym)
    if d.height == 0:
        pytest.skip(f"{sym} absent")
    _check(d, SmcConfig(interval_ms=3_600_000))


def test_atr_rsi_flat_and_tiny_prices():
    """TA-Lib's RSI is 0 when avg gain + avg loss is ~0 (TA_IS_ZERO); tiny prices exercise that branch."""
    rng = np.random.default_rng(3)
    n = 300
    c = 1e-7 * (1 + np.cumsum(rng.normal(0, 0.01, n)))
    c[100:160] = c[99]                    # a flat stretch
    o = np.r_[c[0], c[:-1]]
    h = np.maximum(o, c) * 1.0000001
    l = np.minimum(o, c) * 0.9999999
    d = pl.DataFrame({"open_time": np.arange(n) * 60_000, "open": o, "high": h, "low": l, "close": c,
                      "volume": np.ones(n)})
    _check(d)
