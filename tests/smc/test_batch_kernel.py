"""The numba batch kernel (processors/smc/batch_kernels.py) equals the incremental state machines for
non-default configurations (caps, unbounded books, OB rule, swing lengths, clustering), extreme price
scales (float text with exponents) and buffer growth (hundreds of zones mitigated on one bar)."""
from __future__ import annotations

import numpy as np
import orjson
import polars as pl
import pytest

import smc_testutil as U
from processors.smc import SmcConfig, SmcEngine, SymbolState, compute_batch, compute_batch_all
from processors.smc.batch_kernels import events_json

CONFIGS = [
    SmcConfig(max_open_fvgs=10**9, max_open_obs=10**9, max_levels=10**9),
    SmcConfig(max_open_fvgs=1, max_open_obs=1, max_levels=1, swing_length=3, ob_require_down_candle=False,
              cluster_atr=2.0, rr=3.0, min_stop_atr=0.1),
    SmcConfig(max_open_fvgs=0, max_open_obs=0, max_levels=0, swing_length=1),
    SmcConfig(swing_length=10, cluster_atr=0.0, atr_period=3, rsi_period=2, momentum_lookback=1, volume_window=2),
]


@pytest.mark.parametrize("cfg", CONFIGS, ids=["unbounded", "caps1", "caps0_n1", "n10_short_periods"])
def test_kernel_equals_engine_configs(btc_1m, cfg):
    d = btc_1m.slice(2000, 2500)
    U.assert_outputs_equal_frame(U.run_engine(d, SmcEngine(cfg)), compute_batch(d, cfg, htf=False), what=str(cfg))


@pytest.mark.parametrize("scale", [1e-12, 1e13])
def test_kernel_extreme_price_scales(btc_1m, scale):
    d = btc_1m.slice(0, 2000).with_columns(*(pl.col(k) * scale for k in ("open", "high", "low", "close")),
                                           pl.col("volume") * 1e-7)
    base, htf = U.run_symbol_state(d, SymbolState())
    fr = compute_batch_all(d)
    U.assert_outputs_equal_frame(base, fr["1m"], what=f"x{scale} 1m")
    U.assert_outputs_equal_frame(htf, fr["5m"], what=f"x{scale} 5m")
    assert any(("e-" in e) or ("e+" in e) for e in fr["1m"]["events"].to_list())   # exponent floats seen


def test_kernel_buffer_growth_mass_mitigation():
    """300 stacked bullish FVGs (never mitigated), then one bar through all of them."""
    n = 300
    rows = []
    for i in range(n):
        base = 100.0 + 3.0 * i
        rows.append((i * 60_000, base, base + 2.0, base - 0.5, base + 1.5, 1.0 + i))
    rows.append((n * 60_000, 1000.0, 1001.0, 1.0, 2.0, 5.0))
    d = pl.DataFrame(rows, schema=U.COLS, orient="row")
    cfg = SmcConfig(max_open_fvgs=10**9)
    outs = U.run_engine(d, SmcEngine(cfg))
    assert len(outs[-1].events["fvg_mitigated"]) > 250
    U.assert_outputs_equal_frame(outs, compute_batch(d, cfg, htf=False), what="mass mitigation")


def test_events_json_splice():
    vals = np.array([0.1, 1e-05, 1e16, -0.0, 123456.789, 5e-324, 2.5e-7, 100000.0])
    buf = np.frombuffer(b'{"a":\x00,"b":[\x00,\x00]}\n{}\n{"c":\x00,"d":\x00}\n{"e":\x00,"f":\x00,"g":\x00}\n',
                        dtype=np.uint8)
    f = [orjson.dumps(x).decode() for x in vals.tolist()]
    assert events_json(buf, vals, 4) == [f'{{"a":{f[0]},"b":[{f[1]},{f[2]}]}}', "{}", f'{{"c":{f[3]},"d":{f[4]}}}',
                                         f'{{"e":{f[5]},"f":{f[6]},"g":{f[7]}}}']
    assert events_json(np.frombuffer(b"{}\n", dtype=np.uint8), np.zeros(0), 1) == ["{}"]
    assert events_json(np.zeros(0, dtype=np.uint8), np.zeros(0), 0) == []
