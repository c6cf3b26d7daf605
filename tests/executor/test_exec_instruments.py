"""Instruments from the real USD-M exchangeInfo snapshot (executor/data), filters applied before
an order is sent, and a clear, named outcome for symbols the snapshot does not have."""
from __future__ import annotations

import exec_helpers  # noqa: F401  (first: makes `executor` the real package, see its docstring)

import pytest

from executor.brokers.paper import PaperBroker
from executor.config import ExecutorConfig, config_from_env
from executor.engine import Engine
from executor.instruments import FilterViolation, InstrumentBook, bundled_instruments, conform
from schemas.trading import Decision, Order
from exec_helpers import MIN, T0, bar


def test_bundled_snapshot_has_the_real_filters():
    book = bundled_instruments()
    assert len(book) > 500
    shib, btc = book["1000SHIBUSDT"], book["BTCUSDT"]
    assert shib.tick_size == 1e-6                      # generic sizing modelled 1e-7 (issue 14)
    assert (btc.tick_size, btc.step_size, btc.min_notional, btc.market_max_qty) == (0.1, 0.001, 100.0, 1000.0)
    assert btc.min_price == 261.1 and btc.max_price == 809_484.0


def test_conform_corrects_or_names_the_filter():
    btc = bundled_instruments()["BTCUSDT"]
    assert conform(btc, "MARKET", 0.02049, 0.0) == (0.02, 0.0)
    assert conform(btc, "STOP_MARKET", 0.02, 49_500.04) == (0.02, 49_500.0)
    with pytest.raises(FilterViolation, match="MARKET_LOT_SIZE.maxQty") as e:
        conform(btc, "MARKET", 5_000.0, 0.0)
    assert e.value.filter == "MARKET_LOT_SIZE.maxQty"
    with pytest.raises(FilterViolation, match="MARKET_LOT_SIZE.minQty"):
        conform(btc, "MARKET", 0.0004, 0.0)
    with pytest.raises(FilterViolation, match="PRICE_FILTER.minPrice"):
        conform(btc, "STOP_MARKET", 0.02, 100.0)


class Recording(PaperBroker):
    def __init__(self):
        super().__init__(ExecutorConfig().paper)
        self.sent: list[Order] = []

    def submit(self, order, ts, timeframe="", position_side=""):
        self.sent.append(order)
        return super().submit(order, ts, timeframe, position_side)


def test_engine_defaults_to_the_real_snapshot_and_refuses_a_filter_violation_unsent():
    b = Recording()
    eng = Engine(ExecutorConfig(), b)                      # no instruments given: the bundled snapshot
    assert eng.instruments.known["1000SHIBUSDT"].tick_size == 1e-6
    eng.process(bar("BTCUSDT", T0, 50_000, 50_000, 50_000, 50_000, "long", 0.9, 50_000, 49_500.04, 51_000))
    eng.process(bar("BTCUSDT", T0 + MIN, 50_000, 50_000, 50_000, 50_000))    # paper entry fills at this open
    stop = next(o for o in b.sent if o.leg == "stop")
    assert stop.price == 49_500.0                           # on the 0.1 tick
    # a stop below PRICE_FILTER.minPrice is refused before sending, with the filter named
    out = []
    pos = next(iter(eng.portfolio.positions.values()))
    bad = Order(client_order_id="smc-x-stop", signal_id=pos.signal_id, symbol="BTCUSDT", leg="stop", side="SELL",
                type="STOP_MARKET", qty=pos.qty, price=100.0, reduce_only=True, status="NEW", ts=T0)
    n = len(b.sent)
    eng._submit(bad, pos, bar("BTCUSDT", T0 + MIN, 50_000, 50_000, 50_000, 50_000), out, 0)
    # neither the refused stop nor its re-placement (same invalid price) reach the broker; the
    # protection rule then flattens the position
    assert [o.leg for o in b.sent[n:]] == ["exit"]
    rej = next(r for r in out if isinstance(r, Order) and r.client_order_id == "smc-x-stop")
    assert rej.status == "REJECTED" and rej.reason.startswith("filter PRICE_FILTER.minPrice")


def test_symbol_missing_from_the_snapshot_is_skipped_by_name_unless_generic_is_opted_in(caplog):
    setup = bar("TSLAUSDT", T0, 400, 400, 400, 400, "long", 0.9, 400, 396, 408)   # listed after 2025-12-24
    out = Engine(ExecutorConfig(), PaperBroker(ExecutorConfig().paper)).process(setup)
    (d,) = [r for r in out if isinstance(r, Decision)]
    assert (d.action, d.reason) == ("skip", "unknown_symbol")
    assert "no exchangeInfo for TSLAUSDT" in caplog.text
    generic = Engine(ExecutorConfig(), PaperBroker(ExecutorConfig().paper), InstrumentBook.default(allow_generic=True))
    (d,) = [r for r in generic.process(setup) if isinstance(r, Decision)]
    assert d.action == "enter"
    assert config_from_env(10_000, {"SMC_EXEC_GENERIC_INSTRUMENTS": "1"}).generic_instruments
    assert not config_from_env(10_000, {}).generic_instruments


def test_every_symbol_of_the_recorded_perps_sets_has_real_filters_or_is_skipped_by_name(caplog):
    """2025-05 (18) and 2025-02 (8): all in the real snapshot. 2023-07 (18): EOSUSDT is SETTLING there
    (delisted 2025-05): its last listed filters are used, said once; MATICUSDT (delisted 2024) is in
    neither real snapshot of shared/data/binance: skipped as unknown_symbol, never generic."""
    import polars as pl
    from exec_helpers import ROOT
    book = InstrumentBook.default()
    trading = bundled_instruments()
    for name, absent, not_trading in (("2025-05", set(), set()), ("2025-02", set(), set()),
                                      ("2023-07", {"MATICUSDT"}, {"EOSUSDT"})):
        symbols = set(pl.read_parquet(ROOT / "ingest" / "recorded" / f"perps_1m_{name}.parquet", columns=["symbol"])["symbol"])
        assert {s for s in symbols if s not in book.known} == absent, name
        assert {s for s in symbols if s in book.known and s not in trading} == not_trading, name
    eos = book.get("EOSUSDT", 0.7)
    assert eos is not None and eos.tick_size == 0.001 and "EOSUSDT is SETTLING" in caplog.text
    assert book.get("MATICUSDT", 0.7) is None and "no exchangeInfo for MATICUSDT" in caplog.text
    eng = Engine(ExecutorConfig(), PaperBroker(ExecutorConfig().paper))
    (d,) = [r for r in eng.process(bar("MATICUSDT", T0, 0.7, 0.7, 0.7, 0.7, "long", 0.9, 0.7, 0.69, 0.72))
            if isinstance(r, Decision)]
    assert (d.action, d.reason) == ("skip", "unknown_symbol")
