"""Protection invariant: a position is never left without a working stop. A rejected / failed /
unknown stop is re-placed once at a corrected price or the position is flattened (MARKET
reduce-only); every step is an Alert record. Against the fake exchange with the real error bodies,
and with a scripted broker for the engine's state machine."""
from __future__ import annotations

import exec_helpers  # noqa: F401  (first: makes `executor` the real package, see its docstring)

import pytest

from executor.brokers.base import Broker, BrokerError, FillEvent, OrderUpdate
from executor.brokers.binance import BinanceBroker, BinanceClient
from executor.config import ExecutorConfig
from executor.engine import Engine
from executor.instruments import InstrumentBook, load_exchange_info
from executor.protection import corrected_stop, next_protective_step
from schemas.audit import TABLES
from schemas.trading import Alert, Order, Position, client_order_id, decode_alert, encode
from exec_helpers import EXCHANGE_INFO, KEY, MIN, SECRET, T0, bar, fake, real_error  # noqa: F401  (fake: fixture)


def long_setup(t=T0):
    return bar("BTCUSDT", t, 50_000, 50_000, 50_000, 50_000, "long", 0.9, 50_000, 49_500.04, 51_000)


def alerts(out) -> list[str]:
    return [r.kind for r in out if isinstance(r, Alert)]


# --- the pure rule ----------------------------------------------------------------------------------
def test_corrected_stop_rounds_away_from_the_market_and_checks_the_mark_side():
    assert corrected_stop("long", 49_500.04, 50_000, 0.1) == 49_500.0
    assert corrected_stop("short", 50_500.04, 50_000, 0.1) == 50_500.1
    assert corrected_stop("long", 50_010.0, 50_000, 0.1) is None          # would trigger at once
    assert corrected_stop("short", 49_990.0, 50_000, 0.1) is None
    assert corrected_stop("long", 0.0, 50_000, 0.1) is None
    assert next_protective_step("stop", "long", 49_500.04, 50_000, 0.1) == ("replace", 49_500.0)
    assert next_protective_step("stop2", "long", 49_500.0, 50_000, 0.1) == ("flatten", 0.0)   # one re-place only


def test_alert_has_an_audit_table_and_round_trips():
    cols = dict(TABLES["alerts"].columns())
    assert cols["alert_id"] == "String" and cols["ts"] == "Int64" and TABLES["alerts"].topic == "alerts"
    a = Alert("stop_rejected:x:1", "stop_rejected", "BTCUSDT", "s", "x", 1, "-4014 Price not increased by tick size.")
    assert decode_alert(encode(a)) == a


# --- against the fake exchange ---------------------------------------------------------------------
def engine_on(fake, **kw) -> Engine:
    b = BinanceBroker(BinanceClient(fake.base_url, KEY, SECRET, timeout=2.0, recv_window=1000), unknown_margin_s=0.3,
                      guard_restart=False)
    return Engine(ExecutorConfig(**kw), b, InstrumentBook(load_exchange_info(EXCHANGE_INFO)))


def open_stops(fake) -> list[dict]:
    return [a for a in fake.algos.values() if a["algoStatus"] == "NEW" and a["type"] == "STOP_MARKET"]


@pytest.mark.parametrize("code,status", [(-4014, 400), (-2019, 400), (-5000, 404), (-1022, 400)])
def test_rejected_stop_is_replaced_and_the_position_stays_protected(fake, code, status):
    body = real_error(code)
    fake.fault("POST /fapi/v1/algoOrder", "error", code=body["code"], msg=body["msg"], status=status)
    eng = engine_on(fake)
    out = eng.process(long_setup())                     # never raises, whatever the stop's error
    kinds = alerts(out)
    assert kinds[kinds.index("stop_rejected") + 1] == "stop_replaced"
    assert str(body["code"]) in next(r.detail for r in out if isinstance(r, Alert) and r.kind == "stop_rejected")
    (stop,) = open_stops(fake)
    assert stop["clientAlgoId"] == client_order_id(long_setup().signal_id, "stop2") and stop["triggerPrice"] == "49500"
    pos = [r for r in out if isinstance(r, Position)][-1]
    assert pos.status == "open" and fake.positions["BTCUSDT"] == pos.qty


@pytest.mark.parametrize("first,second", [(-4014, -2019), (-2019, -5000)])
def test_stop_failing_twice_flattens_with_market_reduce_only(fake, first, second):
    for code in (first, second):
        b = real_error(code)
        fake.fault("POST /fapi/v1/algoOrder", "error", code=b["code"], msg=b["msg"], status=404 if code == -5000 else 400)
    eng = engine_on(fake)
    out = eng.process(long_setup())
    assert alerts(out) == ["stop_rejected", "stop_replaced", "stop_rejected", "flattened_unprotected"] or \
        alerts(out) == ["stop_rejected", "stop_replaced", "broker_error", "stop_rejected", "flattened_unprotected"]
    flat = [p for m, pth, p in fake.requests if m == "POST" and pth == "/fapi/v1/order"][-1]
    assert (flat["type"], flat["reduceOnly"], flat["side"]) == ("MARKET", "true", "SELL")
    pos = [r for r in out if isinstance(r, Position)][-1]
    assert (pos.status, pos.exit_reason) == ("closed", "unprotected")
    assert not [a for a in fake.algos.values() if a["type"] == "TAKE_PROFIT_MARKET"]   # no target for a flat position
    assert fake.positions["BTCUSDT"] == 0 and not eng.portfolio.open_count()


