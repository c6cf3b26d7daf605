"""API key, secret and request signatures never reach logs, exceptions, repr, state or ClickHouse."""
from __future__ import annotations

import exec_helpers  # noqa: F401  (first: makes `executor` the real package, see its docstring)

import logging

import orjson
import pytest

from executor.brokers.binance import BinanceBroker, BinanceClient, BinanceError
from executor.config import ExecutorConfig
from executor.engine import Engine
from executor.instruments import InstrumentBook, load_exchange_info
from infra.settings import Settings
from schemas.audit import TABLES
from schemas.trading import Decision, Equity, Fill, Order, Position
from tests.fakes.fake_binance_trading import FakeBinanceTrading
from exec_helpers import EXCHANGE_INFO, MIN, T0, bar

KEY = "SMCKEYzzLEAKCANARYk3y0123456789abcdefXYZ"
SECRET = "SMCSECRETzzLEAKCANARYs3cr3t9876543210QRS"


def test_no_secret_in_logs_exceptions_state_or_audit(caplog, audit_store):
    caplog.set_level(logging.DEBUG)
    fake = FakeBinanceTrading(KEY, SECRET, marks={"BTCUSDT": 50_000.0, "ETHUSDT": 2_000.0})
    fake.start()
    texts: list[str] = []
    try:
        settings = Settings(api_key=KEY, api_secret=SECRET, binance_trade_url=fake.base_url, binance_recv_window_ms=1000)
        broker = BinanceBroker.from_settings(settings, timeout=0.5)
        texts += [repr(settings), str(settings), repr(broker), repr(broker.client)]
        eng = Engine(ExecutorConfig(), broker, InstrumentBook(load_exchange_info(EXCHANGE_INFO)))
        # every failure path: rejected, unknown outcome + lookup, resync, and a bad signature
        fake.fault("POST /fapi/v1/order", "accept_then_hang", seconds=2)
        fake.fault("POST /fapi/v1/algoOrder", "error", code=-2019, msg="Margin is insufficient.")
        fake.clock_skew_ms = 15_000
        records = []
        records += eng.process(bar("BTCUSDT", T0, 50_000, 50_000, 50_000, 50_000, "long", 0.9, 50_000, 49_500, 51_000))
        records += eng.process(bar("ETHUSDT", T0, 2_000, 2_000, 2_000, 2_000, "short", 0.9, 2_000, 2_100, 1_800))
        fake.trigger("ETHUSDT", 2_150.0)
        records += eng.process(bar("ETHUSDT", T0 + MIN, 2_150, 2_150, 2_150, 2_150))
        records += eng.process(bar("BTCUSDT", T0 + MIN, 50_000, 50_000, 50_000, 50_000))
        for bad in (BinanceClient(fake.base_url, KEY, "not-the-secret"), BinanceClient(fake.base_url, KEY, SECRET)):
            try:
                bad.request("GET", "/fapi/v1/order", {"symbol": "NOPEUSDT", "origClientOrderId": "x"})
            except BinanceError as exc:
                texts += [str(exc), repr(exc), repr(exc.args)]
        bad_url = BinanceClient("http://127.0.0.1:9", KEY, SECRET, timeout=0.3)
        with pytest.raises(BinanceError) as e:
            bad_url.request("POST", "/fapi/v1/order", {"symbol": "BTCUSDT"}, is_order=True)
        texts += [str(e.value), repr(e.value)]
        state = orjson.dumps(eng.to_dict()).decode()
    finally:
        fake.stop()
    kinds = {type(r).__name__ for r in records}
    assert {"Decision", "Order", "Fill", "Position", "Equity"} <= kinds
    assert any(isinstance(r, Order) and r.status == "REJECTED" for r in records)     # the -2019 algo order
    for cls, table in ((Decision, "decisions"), (Order, "orders"), (Fill, "fills"), (Position, "positions"), (Equity, "equity")):
        audit_store.insert(table, [r for r in records if isinstance(r, cls)])
    audit_text = []
    for table in TABLES:
        _, rows = audit_store.query(f"SELECT * FROM {audit_store.database}.{table}")
        audit_text.append(repr(rows))
    assert len(fake.signatures) > 10
    haystacks = {"logs": caplog.text + "".join(r.getMessage() for r in caplog.records),
                 "exceptions/repr": "\n".join(texts), "state": state, "clickhouse": "\n".join(audit_text)}
    assert "-2019" in "\n".join(audit_text) and "Binance" in haystacks["exceptions/repr"]
    needles = {"key": KEY, "secret": SECRET, **{f"signature{i}": s for i, s in enumerate(fake.signatures)}}
    assert find_leaks(haystacks, needles) == []
    # control: the scan does find a leaked key or signature (e.g. a URL with its query in a log line)
    assert find_leaks({"logs": f"GET /fapi/v1/order?x=1&signature={fake.signatures[3]}"}, needles) == [("logs", "signature3")]
    assert find_leaks({"state": f"X-MBX-APIKEY: {KEY}"}, needles) == [("state", "key")]


def find_leaks(haystacks: dict[str, str], needles: dict[str, str]) -> list[tuple[str, str]]:
    return [(where, what) for where, text in haystacks.items() for what, needle in needles.items() if needle in text]
