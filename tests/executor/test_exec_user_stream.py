"""The Binance user data stream: the pure parser on real-shaped payloads (Binance's doc examples in
tests/data/binance), and the adapter on real loopback sockets against the fake exchange's listenKey
endpoints and websocket: fills and stop triggers learned by push, disconnects and listenKey expiry
followed by a reconnect whose REST reconciliation finds what happened while the socket was down."""
from __future__ import annotations

import exec_helpers  # noqa: F401  (first: makes `executor` the real package, see its docstring)

import time

import orjson
import pytest

from executor.brokers.base import FillEvent, OrderUpdate
from executor.brokers.binance import BinanceBroker, BinanceClient
from executor.config import ExecutorConfig
from executor.engine import Engine
from executor.instruments import InstrumentBook, load_exchange_info
from executor.user_stream import (AccountUpdate, AlgoUpdate, ListenKeyExpired, MalformedEvent, OrderTradeUpdate,
                                  ParseStats, broker_events, parse_event)
from executor.user_stream_ws import UserDataStream
from schemas.trading import Position
from exec_helpers import BINANCE_DATA, EXCHANGE_INFO, KEY, MIN, SECRET, T0, bar, fake  # noqa: F401  (fake: fixture)


def sample(name: str) -> dict:
    return orjson.loads((BINANCE_DATA / name).read_bytes())


# --- the pure parser ---------------------------------------------------------------------------------
def test_order_trade_update_is_parsed_from_the_docs_payload():
    raw = sample("futures_order_update_trade.json")
    u = parse_event(raw)
    assert isinstance(u, OrderTradeUpdate)
    o = raw["o"]
    assert (u.symbol, u.client_order_id, u.status, u.execution_type, u.order_type) == (o["s"], o["c"], o["X"], o["x"], o["o"])
    assert (u.executed_qty, u.avg_price, u.last_qty, u.last_price) == (float(o["z"]), float(o["ap"]), float(o["l"]), float(o["L"]))
    assert u.reduce_only is o["R"] and u.order_id == str(o["i"]) and u.commission == float(o["n"])
    for name in ("futures_order_update_new.json", "futures_order_update_trade_partial.json",
                 "futures_order_update_adl.json", "futures_order_update_calculated.json"):
        assert isinstance(parse_event(sample(name)), OrderTradeUpdate), name


def test_account_and_algo_updates_and_listen_key_expired_are_parsed():
    raw = sample("futures_account_update.json")
    a = parse_event(raw)
    assert isinstance(a, AccountUpdate) and a.reason == raw["a"]["m"]
    assert [(p.symbol, p.amount, p.entry_price, p.position_side) for p in a.positions] == \
        [(p["s"], float(p["pa"]), float(p["ep"]), p["ps"]) for p in raw["a"]["P"]]
    assert [(b.asset, b.wallet_balance) for b in a.balances] == [(b["a"], float(b["wb"])) for b in raw["a"]["B"]]
    for name, status in (("futures_algo_update_new.json", "NEW"), ("futures_algo_update_canceled.json", "CANCELED")):
        g = parse_event(sample(name))
        assert isinstance(g, AlgoUpdate) and g.status == status and g.client_algo_id == "Q5xaq5EGKgXXa0fD7fs0Ip"
        assert g.trigger_price == 750.0 and g.algo_id == "2148719"
    assert parse_event({"e": "listenKeyExpired", "E": 1576653824250, "listenKey": "x"}) == ListenKeyExpired(1576653824250)


def test_unknown_events_are_counted_and_malformed_ones_name_the_field():
    stats = ParseStats()
    assert parse_event({"e": "MARGIN_CALL", "E": 1}, stats) is None
    assert parse_event({"e": "TRADE_LITE", "E": 1}, stats) is None
    assert parse_event({"e": "MARGIN_CALL", "E": 2}, stats) is None
    assert stats.unknown == {"MARGIN_CALL": 2, "TRADE_LITE": 1}
    raw = sample("futures_order_update_trade.json")
    raw["o"]["z"] = "lots"
    with pytest.raises(MalformedEvent, match=r"'z'.*'lots'"):
        parse_event(raw)
    raw = sample("futures_algo_update_new.json")
    del raw["o"]["caid"]
    with pytest.raises(MalformedEvent, match="'caid' missing"):
        parse_event(raw)
    with pytest.raises(MalformedEvent, match="'e' missing"):
        parse_event({"E": 1})


def test_broker_events_map_only_the_brokers_live_orders_and_only_final_states():
    fin = sample("futures_algo_update_new.json")
    fin["o"].update(X="FINISHED", ai="123", ap="749.5", aq="0.01")
    u = parse_event(fin)
    assert broker_events(u, {}, 0.0005) == []                     # not ours: nothing
    up, fill = broker_events(u, {"Q5xaq5EGKgXXa0fD7fs0Ip": "target"}, 0.0005)
    assert isinstance(up, OrderUpdate) and up.status == "FILLED"
    assert isinstance(fill, FillEvent) and (fill.qty, fill.price, fill.trigger) == (0.01, 749.5, "target")
    assert fill.fee == pytest.approx(749.5 * 0.01 * 0.0005)
    assert broker_events(parse_event(sample("futures_algo_update_new.json")), {"Q5xaq5EGKgXXa0fD7fs0Ip": "stop"}, 0.0) == []
    (c,) = broker_events(parse_event(sample("futures_algo_update_canceled.json")), {"Q5xaq5EGKgXXa0fD7fs0Ip": "stop"}, 0.0)
    assert c.status == "CANCELED"


