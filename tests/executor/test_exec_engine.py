"""The paper engine end to end on hand-built bars: next-open fills, fees, slippage, funding, exits,
limits, commands, determinism, snapshot/restore and rebuild from records."""
from __future__ import annotations

import exec_helpers  # noqa: F401  (first: makes `executor` the real package, see its docstring)

from collections import Counter

import orjson
import pytest

from executor.brokers.paper import PaperBroker
from executor.config import ExecutorConfig
from executor.engine import Engine
from executor.exits import ExitRules
from executor.instruments import InstrumentBook, load_exchange_info
from executor.portfolio import Portfolio
from executor.strategy import StrategyConfig
from schemas.trading import Decision, Equity, Fill, Order, Position, client_order_id
from exec_helpers import EXCHANGE_INFO, MIN, T0, bar, recorded_signals

HOUR = 60 * MIN


def make_engine(**kw) -> Engine:
    cfg = ExecutorConfig(**kw)
    return Engine(cfg, PaperBroker(cfg.paper), InstrumentBook(load_exchange_info(EXCHANGE_INFO)))


def of(records, cls):
    return [r for r in records if isinstance(r, cls)]


def test_entry_fills_next_open_and_stop_same_bar():
    eng = make_engine()
    b0 = bar("BTCUSDT", T0, 49_900, 50_100, 49_000, 50_000, "long", 0.9, 50_000, 49_500, 51_000)
    out0 = eng.process(b0)
    # the signal bar: decision + entry order only; its low (49 000 < stop) cannot exit: nothing is filled yet
    assert [type(r).__name__ for r in out0] == ["Decision", "Order"]
    d, o = out0
    assert (d.action, d.reason, d.qty, d.risk_pct) == ("enter", "notional_cap", 0.02, 0.02)
    assert (o.leg, o.type, o.side, o.status, o.qty, o.ts) == ("entry", "MARKET", "BUY", "NEW", 0.02, T0 + MIN - 1)
    b1 = bar("BTCUSDT", T0 + MIN, 50_010, 50_200, 49_400, 49_600)
    out1 = eng.process(b1)
    fills = of(out1, Fill)
    entry_price = 50_010 * 1.0001
    stop_price = 49_500 * 0.9999
    assert fills[0].price == pytest.approx(entry_price) and fills[0].ts == T0 + MIN
    assert fills[0].fee == pytest.approx(entry_price * 0.02 * 0.0005)
    assert fills[1].price == pytest.approx(stop_price) and fills[1].ts == T0 + 2 * MIN - 1
    closed = of(out1, Position)[-1]
    net = (stop_price - entry_price) * 0.02 - (entry_price + stop_price) * 0.02 * 0.0005
    assert (closed.status, closed.exit_reason, closed.opened_at) == ("closed", "stop", T0 + MIN)
    assert closed.realized_pnl == pytest.approx(net) and net == pytest.approx(-11.39412051)
    statuses = [(r.leg, r.status) for r in of(out1, Order)]
    assert statuses == [("entry", "FILLED"), ("stop", "NEW"), ("target", "NEW"), ("stop", "FILLED"),
                        ("target", "CANCELED")]
    assert of(out1, Equity)[-1].equity == pytest.approx(10_000 + net)
    assert eng.portfolio.open_count() == 0


def test_target_hit_when_only_target_in_range():
    eng = make_engine()
    eng.process(bar("BTCUSDT", T0, 50_000, 50_000, 50_000, 50_000, "long", 0.9, 50_000, 49_500, 51_000))
    out = eng.process(bar("BTCUSDT", T0 + MIN, 50_000, 51_000, 49_600, 50_900))
    pos = of(out, Position)[-1]
    assert (pos.exit_reason, pos.exit_price) == ("target", pytest.approx(51_000 * 0.9999))


def test_stagnation_exit_fills_at_next_open():
    eng = make_engine()
    eng.process(bar("BTCUSDT", T0, 50_000, 50_000, 50_000, 50_000, "long", 0.9, 50_000, 49_500, 51_000))
    decided = None
    for i in range(1, 40):
        out = eng.process(bar("BTCUSDT", T0 + i * MIN, 50_000, 50_010, 49_990, 50_000))
        exits = [d for d in of(out, Decision) if d.action == "exit"]
        if exits:
            decided = (i, exits[0])
            break
    # filled at T0+1m; held >= 30 min at the end of the bar opened at T0+30m
    assert decided is not None and decided[0] == 30 and decided[1].reason == "stagnation"
    out = eng.process(bar("BTCUSDT", T0 + 31 * MIN, 50_020, 50_030, 50_000, 50_010))
    pos = of(out, Position)[-1]
    assert (pos.status, pos.exit_reason, pos.closed_at) == ("closed", "stagnation", T0 + 31 * MIN)
    assert pos.exit_price == pytest.approx(50_020 * 0.9999)
    assert [(o.leg, o.status) for o in of(out, Order)] == [("exit", "FILLED"), ("stop", "CANCELED"), ("target", "CANCELED")]


