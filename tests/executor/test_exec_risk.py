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
