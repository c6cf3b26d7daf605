"""The Binance broker against the fake trading API: signing, placement, rejections, retries, the
send-once rule after unknown outcomes, rate limits, algo (conditional) orders and reconciliation."""
from __future__ import annotations

import exec_helpers  # noqa: F401  (first: makes `executor` the real package, see its docstring)

import pytest

from executor.brokers.base import FillEvent, OrderUpdate
from executor.brokers.binance import (LIVE_URL, BinanceBroker, BinanceClient, BrokerError, InsufficientMargin,
                                      InvalidApiKey, InvalidSignature, InvalidSymbol, NoSuchOrder, fmt, sign)
from executor.config import ExecutorConfig
from executor.engine import Engine
from executor.instruments import InstrumentBook, load_exchange_info
from infra.settings import Settings
from schemas.trading import Order, Position, client_order_id
from exec_helpers import EXCHANGE_INFO, KEY, MIN, SECRET, T0, bar, fake  # noqa: F401  (fake: fixture)


def make_broker(fake, **kw) -> BinanceBroker:
    kw.setdefault("timeout", 2.0)
    return BinanceBroker(BinanceClient(fake.base_url, KEY, SECRET, **kw), guard_restart=False)   # a fresh account


def entry(symbol="BTCUSDT", qty=0.02, sid="BTCUSDT:1m:1:test", side="BUY", reduce_only=False, leg="entry") -> Order:
    return Order(client_order_id=client_order_id(sid, leg), signal_id=sid, symbol=symbol, leg=leg, side=side,
                 type="MARKET", qty=qty, price=0.0, reduce_only=reduce_only, status="NEW", ts=T0)


def posts(fake, path="/fapi/v1/order"):
    return [p for m, pth, p in fake.requests if m == "POST" and pth == path]


def test_signature_matches_binance_documented_vector():
    secret = "NhqPtmdSJYdKjVHjA7PZj4Mge3R5YNiP1e3UZjInClVN65XAbvqqM6A7H5fATj0j"
    query = "symbol=LTCBTC&side=BUY&type=LIMIT&timeInForce=GTC&quantity=1&price=0.1&recvWindow=5000&timestamp=1499827319559"
    # Binance's docs ("SIGNED Endpoint Examples", `openssl dgst -sha256 -hmac`) give ...acdcab2b053c4b2838bd6b71.
    # The issue text quoted ...acdcadb1f2e4c2e2fb8ca0a5: same first 35 hex digits, a corrupted tail
    # (no HMAC of this input produces it; openssl agrees with the docs).
    assert sign(secret, query) == "c8db56825ae71d6d79447849e617115f4a920fa2acdcab2b053c4b2838bd6b71"


def test_signed_query_layout():
    c = BinanceClient("http://x", KEY, SECRET, clock=lambda: 1499827319.559)
    q = c.signed_query({"symbol": "BTCUSDT", "quantity": fmt(0.001)})
    payload, _, sig = q.rpartition("&signature=")
    assert payload == "symbol=BTCUSDT&quantity=0.001&recvWindow=5000&timestamp=1499827319559"
    assert sig == sign(SECRET, payload)
    assert fmt(0.1 + 0.2) == "0.30000000000000004" and fmt(1e-05) == "0.00001" and fmt(50000.0) == "50000"


def test_market_order_placed_once_with_client_id_and_filled(fake):
    b = make_broker(fake)
    evs = b.submit(entry(), T0)
    upd, fill = evs
    assert isinstance(upd, OrderUpdate) and upd.status == "FILLED" and upd.exchange_order_id
    assert isinstance(fill, FillEvent) and (fill.qty, fill.price) == (0.02, 50_000.0)
    assert fill.fee == pytest.approx(50_000 * 0.02 * 0.0005)
    (sent,) = posts(fake)
    assert sent["newClientOrderId"] == entry().client_order_id and sent["type"] == "MARKET"
    assert sent["newOrderRespType"] == "RESULT" and "reduceOnly" not in sent
    assert fake.positions["BTCUSDT"] == 0.02
    # a restarted executor re-submits the same id: looked up, reported, never sent again
    again = make_broker(fake).submit(entry(), T0)
    assert again[0].status == "FILLED" and len(posts(fake)) == 1
    assert len(fake.orders_with_client_id(entry().client_order_id)) == 1


def test_reduce_only_exit(fake):
    b = make_broker(fake)
    b.submit(entry(), T0)
    evs = b.submit(entry(side="SELL", reduce_only=True, leg="exit"), T0)
    assert evs[0].status == "FILLED" and posts(fake)[-1]["reduceOnly"] == "true"
    assert fake.positions["BTCUSDT"] == 0
    # nothing left to reduce: -2022 -> REJECTED with the code in the reason
    rej = b.submit(entry(sid="BTCUSDT:1m:2:test", side="SELL", reduce_only=True, leg="exit"), T0)
    assert rej[0].status == "REJECTED" and rej[0].reason.startswith("-2022")