def test_max_hold_exit_after_two_hours():
    eng = make_engine()
    eng.process(bar("BTCUSDT", T0, 50_000, 50_000, 50_000, 50_000, "long", 0.9, 50_000, 49_000, 52_000))
    reasons = []
    for i in range(1, 125):
        px = 50_000 if i == 1 else 50_500 + i     # ~1 % in profit after the fill: never stagnant
        out = eng.process(bar("BTCUSDT", T0 + i * MIN, px, px, px, px))
        reasons += [(i, d.reason) for d in of(out, Decision) if d.action == "exit"]
    assert reasons == [(120, "max_hold")]        # bar T0+120m ends at T0+121m = fill + 2 h


def test_funding_without_a_history_is_estimated_and_counted():
    # no real funding record for the symbol (ExecutorConfig() has an empty history): the settlement is
    # estimated on the 8h UTC grid at PaperConfig.funding_rate, and counted as such (the real history:
    # tests/executor/test_exec_funding.py)
    eng = make_engine(exits=ExitRules(max_hold_ms=24 * HOUR, stagnation_after_ms=24 * HOUR))
    eng.process(bar("ETHUSDT", T0, 2_000, 2_000, 2_000, 2_000, "short", 0.9, 2_000, 2_100, 1_800))
    eng.process(bar("ETHUSDT", T0 + MIN, 2_000, 2_000, 2_000, 2_000))
    eng.process(bar("ETHUSDT", T0 + 4 * HOUR, 2_010, 2_010, 2_010, 2_010))
    assert eng.portfolio.funding == 0.0 and eng.stats.funding_estimated == 0
    eng.process(bar("ETHUSDT", T0 + 8 * HOUR, 2_020, 2_020, 2_020, 2_020))
    p = eng.portfolio
    # short 0.5 ETH (cap: 1 000 / 2 000): shorts receive a positive rate: -qty * open * 0.0001
    assert p.funding == pytest.approx(-0.5 * 2_020 * 0.0001)
    assert eng.stats.funding_estimated == 1
    pos = next(iter(p.positions.values()))
    assert pos.funding == pytest.approx(p.funding) and p.cash == pytest.approx(10_000 - pos.fees - p.funding)


def test_daily_loss_limit_halts_until_next_day():
    eng = make_engine()
    eng.process(bar("BTCUSDT", T0, 50_000, 50_000, 50_000, 50_000, "long", 0.9, 50_000, 49_500, 51_000))
    eng.process(bar("BTCUSDT", T0 + MIN, 50_000, 50_000, 50_000, 50_000))
    out = eng.process(bar("BTCUSDT", T0 + 2 * MIN, 29_000, 29_500, 28_000, 29_000))    # gap through the stop
    assert of(out, Position)[-1].exit_price == pytest.approx(29_000 * 0.9999)
    assert eng.portfolio.equity() < 10_000 * 0.97
    d = of(eng.process(bar("BTCUSDT", T0 + 3 * MIN, 29_000, 29_000, 29_000, 29_000, "long", 0.9, 29_000, 28_500, 30_000)), Decision)
    assert (d[0].action, d[0].reason) == ("skip", "daily_loss_limit")
    nxt = T0 + 24 * HOUR
    d = of(eng.process(bar("BTCUSDT", nxt, 29_000, 29_000, 29_000, 29_000, "long", 0.9, 29_000, 28_500, 30_000)), Decision)
    assert (d[0].action, d[0].reason) == ("enter", "notional_cap")


def test_no_pyramiding_and_max_positions():
    eng = make_engine(strategy=StrategyConfig(max_positions=2))
    outs = []
    for sym, px in (("BTCUSDT", 50_000.0), ("ETHUSDT", 2_000.0), ("XRPUSDT", 0.5)):
        outs += eng.process(bar(sym, T0, px, px, px, px, "long", 0.9, px, px * 0.99, px * 1.02))
    outs += eng.process(bar("BTCUSDT", T0 + MIN, 50_000, 50_000, 50_000, 50_000, "long", 0.9, 50_000, 49_500, 51_000))
    assert [(d.symbol, d.reason) for d in of(outs, Decision)] == [
        ("BTCUSDT", "notional_cap"), ("ETHUSDT", "notional_cap"), ("XRPUSDT", "max_positions"),
        ("BTCUSDT", "already_in_position")]


