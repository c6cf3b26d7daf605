"""Start-up / reconnect reconciliation: the pure plan (exchange snapshot + executor holdings -> actions)
and the Binance adapter against the fake exchange (a position opened behind the executor's back,
orphan and foreign orders, a stop cancelled at the exchange, a position closed at the exchange)."""
from __future__ import annotations

import exec_helpers  # noqa: F401  (first: makes `executor` the real package, see its docstring)

import random

import pytest

from executor.brokers.binance import BinanceBroker, BinanceClient, UnknownOutcome
from executor.config import ExecutorConfig
from executor.engine import Engine
from executor.instruments import InstrumentBook, load_exchange_info
from executor.reconcile import ExchangeSnapshot, Holding, plan
from schemas.trading import Alert, Fill, Order, Position, client_order_id
from exec_helpers import EXCHANGE_INFO, KEY, MIN, SECRET, T0, bar, fake  # noqa: F401  (fake: fixture)

SID = "BTCUSDT:1m:1:test"
STOP, TARGET = client_order_id(SID, "stop"), client_order_id(SID, "target")


def algo(cid, symbol="BTCUSDT", side="SELL", qty="0.02", typ="STOP_MARKET", reduce_only=True, trigger="49500"):
    return {"clientAlgoId": cid, "symbol": symbol, "side": side, "quantity": qty, "type": typ,
            "reduceOnly": reduce_only, "triggerPrice": trigger}


def held(qty=0.02, side="long", stop=49_500.0, orders=(STOP, TARGET)):
    return Holding(client_order_id(SID, "entry"), SID, "BTCUSDT", side, qty, stop, tuple(orders))


def kinds(rep):
    return [(a.kind, a.symbol, a.cid) for a in rep.actions]


# --- the pure plan ---------------------------------------------------------------------------------
def test_agreeing_state_adopts_the_executors_orders_and_does_nothing_else():
    snap = ExchangeSnapshot({"BTCUSDT": 0.02}, {"BTCUSDT": 50_000.0},
                            open_algos=(algo(STOP), algo(TARGET, typ="TAKE_PROFIT_MARKET", trigger="51000")))
    rep = plan(snap, [held()], {"BTCUSDT": 0.1})
    assert rep.differences == []
    assert kinds(rep) == [("adopt", "BTCUSDT", STOP), ("adopt", "BTCUSDT", TARGET)]


def test_position_behind_the_executors_back_is_flattened_unless_the_strategys_stop_covers_it():
    snap = ExchangeSnapshot({"BTCUSDT": 0.02, "ETHUSDT": -1.5}, {"BTCUSDT": 50_000.0, "ETHUSDT": 2_000.0},
                            open_algos=(algo(STOP),))
    rep = plan(snap, [held(orders=(STOP,))], {})
    (flat,) = [a for a in rep.actions if a.kind == "flatten"]
    assert (flat.symbol, flat.side, flat.qty, flat.position_id) == ("ETHUSDT", "BUY", 1.5, "")
    assert rep.differences == ["ETHUSDT: exchange -1.5 vs executor 0"]
    # the same exposure covered by a reduce-only BUY stop with the strategy's prefix: kept (adopted) with
    # its target sibling; an orphan of the prefix elsewhere is cancelled; a foreign order is left alone
    other = "BTCUSDT:1m:99:test"
    cover = algo(client_order_id(other, "stop"), "ETHUSDT", "BUY", "1.5", trigger="2100")
    sibling = algo(client_order_id(other, "target"), "ETHUSDT", "BUY", "1.5", "TAKE_PROFIT_MARKET", trigger="1900")
    orphan = algo(client_order_id("BTCUSDT:1m:7:test", "stop"), "ETHUSDT", "SELL", "1", trigger="1800")
    foreign = algo("web_stop_1", "ETHUSDT", "BUY", "1.5", trigger="2200")
    snap2 = ExchangeSnapshot(snap.positions, snap.marks, open_algos=(algo(STOP), cover, sibling, orphan, foreign))
    rep2 = plan(snap2, [held(orders=(STOP,))], {})
    got = {(a.kind, a.cid) for a in rep2.actions}
    assert ("adopt", "") in got and not [a for a in rep2.actions if a.kind == "flatten"]
    assert {("adopt", cover["clientAlgoId"]), ("adopt", sibling["clientAlgoId"]), ("cancel", orphan["clientAlgoId"]),
            ("foreign", "web_stop_1"), ("adopt", STOP)} <= got
    # a cover that is too small (or not reduce-only, or on the wrong side) does not protect: flatten
    for bad in (dict(cover, quantity="1.0"), dict(cover, reduceOnly=False), dict(cover, side="SELL")):
        rep3 = plan(ExchangeSnapshot(snap.positions, snap.marks, open_algos=(algo(STOP), bad)), [held(orders=(STOP,))], {})
        assert [a.symbol for a in rep3.actions if a.kind == "flatten"] == ["ETHUSDT"]
        assert ("cancel", bad["clientAlgoId"]) in {(a.kind, a.cid) for a in rep3.actions}


