"""The entry decision: every skip reason, in order."""
from __future__ import annotations

import exec_helpers  # noqa: F401  (first: makes `executor` the real package, see its docstring)

from executor.instruments import Instrument
from executor.strategy import AccountView, StrategyConfig, decide, derive_target
from exec_helpers import T0, bar

INST = Instrument("BTCUSDT", 0.1, 0.001, 0.001, 10.0)
ACC = AccountView(equity=10_000.0, day_start_equity=10_000.0, symbols_in_position=frozenset(), open_positions=0)


def _sig(conf=0.9, side="long", symbol="BTCUSDT", entry=100.0, stop=90.0, target=120.0, tf="1m"):
    return bar(symbol, T0, 100, 101, 99, 100, side, conf, entry, stop, target, timeframe=tf)


def test_enter_with_notional_cap_noted():
    d = decide(_sig(0.9), ACC, INST)
    # 2 % of 10 000 = 200 / 10 = 20 units = 2 000 notional > 1 000 cap -> 10 units
    assert (d.action, d.reason, d.risk_pct, d.sizing.qty) == ("enter", "notional_cap", 0.02, 10.0)


def test_skip_reasons_in_order():
    assert decide(bar("BTCUSDT", T0, 1, 1, 1, 1, confidence=0.99), ACC, INST).reason == "flat"
    assert decide(_sig(0.60), ACC, INST).reason == "below_threshold"
    assert decide(_sig(0.9, tf="5m"), ACC, INST, StrategyConfig(timeframes=("1m",))).reason == "timeframe"
    lost = AccountView(9_700.0, 10_000.0, frozenset({"BTCUSDT"}), 9)
    assert decide(_sig(), lost, INST).reason == "daily_loss_limit"          # exactly 3 % down
    almost = AccountView(9_700.01, 10_000.0, frozenset({"BTCUSDT"}), 9)
    assert decide(_sig(), almost, INST).reason == "already_in_position"
    full = AccountView(10_000.0, 10_000.0, frozenset({"ETHUSDT"}), 5)
    assert decide(_sig(), full, INST).reason == "max_positions"
    assert decide(_sig(), AccountView(10_000.0, 10_000.0, frozenset({"ETHUSDT"}), 4), INST).action == "enter"
    assert decide(_sig(), ACC, INST, StrategyConfig(max_positions=0)).reason == "max_positions"
    assert decide(_sig(0.61, entry=100.0, stop=99.99, target=101), AccountView(50.0, 50.0, frozenset(), 0),
                  INST).reason == "min_notional"


def test_pyramiding_opt_in():
    acc = AccountView(10_000.0, 10_000.0, frozenset({"BTCUSDT"}), 1)
    assert decide(_sig(), acc, INST, StrategyConfig(allow_pyramiding=True)).action == "enter"


def test_target_rederived_as_r_multiple():
    assert derive_target("long", 100.0, 90.0, 150.0, 1.5) == 115.0
    assert derive_target("short", 100.0, 110.0, 50.0, 2.0) == 80.0
    assert derive_target("long", 100.0, 90.0, 150.0, 0.0) == 150.0
    d = decide(_sig(0.9), ACC, INST, StrategyConfig(target_r_multiple=1.5))
    assert d.sizing.target == 115.0
