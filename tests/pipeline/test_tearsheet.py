"""The tearsheet figures (infra.tearsheet) against small examples computed by hand (the arithmetic is in
the comments), and the confidence tier defined once for Python and SQL."""
from __future__ import annotations

import math
from datetime import datetime, timezone

import numpy as np
import pytest

from infra import tearsheet as ts
from infra.analytics import tier_sql
from infra.performance import DAY_MS
from schemas.tiers import tier_name

H = ts.HOUR_MS


def _ms(iso: str) -> int:
    return int(datetime.fromisoformat(iso).replace(tzinfo=timezone.utc).timestamp() * 1000)


def test_r_multiple_and_pnl_pct():
    # risk = 2 x |100 - 75| = 50; -50 / 50 = -1 R; 30 / (2 x 100) = 15 %
    assert ts.r_multiple(-50.0, 2.0, 100.0, 75.0) == -1.0
    assert ts.r_multiple(25.0, 2.0, 100.0, 125.0) == 0.5        # short: |100 - 125| = 25, 25 / 50
    assert math.isnan(ts.r_multiple(5.0, 2.0, 100.0, 100.0))    # no stop distance: undefined
    assert ts.pnl_pct(30.0, 2.0, 100.0) == pytest.approx(15.0)


def test_building_blocks_of_a_pattern():
    # a block and its mitigation count once; swings are not building blocks
    assert ts.blocks_of("choch+fvg+fvg_mitigated+ob+swing_low") == ["FVG", "OB", "CHoCH"]
    assert ts.blocks_of("fvg_mitigated+ob_mitigated+sweep") == ["FVG", "OB", "sweep"]
    assert ts.blocks_of("bos+ob") == ["OB", "BOS"]
    assert ts.blocks_of("") == []


def test_streaks():
    pnls = [1, -1, -2, 3, -1, -1, -1, 0, -1]
    # losing runs: (-1, -2) = 2, (-1, -1, -1) = 3, the 0 breaks it, (-1) = 1 -> 3; winning runs are all 1
    assert ts.longest_streak(pnls, losing=True) == 3
    assert ts.longest_streak(pnls, losing=False) == 1
    assert ts.longest_streak([], losing=True) == 0


def test_trade_figures():
    pnls = [10.0, -5.0, 20.0, -5.0, -10.0]
    rs = [1.0, -0.5, 2.0, -0.5, -1.0]
    f = ts.trade_figures(pnls, rs)
    assert f["expectancy"] == pytest.approx(2.0)          # (10 - 5 + 20 - 5 - 10) / 5
    assert f["expectancy_r"] == pytest.approx(0.2)        # (1 - .5 + 2 - .5 - 1) / 5
    assert f["avg_win"] == pytest.approx(15.0)            # (10 + 20) / 2
    assert f["avg_loss"] == pytest.approx(-20.0 / 3)      # (-5 - 5 - 10) / 3
    assert f["payoff_ratio"] == pytest.approx(2.25)       # 15 / 6.667
    assert (f["best_trade"], f["worst_trade"]) == (20.0, -10.0)
    assert f["longest_losing_streak"] == 2 and f["longest_winning_streak"] == 1
    # SQN: mean R 0.2; deviations .8 -.7 1.8 -.7 -1.2, squares sum 6.3, / 4 = 1.575, std 1.25499;
    # sqrt(5) x 0.2 / 1.25499 = 0.35635
    assert f["sqn"] == pytest.approx(0.35635, abs=1e-5)


def test_trade_figures_without_losses():
    f = ts.trade_figures([3.0, 1.0], [0.3, 0.1])
    assert f["avg_loss"] == 0.0 and f["payoff_ratio"] == math.inf and f["longest_losing_streak"] == 0
    assert math.isnan(ts.trade_figures([1.0], [0.5])["sqn"])     # one trade: no spread


def test_cagr_and_calmar():
    two_years = int(2 * 365.25 * DAY_MS)
    # 10,000 -> 12,100 in two years: 1.21 ** (1/2) - 1 = 10 % a year; with a 5 % drawdown Calmar = 0.10 / 0.05 = 2
    c = ts.cagr(10_000.0, 12_100.0, 0, two_years)
    assert c == pytest.approx(0.10)
    assert ts.calmar(c, 0.05) == pytest.approx(2.0)
    assert math.isnan(ts.calmar(c, 0.0))
    assert ts.cagr(10_000.0, 0.0, 0, two_years) == -1.0


