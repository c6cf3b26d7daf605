"""Errors by class: one table from Binance code / HTTP status to retry | outcome_unknown | rejected |
halt, checked with each real error body; the engine and the service never let an exchange error
out (no crash loop), halt new entries on auth / ban / repeated errors and resume on command."""
from __future__ import annotations

import exec_helpers  # noqa: F401  (first: makes `executor` the real package, see its docstring)

import pytest

from executor.brokers.base import BrokerError
from executor.brokers.binance import (HALT, REJECTED, RETRY, UNKNOWN, BinanceBroker, BinanceClient, error_class,
                                      error_for)
from executor.brokers.paper import PaperBroker
from executor.config import ExecutorConfig
from executor.engine import Engine
from executor.instruments import InstrumentBook, load_exchange_info
from executor.service import ExecutorService
from infra.settings import Settings
from schemas.trading import Alert, Decision, Position
from exec_helpers import EXCHANGE_INFO, KEY, MIN, SECRET, T0, bar, fake  # noqa: F401  (fake: fixture)
from exec_helpers import real_error as body


@pytest.mark.parametrize("code,status,expected", [
    (-1021, 400, RETRY),       # timestamp outside recvWindow: resync, retry
    (-1022, 400, HALT),        # signature: nothing signed will work
    (-1121, 400, REJECTED),
    (-2013, 400, REJECTED),
    (-2019, 400, REJECTED),
    (-4014, 400, REJECTED),
    (-4164, 400, REJECTED),
    (-5000, 404, REJECTED),    # invalid path: not executed
])
def test_each_real_error_body_has_one_class(code, status, expected):
    b = body(code)
    assert b["code"] == code
    err = error_for(b["code"], b["msg"], status, "POST /fapi/v1/order")
    assert err.error_class == expected == error_class(code, status)
    assert err.halt == (expected == HALT)


@pytest.mark.parametrize("code,status,expected", [
    (-1003, 429, RETRY), (-1003, 418, HALT), (-2015, 401, HALT), (-2014, 400, HALT),
    (-1000, 503, UNKNOWN), (0, 502, UNKNOWN), (-1006, 0, UNKNOWN), (-1007, 0, UNKNOWN), (-1001, 500, UNKNOWN),
])
def test_http_status_and_transport_classes(code, status, expected):
    assert error_class(code, status) == expected
    assert error_for(code, "x", status, "e").error_class == expected


def engine_on(fake, sleep=None, **client_kw) -> Engine:
    kw = dict(timeout=2.0, recv_window=1000)
    if sleep is not None:
        kw["sleep"] = sleep
    kw.update(client_kw)
    b = BinanceBroker(BinanceClient(fake.base_url, KEY, SECRET, **kw), unknown_margin_s=0.3, guard_restart=False)
    return Engine(ExecutorConfig(), b, InstrumentBook(load_exchange_info(EXCHANGE_INFO)))


def setup(t, sym="BTCUSDT", price=50_000.0):
    return bar(sym, t, price, price, price, price, "long", 0.9, price, price * 0.99, price * 1.02)


def test_second_429_is_retried_with_retry_after(fake):
    slept = []
    fake.fault("POST /fapi/v1/order", "rate_limit", retry_after=1)
    fake.fault("POST /fapi/v1/order", "rate_limit", retry_after=2)
    eng = engine_on(fake, sleep=slept.append)
    out = eng.process(setup(T0))
    assert slept[:2] == [1.0, 2.0] and fake.positions["BTCUSDT"] > 0
    assert [r for r in out if isinstance(r, Position)][-1].status == "open"


def test_retry_after_above_the_maximum_does_not_escape_and_skips_the_entry(fake):
    fake.fault("POST /fapi/v1/order", "rate_limit", retry_after=120)
    eng = engine_on(fake, sleep=lambda s: None)
    out = eng.process(setup(T0))                       # used to raise RateLimited out of the engine
    assert [r.kind for r in out if isinstance(r, Alert)] == ["broker_error"]
    assert not fake.orders and eng.portfolio.open_count() == 0 and not eng.halted