@pytest.mark.parametrize("order,code", [
    (entry(symbol="FOOUSDT"), -1121),            # invalid symbol
    (entry(qty=100.0), -2019),                    # margin insufficient
    (entry(qty=0.0001 * 1), -1111),               # precision (step 0.001)
    (entry(qty=0.0002 * 1 + 0.0), -1111),
])
def test_rejections_become_rejected_orders(fake, order, code):
    evs = make_broker(fake).submit(order, T0)
    assert len(evs) == 1 and evs[0].status == "REJECTED" and evs[0].reason.startswith(str(code))
    assert not fake.orders


def test_error_codes_map_to_exceptions(fake):
    c = BinanceClient(fake.base_url, KEY, SECRET)
    with pytest.raises(InvalidSymbol) as e:
        c.request("POST", "/fapi/v1/order", {"symbol": "FOOUSDT", "side": "BUY", "type": "MARKET", "quantity": "1"}, is_order=True)
    assert e.value.code == -1121 and e.value.http_status == 400
    with pytest.raises(InsufficientMargin):
        c.request("POST", "/fapi/v1/order", {"symbol": "BTCUSDT", "side": "BUY", "type": "MARKET", "quantity": "100"}, is_order=True)
    with pytest.raises(NoSuchOrder):
        c.request("GET", "/fapi/v1/order", {"symbol": "BTCUSDT", "origClientOrderId": "nope"})
    with pytest.raises(InvalidSignature):
        BinanceClient(fake.base_url, KEY, "wrong-secret").request("GET", "/fapi/v1/openOrders")
    with pytest.raises(InvalidApiKey):
        BinanceClient(fake.base_url, "wrong-key", SECRET).request("GET", "/fapi/v1/openOrders")


def test_timestamp_outside_recv_window_resyncs_and_retries_once(fake):
    fake.clock_skew_ms = 20_000                     # the exchange is 20 s ahead of us
    b = make_broker(fake)
    evs = b.submit(entry(), T0)
    assert evs[0].status == "FILLED"
    assert 19_000 < b.client.time_offset_ms < 21_000
    assert len(fake.orders) == 1


def test_timeout_after_accept_is_resolved_by_lookup(fake):
    fake.fault("POST /fapi/v1/order", "accept_then_hang", seconds=3)
    b = make_broker(fake, timeout=0.5)
    evs = b.submit(entry(), T0)
    assert evs[0].status == "FILLED" and isinstance(evs[1], FillEvent)
    assert b.sends == 1 and len(posts(fake)) == 1
    assert len(fake.orders_with_client_id(entry().client_order_id)) == 1


@pytest.mark.parametrize("code", [-1006, -1007])
def test_unknown_outcome_after_accept_is_not_resent(fake, code):
    fake.fault("POST /fapi/v1/order", "accept_then_error", code=code)
    b = make_broker(fake)
    assert b.submit(entry(), T0)[0].status == "FILLED"
    assert b.sends == 1 and len(fake.orders_with_client_id(entry().client_order_id)) == 1


@pytest.mark.parametrize("code,status", [(-1006, 500), (-1000, 503), (-1007, 504)])
def test_unknown_outcome_not_executed_is_resent_once_after_recv_window(fake, code, status):
    fake.fault("POST /fapi/v1/order", "error", code=code, status=status)      # 5xx without execution
    b = make_broker(fake, recv_window=1000)
    b.unknown_margin_s = 0.3
    assert b.submit(entry(), T0)[0].status == "FILLED"
    first, second = posts(fake)                                 # the first POST was refused unprocessed
    assert b.sends == 2 and first["newClientOrderId"] == second["newClientOrderId"] == entry().client_order_id
    # not re-sent while the first could still execute: timestamp + recvWindow + margin
    assert int(second["timestamp"]) - int(first["timestamp"]) >= 1000 + 300
    assert len(fake.orders_with_client_id(entry().client_order_id)) == 1


@pytest.mark.parametrize("code,status", [(-1000, 503), (-1006, 502), (0, 500)])
def test_5xx_after_execution_is_resolved_by_lookup_not_resent(fake, code, status):
    fake.fault("POST /fapi/v1/order", "accept_then_error", code=code, status=status)   # 5xx WITH execution
    b = make_broker(fake, recv_window=1000)
    evs = b.submit(entry(), T0)
    assert evs[0].status == "FILLED" and isinstance(evs[1], FillEvent)
    assert b.sends == 1 and len(posts(fake)) == 1 and fake.positions["BTCUSDT"] == 0.02