def test_drawdown_episode_recovered():
    # equity 100 at t=0, then 110 @10, 99 @20, 88 @30, 111 @40, 105 @50; end 60.
    # peaks 100 110 110 110 111 111 -> the deepest fall is 110 -> 88 = 20 % (peak t=10, trough t=30),
    # recovered at t=40 (111 >= 110): 30 ms; underwater 10 -> 40 (30) and 40 -> end 60 (20): longest 30
    d = ts.drawdown_episode(np.array([10, 20, 30, 40, 50]), np.array([110., 99., 88., 111., 105.]), 100.0, 0, 60)
    assert d["max_drawdown_pct"] == pytest.approx(20.0)
    assert (d["peak_at"], d["trough_at"], d["recovered_at"], d["duration_ms"]) == (10, 30, 40, 30)
    assert d["longest_underwater_ms"] == 30


def test_drawdown_episode_unrecovered_and_flat():
    # 100 -> 110 @10 -> 99 @20, end 50: 10 % from t=10, never recovered: duration to the end = 40
    d = ts.drawdown_episode(np.array([10, 20]), np.array([110., 99.]), 100.0, 0, 50)
    assert d["max_drawdown_pct"] == pytest.approx(10.0)
    assert (d["peak_at"], d["trough_at"], d["recovered_at"], d["duration_ms"]) == (10, 20, None, 40)
    assert d["longest_underwater_ms"] == 40
    flat = ts.drawdown_episode(np.zeros(0, dtype=np.int64), np.zeros(0), 100.0, 0, 50)
    assert flat["max_drawdown_pct"] == 0.0 and flat["peak_at"] is None


def test_monthly_returns():
    # Jan: last snapshot 110 over the start 100 = +10 %; Feb: 99 / 110 - 1 = -10 %
    t = np.array([_ms("2025-01-15T00:00"), _ms("2025-01-31T23:00"), _ms("2025-02-10T00:00")])
    rows = ts.monthly_returns(t, np.array([105.0, 110.0, 99.0]), 100.0)
    assert [r["month"] for r in rows] == ["2025-01", "2025-02"]
    assert [r["return_pct"] for r in rows] == pytest.approx([10.0, -10.0])


def test_sharpe_sampling_and_annualisation():
    assert ts.sharpe_sampling(0, 29 * DAY_MS)[0] == "1h"     # 29 daily returns are too few
    assert ts.sharpe_sampling(0, 30 * DAY_MS) == ("1d", DAY_MS)
    # three hours: 100 -> 101 -> 99.99 -> 100.9899: returns +1 %, -1 %, +1 %; mean 1/300, sample std 0.011547
    # -> 0.288675 per hour x sqrt(8760) = 27.019
    t = np.array([H - 1, 2 * H - 1, 3 * H - 1])
    r = ts.risk_adjusted(t, np.array([101.0, 99.99, 100.9899]), 100.0, 0, 3 * H)
    assert (r["sharpe_sampling"], r["sharpe_n"], r["sharpe_periods_per_year"]) == ("1h", 3, 8760.0)
    assert r["sharpe"] == pytest.approx(27.019, rel=1e-4)


def test_rolling_sharpe():
    # windows of 3, one period a year: [.01 -.01 .01] -> 0.288675; [-.01 .01 .03]: mean .01, std .02 -> 0.5
    out = ts.rolling_sharpe(np.array([0.01, -0.01, 0.01, 0.03]), 3, 1.0)
    assert np.isnan(out[:2]).all()
    assert out[2:] == pytest.approx([0.288675, 0.5], abs=1e-6)


def test_mae_mfe_over_the_bars_of_the_trade():
    ot = np.array([0, 60_000, 120_000, 180_000])
    high, low = np.array([101., 104., 106., 110.]), np.array([99., 97., 96., 90.])
    # a stop fills at its bar's close time (119,999): bars 0 and 1 -> high 104, low 97: MAE 3 %, MFE 4 %
    assert ts.mae_mfe("long", 100.0, 97.5, 0, 119_999, ot, high, low, 60_000) == pytest.approx((3.0, 4.0))
    # a time exit fills at a bar's open (120,000): that bar (106 / 96) is not part of the trade, the same two bars
    assert ts.mae_mfe("long", 100.0, 101.0, 0, 120_000, ot, high, low, 60_000) == pytest.approx((3.0, 4.0))
    # held to 240,000: bar 3 too (110 / 90): 10 % each way
    assert ts.mae_mfe("long", 100.0, 101.0, 0, 240_000, ot, high, low, 60_000) == pytest.approx((10.0, 10.0))
    # a short's adverse side is up: 4 %, favourable down: 3 %
    assert ts.mae_mfe("short", 100.0, 97.5, 0, 119_999, ot, high, low, 60_000) == pytest.approx((4.0, 3.0))