def test_executor_position_missing_at_the_exchange_is_dropped_and_its_orders_cancelled():
    snap = ExchangeSnapshot({}, {"BTCUSDT": 49_000.0}, open_algos=(algo(TARGET, typ="TAKE_PROFIT_MARKET"),))
    rep = plan(snap, [held()], {})
    assert kinds(rep) == [("drop", "BTCUSDT", ""), ("cancel", "BTCUSDT", TARGET)]
    # the exchange holds the opposite side: drop ours, flatten theirs
    rep = plan(ExchangeSnapshot({"BTCUSDT": -0.01}, {"BTCUSDT": 49_000.0}), [held()], {})
    assert [(a.kind, a.side, a.qty) for a in rep.actions] == [("drop", "", 0.02), ("flatten", "BUY", 0.01)]


def test_unprotected_executor_position_gets_a_corrected_stop_or_is_flattened():
    snap = ExchangeSnapshot({"BTCUSDT": 0.02}, {"BTCUSDT": 50_000.0})
    (a,) = plan(snap, [held(stop=49_500.04)], {"BTCUSDT": 0.1}).actions
    assert (a.kind, a.side, a.qty, a.price) == ("protect", "SELL", 0.02, 49_500.0)
    # the mark has passed the stop (a re-placed stop would trigger at once): flatten
    (a,) = plan(ExchangeSnapshot({"BTCUSDT": 0.02}, {"BTCUSDT": 49_000.0}), [held()], {"BTCUSDT": 0.1}).actions
    assert (a.kind, a.side, a.qty, a.position_id) == ("flatten", "SELL", 0.02, client_order_id(SID, "entry"))
    # the re-placed stop (stop2) is gone too: one re-placement only, then flatten
    (a,) = plan(snap, [held(orders=(client_order_id(SID, "stop2"),))], {"BTCUSDT": 0.1}).actions
    assert a.kind == "flatten"
    # a short: the stop above the mark
    (a,) = plan(ExchangeSnapshot({"BTCUSDT": -0.02}, {"BTCUSDT": 50_000.0}),
                [held(side="short", stop=50_500.04)], {"BTCUSDT": 0.1}).actions
    assert (a.kind, a.side, a.price) == ("protect", "BUY", 50_500.1)


def test_plan_is_deterministic_under_input_order():
    algos = [algo(STOP), algo(client_order_id("x", "stop"), "ETHUSDT", "BUY", "1"), algo("foreign", "ETHUSDT")]
    snap = ExchangeSnapshot({"BTCUSDT": 0.02, "ETHUSDT": -2.0, "SOLUSDT": 3.0},
                            {"BTCUSDT": 50_000.0, "ETHUSDT": 2_000.0, "SOLUSDT": 100.0}, open_algos=tuple(algos))
    ref = plan(snap, [held(orders=(STOP,))], {})
    rng = random.Random(3)
    for _ in range(10):
        rng.shuffle(algos)
        pos = list(snap.positions.items())
        rng.shuffle(pos)
        assert plan(ExchangeSnapshot(dict(pos), snap.marks, open_algos=tuple(algos)), [held(orders=(STOP,))], {}) == ref


