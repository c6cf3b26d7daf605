"""Bad bars are rejected with BadBar (state untouched); degenerate but valid input never raises."""
from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest

import smc_testutil as U
from processors.smc import BadBar, SmcConfig, SmcEngine, SymbolState, compute_batch, compute_batch_all


GOOD = (0, 10.0, 11.0, 9.0, 10.5, 5.0)


@pytest.mark.parametrize("bar,field", [
    ((60_000, float("nan"), 11.0, 9.0, 10.5, 1.0), "open"),
    ((60_000, 10.0, float("inf"), 9.0, 10.5, 1.0), "high"),
    ((60_000, 10.0, 11.0, 9.0, float("nan"), 1.0), "close"),
    ((60_000, 10.0, 11.0, 9.0, 10.5, float("nan")), "volume"),
    ((60_000, 10.0, 10.2, 9.0, 10.5, 1.0), "high"),       # high < close
    ((60_000, 10.0, 11.0, 10.1, 10.5, 1.0), "low"),       # low > open
    ((60_000, 10.0, 11.0, 9.0, 10.5, -1.0), "volume"),
    ((0, 10.0, 11.0, 9.0, 10.5, 1.0), "open_time"),       # not increasing
    ((-5, 10.0, 11.0, 9.0, 10.5, 1.0), "open_time"),
    ((60_000.5, 10.0, 11.0, 9.0, 10.5, 1.0), "open_time"),
    ((60_000, "x", 11.0, 9.0, 10.5, 1.0), "open"),
    ((60_000, 10.0, 11.0), "6 fields"),
])
def test_bad_bar_rejected_and_state_unchanged(bar, field):
    for make in (SmcEngine, SymbolState):
        e = make()
        e.update(GOOD)
        before = (e.to_bytes(), list(getattr(e, "open_window", None) or []))
        with pytest.raises(BadBar) as info:
            e.update(bar)
        assert field in str(info.value)
        assert (e.to_bytes(), list(getattr(e, "open_window", None) or [])) == before
        e.update((60_000, 10.0, 11.0, 9.0, 10.5, 1.0))     # still usable


def test_batch_rejects_bad_rows():
    d = pl.DataFrame({"open_time": [0, 60_000, 120_000], "open": [1.0, 1.0, 1.0], "high": [1.0, 1.0, 1.0],
                      "low": [1.0, 1.0, 1.0], "close": [1.0, float("nan"), 1.0], "volume": [0.0, 0.0, 0.0]})
    with pytest.raises(BadBar, match="row 1.*close"):
        compute_batch(d)
    with pytest.raises(BadBar, match="open_time"):
        compute_batch(d.with_columns(pl.Series("close", [1.0, 1.0, 1.0]), pl.Series("open_time", [0, 0, 60_000])))


def _all_finite(outs):
    for o in outs:
        assert all(math.isfinite(x) for x in o.features)
        for x in o.features:
            assert -1.0 <= x <= 1.0
        assert all(math.isfinite(x) for x in o.setup[1:])


def test_single_bar_flat_bars_zero_volume():
    e = SymbolState()
    outs = e.update((0, 5.0, 5.0, 5.0, 5.0, 0.0))
    assert len(outs) == 1 and math.isnan(outs[0].atr) and outs[0].events == {}
    _all_finite(outs)
    flat = [(i * 60_000, 5.0, 5.0, 5.0, 5.0, 0.0) for i in range(1, 200)]
    for b in flat:
        _all_finite(e.update(b))
    d = pl.DataFrame([(0, 5.0, 5.0, 5.0, 5.0, 0.0)] + flat, schema=U.COLS, orient="row")
    f = compute_batch(d)
    assert np.isfinite(f.select(pl.col(pl.Float64).exclude(["atr", "rsi"])).to_numpy()).all()
    assert f["rsi"].drop_nans().to_list() == [0.0] * (len(flat) - 13)      # TA-Lib: flat -> 0
    assert compute_batch(d.slice(0, 1)).height == 1
    assert compute_batch(d.slice(0, 0)).height == 0


def test_time_gaps(btc_1m):
    """Gaps: detectors run on the bar sequence; HTF bars are closed by the next bucket's first bar."""
    d = btc_1m.slice(0, 3000)
    rng = np.random.default_rng(5)
    keep = np.ones(d.height, dtype=bool)
    keep[rng.choice(d.height, 600, replace=False)] = False          # random holes, incl. bucket ends
    keep[1000:1100] = False                                           # a long outage
    g = d.filter(pl.Series(keep))
    s = SymbolState()
    base, htf = U.run_symbol_state(g, s)
    fr = compute_batch_all(g)
    U.assert_outputs_equal_frame(base, fr["1m"], what="gaps 1m")
    U.assert_outputs_equal_frame(htf, fr["5m"], what="gaps 5m")
    _all_finite(base + htf)
    # independent aggregation: every emitted HTF bar equals the pandas resample of the base bars in it
    p = g.to_pandas()
    p["bucket"] = p["open_time"] // 300_000 * 300_000
    agg = p.groupby("bucket").agg(open=("open", "first"), high=("high", "max"), low=("low", "min"),
                                  close=("close", "last"), volume=("volume", "sum"))
    assert len(htf) == len(agg) - (0 if (g["open_time"][-1] + 60_000) % 300_000 == 0 else 1)
    for o in htf:
        r = agg.loc[o.open_time]
        assert (o.open, o.high, o.low, o.close) == (r.open, r.high, r.low, r.close)
        assert abs(o.volume - r.volume) <= 1e-9 * r.volume


def test_htf_closes_on_ending_bar_or_next_bucket():
    s = SymbolState(SmcConfig(interval_ms=60_000, htf_factor=5))
    def b(m):
        return (m * 60_000, 1.0, 2.0, 0.5, 1.5, 1.0)
    assert [len(s.update(b(m))) for m in range(5)] == [1, 1, 1, 1, 2]   # minute 4 ends the 5m bar
    assert [len(s.update(b(m))) for m in (5, 6)] == [1, 1]
    out = s.update(b(11))                                               # gap: bucket 5..9 closed by minute 11
    assert len(out) == 2 and out[1].timeframe == "5m" and out[1].open_time == 300_000
    out = s.update(b(14))                                               # minute 14 ends bucket 10..14
    assert len(out) == 2 and out[1].open_time == 600_000
    out = s.update(b(24))   # closes nothing pending, then minute 24 alone ends bucket 20..24
    assert [o.timeframe for o in out] == ["1m", "5m"] and out[1].open_time == 1_200_000
    h = SymbolState(SmcConfig(interval_ms=3_600_000))
    assert h.update((0, 1.0, 2.0, 0.5, 1.5, 1.0))[0].timeframe == "1h"
    assert h.htf.timeframe == "5h"