# --- the adapter on loopback sockets ------------------------------------------------------------------
def wait_for(cond, timeout=10.0, what=""):
    t = time.monotonic() + timeout
    while time.monotonic() < t:
        if cond():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def live(fake):
    """(engine, broker, stream, fake): a long BTCUSDT position opened through REST, the stream connected
    and the start-up reconciliation done."""
    b = BinanceBroker(BinanceClient(fake.base_url, KEY, SECRET, timeout=2.0, recv_window=1000), unknown_margin_s=0.3,
                      guard_restart=False)
    eng = Engine(ExecutorConfig(), b, InstrumentBook(load_exchange_info(EXCHANGE_INFO)))
    ws_url = fake.base_url.replace("http://", "ws://")
    s = UserDataStream(BinanceClient(fake.base_url, KEY, SECRET, timeout=2.0), b, ws_url=ws_url, keepalive_s=0.2,
                       backoff_s=0.1, max_backoff_s=0.4)
    s.start()
    wait_for(lambda: b.stream_live, what="the first connection")
    eng.process(bar("BTCUSDT", T0, 50_000, 50_000, 50_000, 50_000, "long", 0.9, 50_000, 49_500.04, 51_000))
    b.reconcile(eng, T0 + 1)
    yield eng, b, s, fake
    s.stop()


def open_positions(eng):
    return [p for p in eng.portfolio.positions.values() if p.status in ("open", "closing")]


def lookups_of_algos(fake):
    return sum(1 for m, p, _ in fake.requests if (m, p) == ("GET", "/fapi/v1/algoOrder"))


def test_fill_by_push_matches_the_exchange_position(live):
    eng, b, s, fake = live
    (pos,) = open_positions(eng)
    # the entry's ACCOUNT_UPDATE arrived by push: the same signed amount as the engine holds
    wait_for(lambda: any(isinstance(u, AccountUpdate) for u in b.pushed), what="ACCOUNT_UPDATE")
    acct = [u for u in b.pushed if isinstance(u, AccountUpdate)][-1]
    assert acct.positions[0].amount == pos.qty == fake.positions["BTCUSDT"]
    # the target fills at the exchange: learned by push, no algo lookup at the next bar
    polled = lookups_of_algos(fake)
    fake.trigger("BTCUSDT", 51_050.0)
    wait_for(lambda: any(isinstance(u, AlgoUpdate) and u.status == "FINISHED" for u in list(b.pushed)), what="ALGO_UPDATE")
    out = eng.process(bar("BTCUSDT", T0 + MIN, 51_050, 51_050, 51_050, 51_050))
    closed = [r for r in out if isinstance(r, Position) and r.status == "closed"]
    assert [c.exit_reason for c in closed] == ["target"] and closed[0].exit_price == 51_050.0
    assert open_positions(eng) == [] and fake.positions["BTCUSDT"] == 0
    assert lookups_of_algos(fake) == polled


def test_stop_triggered_on_the_exchange_is_learned_by_push_and_closes_the_position(live):
    eng, b, s, fake = live
    polled = lookups_of_algos(fake)
    fake.trigger("BTCUSDT", 49_400.0)
    wait_for(lambda: any(isinstance(u, AlgoUpdate) and u.status == "FINISHED" for u in list(b.pushed)), what="ALGO_UPDATE")
    out = eng.process(bar("BTCUSDT", T0 + MIN, 49_400, 49_400, 49_400, 49_400))
    closed = [r for r in out if isinstance(r, Position) and r.status == "closed"]
    assert [(c.exit_reason, c.exit_price) for c in closed] == [("stop", 49_400.0)]
    assert open_positions(eng) == [] and fake.positions["BTCUSDT"] == 0
    assert lookups_of_algos(fake) == polled
    assert fake.open_algos("BTCUSDT") == []        # the target sibling cancelled


def test_disconnect_reconnect_and_reconcile_find_a_fill_missed_while_down(live):
    eng, b, s, fake = live
    assert not b.needs_reconcile()
    fake.drop_stream(down_s=0.6)
    wait_for(lambda: not b.stream_live, what="the drop")
    fake.trigger("BTCUSDT", 49_400.0)              # the stop fills while nobody listens: pushed to no one
    wait_for(lambda: any(e["e"] == "ALGO_UPDATE" for e in fake.lost), what="the lost event")
    assert len(open_positions(eng)) == 1           # the engine has not learned it
    wait_for(lambda: s.connects >= 2 and b.stream_live, what="the reconnect")
    assert b.needs_reconcile()                     # every (re)connect makes a reconciliation due
    b.reconcile(eng, T0 + MIN)
    assert open_positions(eng) == [] and fake.positions["BTCUSDT"] == 0
    assert not b.needs_reconcile()