def test_stop_with_unknown_outcome_flattens_instead_of_doubling_the_stop(fake):
    for _ in range(2):                                  # the POST and its one deliberate resend: 503, not executed
        fake.fault("POST /fapi/v1/algoOrder", "error", code=-1000, msg="An unknown error occurred while processing the request.", status=503)
    eng = engine_on(fake)
    out = eng.process(long_setup())
    assert "flattened_unprotected" in alerts(out) and "stop_replaced" not in alerts(out)
    assert fake.positions["BTCUSDT"] == 0 and not open_stops(fake)


# --- the engine's state machine with a scripted broker ------------------------------------------
class ScriptedBroker(Broker):
    """MARKET orders fill at once at the last bar's open; per leg a queue of outcomes:
    ok | reject | raise | unknown."""

    def __init__(self, script: dict[str, list[str]], on_submit=None) -> None:
        self.script = {k: list(v) for k, v in script.items()}
        self.price = 0.0
        self.on_submit = on_submit
        self.sent: list[Order] = []

    def on_bar_open(self, bar) -> list:
        self.price = bar.open
        return []

    def submit(self, order: Order, ts: int, timeframe: str = "", position_side: str = "") -> list:
        self.sent.append(order)
        if self.on_submit:
            self.on_submit(order)
        outcome = (self.script.get(order.leg) or ["ok"]).pop(0) if self.script.get(order.leg) else "ok"
        cid = order.client_order_id
        if outcome == "reject":
            return [OrderUpdate(cid, "REJECTED", ts, reason="-4014 Price not increased by tick size.")]
        if outcome == "raise":
            raise BrokerError("Binance -1022 (HTTP 400) on POST /fapi/v1/order: Signature for this request is not valid.")
        if outcome == "unknown":
            return [OrderUpdate(cid, "NEW", ts, reason="unknown_outcome")]
        if order.type == "MARKET":
            return [OrderUpdate(cid, "FILLED", ts), FillEvent(cid, order.qty, self.price or 50_000.0, 0.0, ts)]
        return [OrderUpdate(cid, "NEW", ts)]

    def cancel(self, order: Order, ts: int) -> list:
        return [OrderUpdate(order.client_order_id, "CANCELED", ts)]


def test_failed_flatten_is_retried_at_the_next_bar():
    b = ScriptedBroker({"stop": ["reject"], "stop2": ["reject"], "exit": ["raise"]})
    eng = Engine(ExecutorConfig(), b, InstrumentBook(load_exchange_info(EXCHANGE_INFO)))
    out = eng.process(long_setup())
    assert alerts(out)[-2:] == ["broker_error", "flatten_failed"]
    assert eng.portfolio.open_count() == 1                      # still open, still unprotected
    out = eng.process(bar("BTCUSDT", T0 + MIN, 50_000, 50_000, 50_000, 50_000))
    assert "flattened_unprotected" in alerts(out) and eng.portfolio.open_count() == 0
    # the target goes out after the failed flatten (the position is open again), not after a good one
    assert [o.leg for o in b.sent] == ["entry", "stop", "stop2", "exit", "target", "exit"]


def test_slow_stop_acknowledgement_beyond_the_bound_is_an_alert():
    now = [0.0]

    def slow(order):                                          # the stop's round trip takes 9 s
        if order.leg == "stop":
            now[0] += 9.0
    b = ScriptedBroker({}, on_submit=slow)
    eng = Engine(ExecutorConfig(protect_within_ms=5_000), b, InstrumentBook(load_exchange_info(EXCHANGE_INFO)),
                 clock=lambda: now[0])
    out = eng.process(long_setup())
    (a,) = [r for r in out if isinstance(r, Alert)]
    assert a.kind == "naked_bound_exceeded" and "9000 ms" in a.detail and eng.portfolio.open_count() == 1
    fast = Engine(ExecutorConfig(protect_within_ms=10_000), ScriptedBroker({}, on_submit=slow),
                  InstrumentBook(load_exchange_info(EXCHANGE_INFO)), clock=lambda: now[0])
    assert alerts(fast.process(long_setup())) == []


def test_settings_under_which_a_stop_can_outlast_the_bound_are_refused():
    from executor.protection import check_protection_bound, worst_unplaced_stop_s
    assert worst_unplaced_stop_s(3.0, 2500, 1.0) == 7.0          # the defaults: within the 8 s bound
    check_protection_bound(3.0, 2500, 1.0, 8_000)
    assert worst_unplaced_stop_s(10.0, 5000, 1.0) == 20.0        # the former defaults
    with pytest.raises(ValueError, match="SMC_BINANCE_TIMEOUT_S=10 and SMC_BINANCE_RECV_WINDOW_MS=5000.*20 s"):
        check_protection_bound(10.0, 5000, 1.0, 8_000)
    with pytest.raises(ValueError, match="SMC_EXEC_PROTECT_WITHIN_MS=8000"):
        check_protection_bound(0.3, 4000, 1.0, 8_000)             # recvWindow + margin dominates: 10 s


def test_the_service_refuses_a_binance_broker_beyond_the_bound():
    from executor.brokers.base import BrokerError
    from executor.config import ExecutorConfig
    from executor.service import make_broker
    from infra.settings import load_settings
    s = load_settings(env={"SMC_BROKER": "binance", "BINANCE_API_KEY": "k", "BINANCE_API_SECRET": "s",
                           "SMC_BINANCE_TRADE_URL": "http://127.0.0.1:9", "SMC_BINANCE_TIMEOUT_S": "10"})
    with pytest.raises(BrokerError, match="SMC_BINANCE_TIMEOUT_S=10"):
        make_broker(s, ExecutorConfig())