# --- the adapter against the fake exchange -----------------------------------------------------------
def engine_on(fake) -> tuple[Engine, BinanceBroker]:
    b = BinanceBroker(BinanceClient(fake.base_url, KEY, SECRET, timeout=2.0, recv_window=1000), unknown_margin_s=0.3,
                      guard_restart=False)
    return Engine(ExecutorConfig(), b, InstrumentBook(load_exchange_info(EXCHANGE_INFO))), b


def long_setup(t=T0):
    return bar("BTCUSDT", t, 50_000, 50_000, 50_000, 50_000, "long", 0.9, 50_000, 49_500.04, 51_000)


def test_reconciliation_against_the_fake_exchange_protects_flattens_cancels_and_records(fake):
    eng, b = engine_on(fake)
    out = eng.process(long_setup())
    sid = [r for r in out if isinstance(r, Position)][0].signal_id
    assert b.needs_reconcile()
    recs = b.reconcile(eng, T0 + MIN)
    assert [r.detail for r in recs if isinstance(r, Alert)] == ["exchange and executor agree | adopt=2"]
    assert not b.needs_reconcile()
    # behind the executor's back: its stop cancelled, a position opened, an orphan and a foreign order placed
    (stop,) = [a for a in fake.open_algos("BTCUSDT") if a["type"] == "STOP_MARKET"]
    stop["algoStatus"] = "CANCELED"
    fake.open_behind("ETHUSDT", 1.5)
    orphan = fake.place_algo("ETHUSDT", client_order_id("BTCUSDT:1m:7:test", "stop"), "SELL", 1.0, 1_800.0)
    foreign = fake.place_algo("ETHUSDT", "web_take_profit", "SELL", 1.0, 2_500.0, "TAKE_PROFIT_MARKET")
    recs = b.reconcile(eng, T0 + 2 * MIN, 1)
    by_kind = {r.kind: r for r in recs if isinstance(r, Alert)}
    assert set(by_kind) == {"reconcile_protect", "reconcile_flatten", "reconcile_cancel", "reconcile_foreign", "reconciled"}
    assert "ETHUSDT: exchange 1.5 vs executor 0" in by_kind["reconciled"].detail
    assert fake.positions["ETHUSDT"] == 0 and fake.positions["BTCUSDT"] == 0.02
    (stop2,) = [a for a in fake.open_algos("BTCUSDT") if a["type"] == "STOP_MARKET"]
    assert stop2["clientAlgoId"] == client_order_id(sid, "stop2") and stop2["triggerPrice"] == "49500"
    assert client_order_id(sid, "stop2") in eng.orders               # the engine knows its new stop
    assert orphan["algoStatus"] == "CANCELED" and foreign["algoStatus"] == "NEW"
    flat = [r for r in recs if isinstance(r, Fill)]
    assert [(f.symbol, f.side, f.qty) for f in flat] == [("ETHUSDT", "SELL", 1.5)]
    assert all(isinstance(r, (Alert, Fill, Order)) for r in recs)
    # a second pass finds nothing left to do (the foreign order is only reported again)
    again = b.reconcile(eng, T0 + 3 * MIN)
    assert {r.kind for r in again if isinstance(r, Alert)} == {"reconcile_foreign", "reconciled"}
    assert [r.detail for r in again if isinstance(r, Alert) and r.kind == "reconciled"] == \
        ["exchange and executor agree | adopt=2, foreign=1"]
    # the engine keeps managing the position with the new stop: it fires at the exchange, the engine sees it
    fake.trigger("BTCUSDT", 49_400.0)
    out = eng.process(bar("BTCUSDT", T0 + 4 * MIN, 50_000, 50_000, 49_400, 49_400))
    closed = [r for r in out if isinstance(r, Position)][-1]
    assert (closed.status, closed.exit_reason) == ("closed", "stop") and fake.positions["BTCUSDT"] == 0


def test_position_closed_at_the_exchange_is_closed_in_the_books(fake):
    eng, b = engine_on(fake)
    eng.process(long_setup())
    fake.marks["BTCUSDT"] = 50_100.0
    fake.open_behind("BTCUSDT", -0.02)                # someone closed it on the web UI
    recs = b.reconcile(eng, T0 + MIN)
    (pos,) = [r for r in recs if isinstance(r, Position)]
    assert (pos.status, pos.exit_reason) == ("closed", "reconciled") and not eng.portfolio.positions
    assert fake.open_algos() == [] and not eng.orders              # its stop and target cancelled
    assert {r.kind for r in recs if isinstance(r, Alert)} == {"reconcile_drop", "reconcile_cancel", "reconciled"}


