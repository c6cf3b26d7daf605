"""Sizing at every boundary, against hand-computed numbers."""
from __future__ import annotations

import exec_helpers  # noqa: F401  (first: makes `executor` the real package, see its docstring)

import pytest

from executor.instruments import Instrument, load_exchange_info, round_to
from executor.risk import risk_fraction, round_prices, size_position
from exec_helpers import EXCHANGE_INFO

INST = Instrument("TESTUSDT", tick_size=0.01, step_size=0.001, market_step_size=0.001, min_notional=5.0)


@pytest.mark.parametrize("conf,frac", [
    (0.99, 0.02), (0.8500001, 0.02), (0.85, 0.01), (0.7000001, 0.01), (0.70, 0.005),
    (0.6000001, 0.005), (0.60, 0.0), (0.3, 0.0), (0.0, 0.0)])
def test_tiers_are_strict(conf, frac):
    assert risk_fraction(conf) == frac


@pytest.mark.parametrize("conf,qty,reason", [
    # equity 10 000, entry 100, stop 50: risk 2 % = 200 -> 4.0; 1 % = 100 -> 2.0; 0.5 % = 50 -> 1.0
    (0.86, 4.0, "ok"), (0.85, 2.0, "ok"), (0.71, 2.0, "ok"), (0.70, 1.0, "ok"), (0.61, 1.0, "ok"),
    (0.60, 0.0, "below_threshold")])
def test_quantity_by_tier(conf, qty, reason):
    s = size_position("long", conf, 100.0, 50.0, 200.0, 10_000.0, INST)
    assert (s.qty, s.reason) == (qty, reason)
    assert s.ok == (reason == "ok")


def test_short_is_symmetric():
    s = size_position("short", 0.86, 100.0, 150.0, 10.0, 10_000.0, INST)
    assert (s.qty, s.reason, s.stop) == (4.0, "ok", 150.0)


def test_notional_cap_boundary():
    # risk 2 % of 10 000 = 200; cap = 10 % of equity = 1 000 notional = 10 units at 100
    exact = size_position("long", 0.86, 100.0, 80.0, 140.0, 10_000.0, INST)      # 200 / 20 = 10.0 = cap
    assert (exact.qty, exact.reason, exact.capped) == (10.0, "ok", False)
    over = size_position("long", 0.86, 100.0, 80.1, 140.0, 10_000.0, INST)       # 200 / 19.9 = 10.05 > cap
    assert (over.qty, over.reason, over.capped) == (10.0, "notional_cap", True)
    assert over.notional <= 1_000.0


def test_step_rounds_down_and_market_step_is_used():
    # 0.5 % of 10 000 = 50; distance 30 -> 1.6666... -> 1.666 (step 0.001), 1.66 with a 0.01 market step
    assert size_position("long", 0.61, 100.0, 70.0, 160.0, 10_000.0, INST).qty == 1.666
    inst = Instrument("X", 0.01, 0.001, 0.01, 5.0)
    assert size_position("long", 0.61, 100.0, 70.0, 160.0, 10_000.0, inst, market=True).qty == 1.66
    assert size_position("long", 0.61, 100.0, 70.0, 160.0, 10_000.0, inst, market=False).qty == 1.666


def test_exact_quantity_survives_float_noise():
    # 1 000 * 0.5 % = 5; 10.0 - 9.2 = 0.8 exactly on the tick grid -> 6.25 (naive floats give 6.249999...)
    inst = Instrument("X", 0.1, 0.001, 0.001, 5.0)
    assert size_position("long", 0.61, 10.0, 9.2, 11.6, 1_000.0, inst).qty == 6.25


def test_min_notional_boundary():
    inst = Instrument("X", 0.1, 0.001, 0.001, 10.0)
    # equity 100: cap = 10 notional = 0.001 at 10 000 -> notional exactly 10 = min -> allowed
    ok = size_position("long", 0.61, 10_000.0, 9_900.0, 10_200.0, 100.0, inst)
    assert (ok.qty, ok.reason, ok.notional) == (0.001, "notional_cap", 10.0)
    # equity 99.99: cap 0.0009999 -> 0.000 -> under the minimum notional
    low = size_position("long", 0.61, 10_000.0, 9_900.0, 10_200.0, 99.99, inst)
    assert (low.ok, low.reason) == (False, "min_notional")
    # a quantity that rounds to a notional of 9.999 (< 10) is skipped
    inst2 = Instrument("Y", 0.001, 0.001, 0.001, 10.0)
    s = size_position("long", 0.86, 9.999, 8.999, 12.0, 10_000.0, inst2)     # 200 / 1 -> cap 100.01 -> 100.01
    assert s.ok and s.qty == 100.01
    tiny = size_position("long", 0.61, 9.999, 0.999, 20.0, 200.0, inst2)      # 1 / 9 = 0.111 -> 1.11 notional
    assert (tiny.ok, tiny.reason) == (False, "min_notional")


def test_prices_on_tick_grid_stops_away_targets_toward():
    e, s, t = round_prices("long", 100.004, 95.005, 110.009, 0.01)
    assert (e, s, t) == (100.0, 95.0, 110.0)
    e, s, t = round_prices("short", 99.996, 105.001, 90.005, 0.01)
    assert (e, s, t) == (100.0, 105.01, 90.01)


def test_zero_distance_after_rounding():
    s = size_position("long", 0.9, 100.004, 100.001, 101.0, 10_000.0, INST)
    assert (s.ok, s.reason) == (False, "zero_distance")


def test_round_to_is_decimal_exact():
    assert round_to(0.3, 0.1, "floor") == 0.3
    assert round_to(1.0000000001, 0.001, "floor") == 1.0
    assert round_to(49000.05, 0.1, "ceil") == 49000.1