def test_listen_key_expiry_gets_a_new_key_and_nothing_is_lost(live):
    eng, b, s, fake = live
    first = s.listen_key
    fake.expire_listen_key()
    wait_for(lambda: s.expired == 1 and s.connects >= 2 and b.stream_live, what="the new key's connection")
    assert s.listen_key != first and s.keys_created == 2
    assert b.needs_reconcile()
    b.reconcile(eng, T0 + MIN)
    # after the reconnect, the stop's trigger arrives by push on the new key
    fake.trigger("BTCUSDT", 49_400.0)
    wait_for(lambda: any(isinstance(u, AlgoUpdate) and u.status == "FINISHED" for u in list(b.pushed)), what="ALGO_UPDATE")
    out = eng.process(bar("BTCUSDT", T0 + MIN, 49_400, 49_400, 49_400, 49_400))
    assert [r.exit_reason for r in out if isinstance(r, Position) and r.status == "closed"] == ["stop"]


def test_refused_keepalive_gets_a_new_key_and_reconnects(live):
    eng, b, s, fake = live
    wait_for(lambda: fake.keepalives >= 1, what="a keepalive")
    fake.refuse_keepalive(1)                       # the exchange answers -1125 "This listenKey does not exist."
    wait_for(lambda: s.keepalive_refused >= 1 and s.connects >= 2 and b.stream_live, what="the new connection")
    assert s.keys_created >= 2 and b.needs_reconcile()


def test_broker_from_settings_starts_its_stream_on_the_configured_url_and_close_stops_it(fake):
    from infra.settings import Settings
    s = Settings(api_key=KEY, api_secret=SECRET, binance_trade_url=fake.base_url, broker="binance",
                 binance_user_ws_url=fake.base_url.replace("http://", "ws://"), user_stream_keepalive_s=60.0)
    b = BinanceBroker.from_settings(s)
    assert b._stream_ws_url.startswith("ws://127.0.0.1")
    assert BinanceBroker.from_settings(s.with_(binance_user_ws_url=""))._stream_ws_url == "wss://fstream.binancefuture.com"
    b.reconcile_due = False
    stream = b.start_user_stream()
    try:
        wait_for(lambda: b.stream_live and fake.stream_connects == 1, what="the connection")
        assert b.needs_reconcile() and stream.keepalive_s == 60.0
    finally:
        b.close()
    assert b.stream is None and not stream._thread.is_alive()
    wait_for(lambda: not fake.streams, what="the socket closed at the exchange")


def test_a_malformed_or_unknown_event_on_the_socket_is_counted_and_the_stream_goes_on(live):
    eng, b, s, fake = live
    fake.push({"e": "ORDER_TRADE_UPDATE", "E": 1, "T": 1, "o": {"s": "BTCUSDT"}})
    fake.push({"e": "MARGIN_CALL", "E": 1})
    wait_for(lambda: s.malformed == 1 and s.stats.unknown == {"MARGIN_CALL": 1}, what="the bad events")
    fake.trigger("BTCUSDT", 49_400.0)
    wait_for(lambda: any(isinstance(u, AlgoUpdate) and u.status == "FINISHED" for u in list(b.pushed)), what="ALGO_UPDATE")
    assert s.connects == 1


def test_positions_changed_behind_the_executors_back_are_seen_by_push_and_reconciled(live):
    """ACCOUNT_UPDATE positions are watched against the executor's (executor.reconcile.PositionWatch):
    its own fill agrees; a position closed by hand and one opened from another client differ past the
    grace, make a reconciliation due, and the reconciliation settles both."""
    eng, b, s, fake = live
    b.position_watch.grace_s = 0.3
    (pos,) = open_positions(eng)
    wait_for(lambda: any(isinstance(u, AccountUpdate) for u in list(b.pushed)), what="the entry's ACCOUNT_UPDATE")
    time.sleep(0.4)
    assert b.position_drift(eng) == [] and not b.needs_reconcile()     # the executor's own fill agrees
    fake.open_behind("BTCUSDT", -pos.qty)                               # closed by hand in the web UI
    fake.open_behind("ETHUSDT", 0.5)                                    # opened from another client
    wait_for(lambda: {"BTCUSDT", "ETHUSDT"} <= set(b.position_watch.pushed), what="the two ACCOUNT_UPDATEs")
    assert b.position_drift(eng) == []                                  # within the grace: a fill may be on its way
    time.sleep(0.4)
    assert b.position_drift(eng) == [("BTCUSDT", 0.0, pos.qty), ("ETHUSDT", 0.5, 0.0)]
    assert b.needs_reconcile()
    b.reconcile(eng, T0 + MIN)
    assert open_positions(eng) == []                                    # dropped in the books (not held)
    assert fake.positions["ETHUSDT"] == 0 and fake.positions["BTCUSDT"] == 0   # the foreign one flattened
    assert not b.needs_reconcile()