def test_group_pnl_with_blocks_and_ci():
    from infra.performance import Trade, group_pnl
    from models.baselines import bootstrap_mean_ci

    def trade(pnl, pattern):
        return Trade("BTCUSDT", "long", 0, 60_000, pnl, 0.0, 0.0, 0.8, pattern, "stop")
    trades = [trade(2.0, "fvg+sweep"), trade(2.0, "fvg"), trade(2.0, "fvg_mitigated+ob"), trade(-3.0, "ob")]
    rows = {r["group"]: r for r in group_pnl(trades, lambda t: ts.blocks_of(t.pattern), bootstrap_mean_ci)}
    # FVG: the first three (2 + 2 + 2 = 6, mean 2, constant -> CI [2, 2]); OB: 2 - 3 = -1, mean -0.5,
    # one win in two, profit factor 2 / 3; sweep: the first only
    assert set(rows) == {"FVG", "OB", "sweep"}
    f, o = rows["FVG"], rows["OB"]
    assert (f["trades"], f["pnl"], f["mean_pnl"], f["ci_lo"], f["ci_hi"], f["win_rate"]) == (3, 6.0, 2.0, 2.0, 2.0, 1.0)
    assert (o["trades"], o["pnl"], o["mean_pnl"], o["win_rate"]) == (2, -1.0, -0.5, 0.5)
    assert o["profit_factor"] == pytest.approx(2 / 3)
    assert -3.0 <= o["ci_lo"] <= -0.5 <= o["ci_hi"] <= 2.0
    assert rows["sweep"]["trades"] == 1


def test_tier_is_one_rule_in_python_and_sql(chdb_dsn):
    from infra.clickhouse import AuditStore
    # the executor's edges, strict `>`: exactly 0.85 is the 0.70-0.85 tier, exactly 0.60 no tier
    values = [0.9, 0.85, 0.8, 0.7, 0.65, 0.6, 0.1]
    assert [tier_name(v) for v in values] == [">0.85", "0.70-0.85", "0.70-0.85", "0.60-0.70", "0.60-0.70",
                                            "<=0.60", "<=0.60"]
    _, rows = AuditStore(chdb_dsn).query(f"SELECT {tier_sql('c')} FROM (SELECT arrayJoin({values}) AS c)")
    assert [r[0] for r in rows] == [tier_name(v) for v in values]


def test_downsample_curve_keeps_real_snapshots():
    t, e = np.arange(10) * 10, np.arange(10) * 1.0
    assert ts.downsample_curve(t, e, 20) == [[int(a), float(b)] for a, b in zip(t, e)]   # small: untouched
    # 10 points over [0, 90] into 3 buckets: t * 3 // 90 -> 0 0 0 1 1 1 2 2 2 3, the last clipped to 2:
    # the first point, then each bucket's last: t = 20, 50, 90
    assert ts.downsample_curve(t, e, 3) == [[0, 0.0], [20, 2.0], [50, 5.0], [90, 9.0]]


def test_monthly_grid_compounds_each_year():
    rows = ts.monthly_grid([{"month": "2025-01", "return_pct": 10.0}, {"month": "2025-02", "return_pct": -10.0},
                            {"month": "2026-03", "return_pct": 5.0}])
    # 2025: 1.10 x 0.90 - 1 = -1 %; 2026: March only, +5 %
    assert [r["year"] for r in rows] == ["2025", "2026"]
    assert rows[0]["Jan"] == 10.0 and rows[0]["Feb"] == -10.0 and rows[0]["Mar"] is None
    assert rows[0]["year_pct"] == pytest.approx(-1.0) and rows[1]["year_pct"] == pytest.approx(5.0)


def test_buy_and_hold_curve():
    from models.baselines import SymbolBars, buy_and_hold
    # A: open 100, closes 110 then 121; B starts one bar later: open 50, close 45. No costs:
    # bar 0: A 5,000 x 110/100 = 5,500 + B still cash 5,000 = 10,500; bar 1: A 5,000 x 1.21 = 6,050,
    # B 5,000 x 45/50 = 4,500 -> 10,550
    a = SymbolBars(np.array([0, 60_000]), np.array([100., 110.]), np.array([111., 122.]), np.array([99., 109.]),
                   np.array([110., 121.]))
    b = SymbolBars(np.array([60_000]), np.array([50.]), np.array([51.]), np.array([44.]), np.array([45.]))
    t, v = ts.buy_and_hold_curve({"A": a, "B": b}, ["A", "B"], 10_000.0, 60_000, 0.0, 0.0)
    assert t.tolist() == [60_000, 120_000] and v == pytest.approx([10_500.0, 10_550.0])
    # with costs its last value is the benchmark's return on the start equity (one definition of the cost)
    t, v = ts.buy_and_hold_curve({"A": a, "B": b}, ["A", "B"], 10_000.0, 60_000, 0.0005, 1.0)
    bh = buy_and_hold({"A": a, "B": b}, ["A", "B"], 0.0005, 1.0)
    assert v[-1] == pytest.approx(10_000.0 * (1 + bh["return_pct"] / 100), rel=1e-12)