def test_exchange_info_parser_reads_real_sample():
    book = load_exchange_info(EXCHANGE_INFO)
    btc = book["BTCUSDT"]
    assert (btc.tick_size, btc.step_size, btc.market_step_size, btc.min_notional, btc.min_qty) == (0.1, 0.001, 0.001, 10.0, 0.001)
    assert book["ETHUSDT"].tick_size == 0.01


# --- the explicit position cap and the strategy knobs (issue 15) --------------------------------

def test_margin_cap_at_leverage_scales_the_notional_cap():
    from executor.risk import RiskConfig, max_notional
    # 0.5 % of 10 000 = 50 at risk; stop 0.5 % away (100 -> 99.5): wants 10 000 notional = 100 units
    seed = size_position("long", 0.61, 100.0, 99.5, 101.0, 10_000.0, INST)
    assert (seed.qty, seed.reason, seed.capped) == (10.0, "notional_cap", True)      # 10 % of equity: 1 000
    lev = RiskConfig(cap="margin", max_notional_pct=0.10, leverage=5.0)              # margin 10 % at 5x: 5 000
    assert max_notional(10_000.0, lev) == pytest.approx(5_000.0)
    m = size_position("long", 0.61, 100.0, 99.5, 101.0, 10_000.0, INST, cfg=lev)
    assert (m.qty, m.reason) == (50.0, "notional_cap") and m.notional == pytest.approx(5_000.0)
    big = RiskConfig(cap="margin", max_notional_pct=0.10, leverage=20.0)             # 20 000 > 10 000: risk decides
    r = size_position("long", 0.61, 100.0, 99.5, 101.0, 10_000.0, INST, cfg=big)
    assert (r.qty, r.reason, r.capped) == (100.0, "ok", False)
    assert r.qty * 0.5 == pytest.approx(50.0)        # exactly the tier's risk
    # the leverage only counts for a margin cap
    assert max_notional(10_000.0, RiskConfig(leverage=20.0)) == pytest.approx(1_000.0)


def test_min_stop_distance_as_a_multiple_of_the_round_trip_cost():
    from executor.brokers.paper import PaperConfig
    from executor.risk import RiskConfig
    rtc = PaperConfig().round_trip_cost()
    assert rtc == pytest.approx(2 * (0.0005 + 0.0001))                  # 0.12 %: taker + 1 bp, both sides
    cfg = RiskConfig(min_stop_cost_multiple=3.0, round_trip_cost=rtc)   # stop >= 0.36 % of the entry
    tight = size_position("long", 0.9, 100.0, 99.65, 101.0, 10_000.0, INST, cfg=cfg)
    assert (tight.ok, tight.reason) == (False, "stop_too_tight")
    edge = size_position("long", 0.9, 100.0, 99.64, 101.0, 10_000.0, INST, cfg=cfg)    # exactly 0.36 %
    assert edge.ok and edge.reason == "notional_cap"
    short = size_position("short", 0.9, 100.0, 100.35, 99.0, 10_000.0, INST, cfg=cfg)
    assert short.reason == "stop_too_tight"
    assert size_position("long", 0.9, 100.0, 99.65, 101.0, 10_000.0, INST).ok      # default: no minimum


@pytest.mark.parametrize("kw,match", [({"cap": "equity"}, "cap="), ({"leverage": 0.5}, "leverage"),
                                      ({"max_notional_pct": 0.0}, "max_notional_pct"),
                                      ({"min_stop_cost_multiple": 2.0}, "round_trip_cost")])
def test_bad_risk_settings_fail_clearly(kw, match):
    from executor.risk import RiskConfig
    with pytest.raises(ValueError, match=match):
        RiskConfig(**kw)


def test_env_knobs_default_to_the_seed_rules_and_are_read():
    from executor.config import config_from_env
    from executor.exits import ExitRules
    from executor.risk import RiskConfig
    seed = config_from_env(10_000.0, env={"SMC_EXEC_FUNDING_FILES": "none"})
    r = seed.strategy.risk
    assert (r.cap, r.max_notional_pct, r.leverage, r.min_stop_cost_multiple) == ("notional", 0.10, 1.0, 0.0)
    assert r.tiers == RiskConfig().tiers and seed.strategy.target_r_multiple == 0.0
    assert seed.exits == ExitRules() and (ExitRules().max_hold_ms, ExitRules().stagnation_after_ms,
                                          ExitRules().stagnation_pct) == (7_200_000, 1_800_000, 0.001)
    c = config_from_env(10_000.0, env={"SMC_EXEC_FUNDING_FILES": "none", "SMC_EXEC_CAP": "margin",
                                       "SMC_EXEC_CAP_PCT": "0.2", "SMC_EXEC_LEVERAGE": "10",
                                       "SMC_EXEC_MIN_STOP_COST_X": "2", "SMC_EXEC_TARGET_R": "1.5",
                                       "SMC_EXEC_MAX_HOLD_MIN": "60", "SMC_EXEC_STAGNATION_MIN": "15",
                                       "SMC_EXEC_STAGNATION_PCT": "0.002", "SMC_EXEC_TAKER_FEE": "0.0004"})
    r = c.strategy.risk
    assert (r.cap, r.max_notional_pct, r.leverage, r.min_stop_cost_multiple) == ("margin", 0.2, 10.0, 2.0)
    assert r.round_trip_cost == pytest.approx(2 * (0.0004 + 0.0001)) and c.strategy.target_r_multiple == 1.5
    assert c.exits == ExitRules(max_hold_ms=3_600_000, stagnation_after_ms=900_000, stagnation_pct=0.002)