@pytest.mark.parametrize("code,status", [(-1003, 418), (-1022, 400), (-2015, 401)])
def test_auth_or_ban_halts_entries_keeps_managing_and_resumes_on_command(fake, code, status):
    eng = engine_on(fake)
    eng.process(setup(T0))                               # a position with stop and target at the exchange
    assert fake.positions["BTCUSDT"] == 0.02
    msg = body(code)["msg"] if code == -1022 else "banned"
    fake.fault("POST /fapi/v1/order", "error", code=code, status=status, msg=msg)
    out = eng.process(setup(T0, sym="ETHUSDT", price=2_000.0))
    assert "halted" in [r.kind for r in out if isinstance(r, Alert)] and eng.halted
    out = eng.process(setup(T0 + MIN, sym="ETHUSDT", price=2_000.0))
    assert [d.reason for d in out if isinstance(d, Decision)] == ["halted"]
    assert "ETHUSDT" not in {o["symbol"] for o in fake.orders.values()}
    fake.trigger("BTCUSDT", 51_000.0)                    # the target fires: still managed while halted
    out = eng.process(bar("BTCUSDT", T0 + MIN, 50_000, 51_000, 50_000, 51_000))
    closed = [r for r in out if isinstance(r, Position)][-1]
    assert (closed.status, closed.exit_reason) == ("closed", "target") and fake.positions["BTCUSDT"] == 0
    eng.command({"cmd": "resume"})
    out = eng.process(setup(T0 + 2 * MIN, sym="ETHUSDT", price=2_000.0))
    assert "resumed" in [r.kind for r in out if isinstance(r, Alert)] and not eng.halted
    assert fake.positions["ETHUSDT"] > 0


class FailingPolls(PaperBroker):
    """Paper broker whose exchange poll fails (HTTP 503 on the lookups) `n` times."""

    def __init__(self, n: int) -> None:
        super().__init__(ExecutorConfig().paper)
        self.n = n

    def on_bar_range(self, bar) -> list:
        if self.n > 0:
            self.n -= 1
            raise error_for(-1000, "An unknown error occurred while processing the request.", 503, "GET /fapi/v1/algoOrder")
        return super().on_bar_range(bar)

    def reconcile(self, engine, ts, wall_ts=0):
        raise BrokerError("Binance -1000 (HTTP 503) on GET /fapi/v2/positionRisk: unknown error")


def test_repeated_exchange_errors_halt_after_the_limit_and_never_raise():
    eng = Engine(ExecutorConfig(halt_after_failures=3), FailingPolls(3), InstrumentBook(load_exchange_info(EXCHANGE_INFO)))
    for i in range(2):
        eng.process(bar("BTCUSDT", T0 + i * MIN, 50_000, 50_000, 50_000, 50_000))
    assert not eng.halted
    out = eng.process(bar("BTCUSDT", T0 + 2 * MIN, 50_000, 50_000, 50_000, 50_000))
    assert eng.halted.startswith("3 exchange errors in a row") and "halted" in [r.kind for r in out if isinstance(r, Alert)]
    assert eng.to_dict()["halted"] == eng.halted                 # survives a restart (state topic)


def test_service_start_up_reconciliation_error_halts_instead_of_exiting():
    svc = ExecutorService(Settings(), ExecutorConfig(), FailingPolls(0))
    svc._reconcile()                                            # no exception: a restart would meet it again
    assert svc.engine.halted.startswith("reconciliation with the exchange failed")


def test_a_failed_reconciliation_is_retried_after_a_pause_not_at_every_poll():
    class Due(FailingPolls):
        calls = 0

        def needs_reconcile(self):
            return True

        def reconcile(self, engine, ts, wall_ts=0):
            Due.calls += 1
            return super().reconcile(engine, ts, wall_ts)
    svc = ExecutorService(Settings(), ExecutorConfig(), Due(0))
    assert svc._reconcile_due(True, 0.0)
    svc._reconcile()
    assert Due.calls == 1 and svc.engine.halted
    assert not svc._reconcile_due(True, 100.0)                  # within reconcile_retry_s
    svc._reconcile_not_before = 0.0
    assert svc._reconcile_due(True, 100.0)