def test_late_execution_after_client_timeout_gives_one_order_and_equal_positions(fake):
    """The measured duplicate: 1 s client timeout, the exchange executes the request 1.5 s late.
    Lookups right after the timeout say -2013; a resend then would double the position."""
    fake.fault("POST /fapi/v1/order", "execute_late", seconds=1.5)
    b = make_broker(fake, timeout=1.0, recv_window=3000)
    b.unknown_margin_s = 0.3
    eng = Engine(ExecutorConfig(), b, InstrumentBook(load_exchange_info(EXCHANGE_INFO)))
    out = eng.process(bar("BTCUSDT", T0, 50_000, 50_000, 50_000, 50_000, "long", 0.9, 50_000, 49_500.04, 51_000))
    assert fake.late_executions == ["POST /fapi/v1/order"]
    assert len(posts(fake)) == 1 and len(fake.orders) == 1
    pos = [r for r in out if isinstance(r, Position)][-1]
    assert pos.status == "open" and fake.positions["BTCUSDT"] == pos.qty == 0.02
    # the lookup loop ran while the late request was in transit (it found nothing at first)
    lookups = [p for m, pth, p in fake.requests if m == "GET" and pth == "/fapi/v1/order"]
    assert len(lookups) >= 2


def test_request_arriving_after_recv_window_never_executes_and_is_resent_with_same_id(fake):
    fake.fault("POST /fapi/v1/order", "execute_late", seconds=1.6)
    b = make_broker(fake, timeout=0.5, recv_window=1000)
    b.unknown_margin_s = 0.3
    assert b.submit(entry(), T0)[0].status == "FILLED"
    assert b.sends == 2 and len(fake.orders_with_client_id(entry().client_order_id)) == 1
    assert fake.positions["BTCUSDT"] == 0.02
    # the held request reached the exchange after its recvWindow: refused (-1021), never executed
    assert [p["newClientOrderId"] for p in posts(fake)] == [entry().client_order_id]


def test_algo_order_unknown_outcome_resolved_by_client_algo_id(fake):
    fake.fault("POST /fapi/v1/algoOrder", "execute_late", seconds=1.2)
    b = make_broker(fake, timeout=0.5, recv_window=3000)
    b.unknown_margin_s = 0.3
    b.submit(entry(), T0)
    stop = Order(client_order_id=client_order_id("BTCUSDT:1m:1:test", "stop"), signal_id="BTCUSDT:1m:1:test",
                 symbol="BTCUSDT", leg="stop", side="SELL", type="STOP_MARKET", qty=0.02, price=49_000.0,
                 reduce_only=True, status="NEW", ts=T0)
    evs = b.submit(stop, T0)
    assert evs[0].status == "NEW" and evs[0].exchange_order_id
    assert b.sends == 2 and len([a for a in fake.algos.values() if a["clientAlgoId"] == stop.client_order_id]) == 1


def test_429_waits_retry_after(fake):
    slept = []
    fake.fault("POST /fapi/v1/order", "rate_limit", retry_after=2)
    b = make_broker(fake, sleep=slept.append)
    assert b.submit(entry(), T0)[0].status == "FILLED"
    assert slept == [2.0]


def test_limit_headers_are_read(fake):
    b = make_broker(fake)
    fake.weight_used, fake.order_count = 1234, 7
    b.client.request("GET", "/fapi/v1/openOrders")
    assert (b.client.used_weight_1m, b.client.order_count_10s, b.client.order_count_1m) == (1235, 7, 7)


def test_weight_and_order_budgets_wait():
    slept, now = [], [1_000_045.0]                  # 25 s into a minute, 5 s into a 10 s window

    def sleep(s):
        slept.append(s)
        now[0] += s
    c = BinanceClient("http://unused", KEY, SECRET, weight_limit=100, orders_10s=2, orders_1m=5,
                      sleep=sleep, clock=lambda: now[0])
    c._headers({"X-MBX-USED-WEIGHT-1M": "99", "X-MBX-ORDER-COUNT-10S": "1", "X-MBX-ORDER-COUNT-1M": "1"})
    c._throttle(is_order=False, weight=1)           # 99 + 1 <= 100: go
    assert slept == []
    c._throttle(is_order=False, weight=5)           # would cross 100: wait for the next minute
    assert slept == [35.0]
    c._headers({"X-MBX-USED-WEIGHT-1M": "1", "X-MBX-ORDER-COUNT-10S": "2", "X-MBX-ORDER-COUNT-1M": "2"})
    now[0] += 3
    c._throttle(is_order=True, weight=0)            # 2 orders in this 10 s window: wait for the next one
    assert slept == [35.0, 7.0]
    c._headers({"X-MBX-USED-WEIGHT-1M": "1", "X-MBX-ORDER-COUNT-10S": "0", "X-MBX-ORDER-COUNT-1M": "5"})
    c._throttle(is_order=True, weight=0)            # the per-minute order budget is spent
    assert slept == [35.0, 7.0, 50.0]               # at 10 s into the minute


