"""FVG and swings agree EXACTLY with smartmoneyconcepts (stored results and the package on real klines).

Event-time mapping: the package marks an FVG at index i (it reads bar i+1 through shift(-1)); we emit it
at bar i+1. MitigatedIndex is an absolute bar index in both. Swings: the package marks pivot p; we
confirm it at bar p+N; surviving swings = emitted minus superseded. The package's bookends on the
first and last bar (lookahead artefacts) are excluded.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import smc_testutil as U
from processors.smc import SmcConfig, SmcEngine, compute_batch

BIG = SmcConfig(max_open_fvgs=10**9, interval_ms=900_000)   # unbounded FVG book to see every mitigation


def ours_fvg(outs):
    """-> {created_bar: (dir, top, bottom, mitigated_bar or 0)} from the stream events."""
    fv = {}
    for i, o in enumerate(outs):
        for m in o.events.get("fvg_mitigated", ()):
            assert fv[m["created"]][3] == 0
            fv[m["created"]][3] = i
        g = o.events.get("fvg")
        if g:
            fv[i] = [g["dir"], g["top"], g["bottom"], 0]
    return fv


def ref_fvg(ref: pd.DataFrame):
    out = {}
    for i in np.flatnonzero(ref["FVG"].notna().to_numpy()):
        r = ref.iloc[i]
        out[int(i) + 1] = [int(r["FVG"]), float(r["Top"]), float(r["Bottom"]), int(r["MitigatedIndex"])]
    return out


def assert_fvg_equal(ours, ref):
    assert set(ours) == set(ref), (sorted(set(ours) ^ set(ref)))[:10]
    for k in ref:
        assert ours[k] == ref[k], (k, ours[k], ref[k])


def ours_swings(outs, n):
    alive = {}
    for t, o in enumerate(outs):
        for key, side in (("swing_high", 1), ("swing_low", -1)):
            s = o.events.get(key)
            if s:
                assert s["pivot"] == t - n            # confirmed exactly N bars late
                if s["supersedes"] is not None:
                    assert alive.pop(s["supersedes"])[0] == side
                alive[s["pivot"]] = (side, s["level"])
    return alive


def ref_swings(ref: pd.DataFrame, n_bars: int):
    hl = ref["HighLow"].to_numpy()
    lv = ref["Level"].to_numpy()
    return {int(i): (int(hl[i]), float(lv[i])) for i in np.flatnonzero(~np.isnan(hl)) if 0 < i < n_bars - 1}


def test_fvg_matches_stored_reference_eurusd(eurusd):
    outs = U.run_engine(eurusd, SmcEngine(BIG))
    ref = ref_fvg(U.load_ref("fvg"))
    ours = ours_fvg(outs)
    assert len(ref) > 1000
    assert_fvg_equal(ours, ref)
    # the batch form emits the same events (checked bar by bar elsewhere; here the fvg keys)
    ev = compute_batch(eurusd, BIG, htf=False)["events"].to_list()
    assert sum('"fvg":' in e for e in ev) == len(ref)


def test_swings_match_stored_reference_eurusd(eurusd):
    outs = U.run_engine(eurusd, SmcEngine(BIG))
    ref = ref_swings(U.load_ref("swing_highs_lows"), eurusd.height)
    assert len(ref) > 2000
    assert ours_swings(outs, 5) == ref


@pytest.mark.parametrize("sym", ["BTCUSDT", "ETHUSDT", "1000BONKUSDT", "SOLUSDT"])
def test_fvg_and_swings_match_package_on_binance_1h(klines_1h, sym):
    from smartmoneyconcepts.smc import smc
    d = U.symbol_frame(klines_1h, sym)
    assert d.height > 1000
    ohlc = U.to_pandas_ohlc(d)
    outs = U.run_engine(d, SmcEngine(BIG))
    assert_fvg_equal(ours_fvg(outs), ref_fvg(smc.fvg(ohlc)))
    for n in (3, 5, 10):
        cfg = SmcConfig(swing_length=n, max_open_fvgs=10**9)
        o2 = outs if n == 5 else U.run_engine(d, SmcEngine(cfg))
        assert ours_swings(o2, n) == ref_swings(smc.swing_highs_lows(ohlc, n), d.height), n


def test_fvg_and_swings_match_package_on_btc_1m(btc_1m):
    from smartmoneyconcepts.smc import smc
    d = btc_1m.slice(0, 8000)
    ohlc = U.to_pandas_ohlc(d)
    outs = U.run_engine(d, SmcEngine(BIG))
    assert_fvg_equal(ours_fvg(outs), ref_fvg(smc.fvg(ohlc)))
    assert ours_swings(outs, 5) == ref_swings(smc.swing_highs_lows(ohlc, 5), d.height)


def test_capped_book_reports_a_subset_of_reference_mitigations(eurusd):
    """Production cap (20 open FVGs): every mitigation we do report is the reference's."""
    outs = U.run_engine(eurusd, SmcEngine(SmcConfig(interval_ms=900_000)))
    ref = ref_fvg(U.load_ref("fvg"))
    ours = ours_fvg(outs)
    assert set(ours) == set(ref)
    reported = [k for k in ours if ours[k][3]]
    assert len(reported) > 0.9 * sum(1 for k in ref if ref[k][3])
    for k in reported:
        assert ours[k] == ref[k]
