"""The main job's default symbol choice is point in time: `--top N` ranks symbols by notional over
the day BEFORE the period, so no bar at or after the selection time can change it (prefix test), and
the main job's defaults are the real 1m USD-M perps, never the spot / mixed 1h files."""
from __future__ import annotations

import polars as pl
import pytest

from infra.pipeline import (DAY_MS, DEFAULT_FILE, PipelineError, notional_by_symbol, plan_backtest,
                            select_universe)
from ingest.replay import load_klines


@pytest.fixture(scope="module")
def perps() -> pl.DataFrame:
    return load_klines([DEFAULT_FILE], interval="1m")


def test_selection_uses_no_bar_at_or_after_the_selection_time(perps):
    at = 1_748_131_200_000                       # 2025-05-25 00:00 UTC (DOGE and DOT start later that day)
    chosen = select_universe(perps, at, 5, DAY_MS)
    prefix = perps.filter(pl.col("open_time") < at)
    assert select_universe(prefix, at, 5, DAY_MS) == chosen
    # the future made to say otherwise: the least traded symbol of the day before gets 10^6 x the
    # volume from `at` on; the choice at `at` must not move (a whole-window ranking would pick it)
    past = notional_by_symbol(prefix.filter(pl.col("open_time") >= at - DAY_MS))
    loser = past["symbol"][-1]
    assert loser not in chosen
    future = perps.with_columns(pl.when((pl.col("symbol") == loser) & (pl.col("open_time") >= at))
                                .then(pl.col("quote_volume") * 1e6).otherwise(pl.col("quote_volume")).alias("quote_volume"))
    assert loser in notional_by_symbol(future)["symbol"].head(5).to_list()
    assert select_universe(future, at, 5, DAY_MS) == chosen
    # symbols that had no bar before `at` are not chosen: they were not known to trade yet
    later = select_universe(perps, at, 18, DAY_MS)
    assert "DOGEUSDT" not in later and "DOTUSDT" not in later and len(later) == 16


def test_plan_top_is_point_in_time_and_needs_history(perps):
    plan = plan_backtest(None, None, "2025-05-25", "2025-05-26", None, 3)
    day_before = perps.filter(pl.col("open_time").is_between(1_748_131_200_000 - DAY_MS, 1_748_131_200_000 - 1))
    assert plan.symbols == sorted(notional_by_symbol(day_before)["symbol"].head(3).to_list())
    with pytest.raises(PipelineError, match="no bars in the 1 day"):
        plan_backtest(None, None, "2025-05-04", "2025-05-05", None, 3)


def test_default_plan_is_every_perp_over_the_last_days(perps):
    plan = plan_backtest(None, None, None, None, 2, None)
    assert plan.interval == "1m" and plan.files == [str(DEFAULT_FILE)] and "perps_1m" in DEFAULT_FILE.name
    assert plan.symbols == sorted(perps["symbol"].unique().to_list()) and len(plan.symbols) == 18
    assert plan.end == int(perps["open_time"].max()) + 1
    assert plan.start == int(perps["close_time"].max()) + 1 - 2 * DAY_MS
    assert plan.klines == 18 * 2 * 1440


def test_sizing_by_tier_counts_caps_and_risk_taken():
    from infra.sizing_report import EntrySizing, sizing_by_tier
    entries = [EntrySizing(0.005, True, 10_000.0, 10.0, 100.0, 99.5),      # capped: 10 x 0.5 = 5 = 0.05 %
               EntrySizing(0.005, False, 10_000.0, 100.0, 100.0, 99.5),    # 100 x 0.5 = 50 = 0.5 %
               EntrySizing(0.005, True, 10_000.0, 0.0, 0.0, 0.0),          # never filled
               EntrySizing(0.02, True, 20_000.0, 20.0, 100.0, 99.0)]       # 20 x 1 = 20 = 0.1 %
    rows = sizing_by_tier(entries)
    assert [r["tier_risk_pct"] for r in rows] == [2.0, 0.5]
    top, low = rows
    assert (top["entries"], top["filled"], top["cap_bound"], top["cap_bound_pct"]) == (1, 1, 1, 100.0)
    assert top["risk_taken_pct"] == pytest.approx(0.1) and top["taken_over_intended"] == pytest.approx(0.05)
    assert (low["entries"], low["filled"], low["cap_bound"]) == (3, 2, 2)
    assert low["cap_bound_pct"] == pytest.approx(200 / 3)
    assert low["risk_taken_pct"] == pytest.approx((0.05 + 0.5) / 2)
    assert sizing_by_tier([]) == []