def test_engine_with_binance_broker_places_algo_stop_target_and_sees_trigger(fake):
    cfg = ExecutorConfig()
    b = make_broker(fake)
    eng = Engine(cfg, b, InstrumentBook(load_exchange_info(EXCHANGE_INFO)))
    out = eng.process(bar("BTCUSDT", T0, 50_000, 50_000, 50_000, 50_000, "long", 0.9, 50_000, 49_500.04, 51_000))
    pos = [r for r in out if isinstance(r, Position)]
    assert pos and pos[0].status == "open" and pos[0].entry_price == 50_000.0 and pos[0].qty == 0.02
    algos = {a["clientAlgoId"]: a for a in fake.algos.values()}
    sid = pos[0].signal_id
    stop, target = algos[client_order_id(sid, "stop")], algos[client_order_id(sid, "target")]
    assert (stop["type"], stop["triggerPrice"], stop["side"], stop["reduceOnly"]) == ("STOP_MARKET", "49500", "SELL", True)
    assert (target["type"], target["triggerPrice"]) == ("TAKE_PROFIT_MARKET", "51000")
    assert [p["algoType"] for p in posts(fake, "/fapi/v1/algoOrder")] == ["CONDITIONAL", "CONDITIONAL"]
    fake.trigger("BTCUSDT", 49_400.0)                # the stop fires at the exchange
    out = eng.process(bar("BTCUSDT", T0 + MIN, 50_000, 50_000, 49_400, 49_400))
    closed = [r for r in out if isinstance(r, Position)][-1]
    assert (closed.status, closed.exit_reason, closed.exit_price) == ("closed", "stop", 49_400.0)
    assert target["algoStatus"] == "CANCELED" and fake.positions["BTCUSDT"] == 0
    recs = b.reconcile(eng, T0 + 2 * MIN)
    assert [r.detail for r in recs if r.kind == "reconciled"] == ["exchange and executor agree | no action"]
    fake.open_behind("ETHUSDT", 1.0)                 # something the executor does not know about
    recs = b.reconcile(eng, T0 + 3 * MIN)
    assert [r.detail for r in recs if getattr(r, "kind", "") == "reconciled"] == \
        ["ETHUSDT: exchange 1 vs executor 0 | flatten=1"]


def test_from_settings_guards_live_trading():
    s = Settings(api_key=KEY, api_secret=SECRET)
    assert BinanceBroker.from_settings(s).client.base_url == "https://testnet.binancefuture.com"
    with pytest.raises(BrokerError, match="SMC_LIVE_TRADING"):
        BinanceBroker.from_settings(s, live=True)
    assert BinanceBroker.from_settings(s.with_(live_trading=True), live=True).client.base_url == LIVE_URL
    with pytest.raises(BrokerError, match="--live"):
        BinanceBroker.from_settings(s.with_(binance_trade_url=LIVE_URL))
    with pytest.raises(BrokerError, match="BINANCE_API_KEY"):
        BinanceBroker.from_settings(Settings())


def test_one_pooled_keep_alive_session_and_budgets_from_the_headers(fake):
    pooled = make_broker(fake)
    for i in range(12):
        pooled.submit(entry(sid=f"BTCUSDT:1m:{i}:pool", side="BUY" if i % 2 == 0 else "SELL"), T0)
    assert len(fake.peers) == 1                                # 24 requests (lookup + POST each), one connection
    u = fake.last_usage                                        # the budgets are the exchange's own figures
    assert (pooled.client.used_weight_1m, pooled.client.order_count_10s, pooled.client.order_count_1m) == \
        (int(u["X-MBX-USED-WEIGHT-1M"]), int(u["X-MBX-ORDER-COUNT-10S"]), int(u["X-MBX-ORDER-COUNT-1M"]))
    assert fake.order_count == 12 and 0 < pooled.client.order_count_1m <= 12
    fake.peers.clear()
    single = BinanceBroker(BinanceClient(fake.base_url, KEY, SECRET, timeout=2.0, pooled=False), guard_restart=False)
    for i in range(3):
        single.submit(entry(sid=f"BTCUSDT:1m:{i}:single", side="BUY" if i % 2 == 0 else "SELL"), T0)
    assert len(fake.peers) == 6                                # the baseline: a connection per request
    pooled.close()
    assert pooled.client._session is None