def test_unprotectable_position_is_flattened_and_a_timeout_asks_for_a_new_reconciliation(fake):
    eng, b = engine_on(fake)
    eng.process(long_setup())
    b.reconcile(eng, T0 + MIN)
    for a in fake.open_algos("BTCUSDT"):
        if a["type"] == "STOP_MARKET":
            a["algoStatus"] = "CANCELED"
    fake.marks["BTCUSDT"] = 49_000.0                   # below the stop: no valid stop price
    fake.fault("GET /fapi/v2/positionRisk", "accept_then_hang", seconds=2.5)
    b.client.timeout = 0.5
    with pytest.raises(UnknownOutcome, match="no answer"):   # the snapshot timed out: nothing decided
        b.reconcile(eng, T0 + 2 * MIN)
    assert b.needs_reconcile()                        # a lost answer: reconcile again
    b.client.timeout = 2.0
    recs = b.reconcile(eng, T0 + 3 * MIN)
    assert "reconcile_flatten" in {r.kind for r in recs if isinstance(r, Alert)}
    assert fake.positions["BTCUSDT"] == 0 and not eng.portfolio.positions
    (pos,) = [r for r in recs if isinstance(r, Position)]
    assert (pos.exit_reason, pos.exit_price) == ("unprotected", 49_000.0)


# --- the service on the real Kafka broker ------------------------------------------------------------
@pytest.mark.kafka
def test_service_reconciles_at_start_up_and_writes_the_record_to_the_alerts_topic(fake, settings):
    from test_exec_service_kafka import produce_signals, read_topic
    from executor.service import run_executor
    from infra import kafka_io
    s = settings.with_(partitions=1)
    try:
        fake.open_behind("ETHUSDT", -1.5)                          # opened behind the executor's back
        orphan = fake.place_algo("BTCUSDT", client_order_id("BTCUSDT:1m:7:test", "stop"), "SELL", 0.02, 49_000.0)
        produce_signals(s, [long_setup(), bar("BTCUSDT", T0 + MIN, 50_000, 50_000, 50_000, 50_000)])
        b = BinanceBroker(BinanceClient(fake.base_url, KEY, SECRET, timeout=2.0, recv_window=1000))
        stats = run_executor(s, idle_s=1.0, cfg=ExecutorConfig(exchange_info=str(EXCHANGE_INFO)), broker=b)
        assert stats.signals == 2
        assert fake.positions["ETHUSDT"] == 0 and orphan["algoStatus"] == "CANCELED"
        assert fake.positions["BTCUSDT"] == 0.02                      # the strategy's own trade, untouched
        alerts = read_topic(s, "alerts")
        (summary,) = [a for a in alerts if a["kind"] == "reconciled"]
        assert summary["detail"].startswith("ETHUSDT: exchange -1.5 vs executor 0")
        assert {a["kind"] for a in alerts} >= {"reconcile_flatten", "reconcile_cancel"}
        fills = [f for f in read_topic(s, "fills") if f["symbol"] == "ETHUSDT"]
        assert [(f["side"], f["qty"]) for f in fills] == [("BUY", 1.5)]
    finally:
        kafka_io.delete_namespace(s)


def test_an_unfinished_action_asks_for_another_reconciliation(fake):
    eng, b = engine_on(fake)
    fake.open_behind("ETHUSDT", 0.5)
    body = exec_helpers.real_error(-2019)
    fake.fault("POST /fapi/v1/order", "error", code=body["code"], msg=body["msg"])   # the flatten is refused
    recs = b.reconcile(eng, T0)
    assert "NOT DONE" in next(r.detail for r in recs if isinstance(r, Alert) and r.kind == "reconcile_flatten")
    assert b.needs_reconcile() and fake.positions["ETHUSDT"] == 0.5
    b.reconcile(eng, T0 + MIN)
    assert not b.needs_reconcile() and fake.positions["ETHUSDT"] == 0