def test_manual_flatten_command():
    eng = make_engine()
    eng.process(bar("BTCUSDT", T0, 50_000, 50_000, 50_000, 50_000, "long", 0.9, 50_000, 49_500, 51_000))
    eng.process(bar("BTCUSDT", T0 + MIN, 50_000, 50_100, 49_900, 50_100))
    eng.command({"cmd": "flatten", "symbol": "BTCUSDT"})
    out = eng.process(bar("BTCUSDT", T0 + 2 * MIN, 50_100, 50_200, 50_000, 50_200))
    assert [(d.action, d.reason) for d in of(out, Decision) if d.action == "exit"] == [("exit", "manual")]
    out = eng.process(bar("BTCUSDT", T0 + 3 * MIN, 50_300, 50_300, 50_300, 50_300))
    assert of(out, Position)[-1].exit_reason == "manual"
    with pytest.raises(ValueError):
        eng.command({"cmd": "reboot"})


def test_duplicates_and_out_of_order_bars_are_ignored():
    eng = make_engine()
    b0 = bar("BTCUSDT", T0, 50_000, 50_000, 50_000, 50_000, "long", 0.9, 50_000, 49_500, 51_000)
    assert eng.process(b0)
    assert eng.process(b0) == []
    assert eng.process(bar("BTCUSDT", T0 - MIN, 1, 1, 1, 1)) == []
    assert eng.stats.duplicates == 2


SIGNALS = recorded_signals(1500, symbols=("BTCUSDT", "ETHUSDT"))


def _run(signals, eng=None):
    eng = eng or make_engine(strategy=StrategyConfig(max_positions=2))
    out = []
    for s in signals:
        out += eng.process(s)
    return eng, out


def test_long_run_invariants_and_independent_pnl():
    eng, out = _run(SIGNALS)
    orders = of(out, Order)
    c = Counter((o.client_order_id, o.status) for o in orders)
    assert c and max(c.values()) == 1                       # every (order, status) exactly once
    fills = of(out, Fill)
    filled = {o.client_order_id for o in orders if o.status == "FILLED"}
    assert filled == {f.client_order_id for f in fills} and len(fills) == len(filled)
    final = {p.position_id: p for p in of(out, Position)}
    closed = [p for p in final.values() if p.status == "closed"]
    assert len(closed) > 20 and {p.exit_reason for p in closed} <= {"stop", "target", "max_hold", "stagnation"}
    assert len({p.exit_reason for p in closed}) >= 3
    # recompute the wallet from fills alone (entry/exit prices, fees) plus funding
    by_cid = {f.client_order_id: f for f in fills}
    cash = 10_000.0
    for p in closed:
        entry = by_cid[p.position_id]
        exit_ = next(by_cid[client_order_id(p.signal_id, leg)] for leg in ("stop", "target", "exit")
                     if client_order_id(p.signal_id, leg) in by_cid)
        sign = 1 if p.side == "long" else -1
        cash += sign * (exit_.price - entry.price) * entry.qty - entry.fee - exit_.fee - p.funding
    for p in final.values():
        if p.status == "open":
            cash -= by_cid[p.position_id].fee + p.funding
    assert eng.portfolio.cash == pytest.approx(cash, abs=1e-6)
    tiers = Counter(d.reason for d in of(out, Decision))
    assert tiers["below_threshold"] and tiers["flat"] and (tiers["ok"] + tiers["notional_cap"]) == eng.stats.entries


def test_snapshot_restore_is_seamless_and_deterministic():
    _, full = _run(SIGNALS)
    eng1, first = _run(SIGNALS[:1234])
    state = orjson.loads(orjson.dumps(eng1.to_dict()))
    eng2 = make_engine(strategy=StrategyConfig(max_positions=2))
    eng2.load_dict(state)
    _, rest = _run(SIGNALS[1234:], eng2)
    assert first + rest == full
    # a replay of already-processed signals is a no-op
    assert _run(SIGNALS[1000:1234], eng2)[1] == []


def test_rebuild_from_position_records():
    eng, out = _run(SIGNALS)
    rebuilt = Portfolio.rebuild(10_000.0, of(out, Position))
    assert rebuilt.cash == pytest.approx(eng.portfolio.cash)
    assert rebuilt.closed_trades == eng.portfolio.closed_trades
    assert set(rebuilt.positions) == {p for p, s in eng.portfolio.positions.items() if s.status != "pending"}
