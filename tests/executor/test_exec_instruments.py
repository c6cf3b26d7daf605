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


# --- PERCENT_PRICE (issue 14) ---------------------------------------------------------------------
# USD-M: BUY price <= mark * multiplierUp, SELL price >= mark * multiplierDown, on the limit `price`
# only (developers.binance.com/docs/derivatives/usds-margined-futures/common-definition, Filters).

def _raw_filters(symbol: str) -> dict:
    """The symbol's filters as the real snapshot spells them (strings), read without the parser."""
    import gzip
    import orjson
    from executor.instruments import BUNDLED
    payload = orjson.loads(gzip.decompress(BUNDLED.read_bytes()))
    (sym,) = [s for s in payload["symbols"] if s["symbol"] == symbol]
    return {f["filterType"]: f for f in sym["filters"]}


@pytest.mark.parametrize("symbol, mark", [("BTCUSDT", 43_210.37), ("DEGOUSDT", 0.61237)])
def test_percent_price_band_is_the_snapshots_multipliers_times_the_mark_on_the_tick_grid(symbol, mark):
    from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal
    from executor.instruments import percent_price_band
    raw = _raw_filters(symbol)
    up, down = Decimal(raw["PERCENT_PRICE"]["multiplierUp"]), Decimal(raw["PERCENT_PRICE"]["multiplierDown"])
    tick = Decimal(raw["PRICE_FILTER"]["tickSize"])
    buy_max = float((Decimal(str(mark)) * up / tick).to_integral_value(ROUND_FLOOR) * tick)
    sell_min = float((Decimal(str(mark)) * down / tick).to_integral_value(ROUND_CEILING) * tick)
    inst = bundled_instruments()[symbol]
    assert (inst.percent_up, inst.percent_down) == (float(up), float(down))
    assert percent_price_band(inst, "BUY", mark) == (0.0, buy_max)      # a BUY has no floor
    assert percent_price_band(inst, "SELL", mark) == (sell_min, float("inf"))   # a SELL no ceiling
    # the edges are inside the exchange's inequality, and one tick further is outside
    assert Decimal(str(buy_max)) <= Decimal(str(mark)) * up < Decimal(str(buy_max)) + tick
    assert Decimal(str(sell_min)) - tick < Decimal(str(mark)) * down <= Decimal(str(sell_min))


def test_an_entry_limit_outside_the_band_is_refused_naming_the_filter_price_band_and_mark():
    from executor.instruments import percent_price_band
    btc = bundled_instruments()["BTCUSDT"]
    mark = 43_210.37
    _, buy_max = percent_price_band(btc, "BUY", mark)
    sell_min, _ = percent_price_band(btc, "SELL", mark)
    assert conform(btc, "LIMIT", 0.01, buy_max, side="BUY", mark=mark) == (0.01, buy_max)
    with pytest.raises(FilterViolation) as e:
        conform(btc, "LIMIT", 0.01, buy_max + 0.1, side="BUY", mark=mark)
    assert e.value.filter == "PERCENT_PRICE.multiplierUp"
    msg = str(e.value)
    assert str(buy_max + 0.1) in msg and str(buy_max) in msg and str(mark) in msg
    with pytest.raises(FilterViolation, match="PERCENT_PRICE.multiplierDown") as e:
        conform(btc, "LIMIT", 0.01, sell_min - 0.1, side="SELL", mark=mark)
    assert str(sell_min) in str(e.value) and str(mark) in str(e.value)
    # the side that is not bounded: a resting BUY far below, a resting SELL far above the mark pass
    assert conform(btc, "LIMIT", 0.01, 30_000.0, side="BUY", mark=mark) == (0.01, 30_000.0)
    assert conform(btc, "LIMIT", 0.01, 60_000.0, side="SELL", mark=mark) == (0.01, 60_000.0)
    # no mark (band off or price unknown): only the tick and PRICE_FILTER rules
    assert conform(btc, "LIMIT", 0.01, 60_000.04, side="BUY") == (0.01, 60_000.0)


def test_a_reduce_only_limit_outside_the_band_is_moved_to_the_edge_not_refused():
    from executor.instruments import percent_price_band
    dego = bundled_instruments()["DEGOUSDT"]
    mark = 0.61237
    sell_min, _ = percent_price_band(dego, "SELL", mark)
    _, buy_max = percent_price_band(dego, "BUY", mark)
    # a long's exit selling far below the market, a short's exit buying far above it
    assert conform(dego, "LIMIT", 100.0, 0.2, side="SELL", reduce_only=True, mark=mark) == (100.0, sell_min)
    assert conform(dego, "LIMIT", 100.0, 1.5, side="BUY", reduce_only=True, mark=mark) == (100.0, buy_max)
    # inside the band: untouched
    assert conform(dego, "LIMIT", 100.0, 0.6, side="SELL", reduce_only=True, mark=mark) == (100.0, 0.6)


def test_stop_and_take_profit_triggers_and_market_orders_are_not_held_to_the_band():
    """Binance states PERCENT_PRICE for `price` (a limit price), PRICE_FILTER for "price/stopPrice":
    a protective stop far from the mark must still be placed."""
    from executor.instruments import percent_price_band
    btc = bundled_instruments()["BTCUSDT"]
    mark = 43_210.37
    sell_min, _ = percent_price_band(btc, "SELL", mark)
    _, buy_max = percent_price_band(btc, "BUY", mark)
    far_below, far_above = round(sell_min * 0.8, 1), round(buy_max * 1.2, 1)
    assert conform(btc, "STOP_MARKET", 0.01, far_below, side="SELL", mark=mark) == (0.01, far_below)
    assert conform(btc, "TAKE_PROFIT_MARKET", 0.01, far_above, side="SELL", mark=mark) == (0.01, far_above)
    assert conform(btc, "STOP_MARKET", 0.01, far_above, side="BUY", mark=mark) == (0.01, far_above)
    assert conform(btc, "MARKET", 0.01, 0.0, side="BUY", mark=mark) == (0.01, 0.0)


def _limit(pos, leg: str, side: str, price: float, reduce_only: bool) -> Order:
    return Order(client_order_id=f"smc-x-{leg}", signal_id=pos.signal_id, symbol=pos.symbol, leg=leg, side=side,
                 type="LIMIT", qty=pos.qty, price=price, reduce_only=reduce_only, status="NEW", ts=T0)


def _engine_with_an_open_long(cfg: ExecutorConfig):
    b = Recording()
    eng = Engine(cfg, b)
    eng.process(bar("BTCUSDT", T0, 50_000, 50_000, 50_000, 50_000, "long", 0.9, 50_000, 49_500, 51_000))
    eng.process(bar("BTCUSDT", T0 + MIN, 50_000, 50_000, 50_000, 50_000))    # entry fills at this open
    pos = next(iter(eng.portfolio.positions.values()))
    assert pos.status == "open"
    return eng, b, pos


def test_engine_checks_limit_prices_against_its_latest_price_unless_the_band_is_off():
    from executor.instruments import percent_price_band
    eng, b, pos = _engine_with_an_open_long(ExecutorConfig())
    mark = eng.portfolio.marks["BTCUSDT"]               # the last close the engine marked
    _, buy_max = percent_price_band(eng.instruments.known["BTCUSDT"], "BUY", mark)
    sig = bar("BTCUSDT", T0 + MIN, 50_000, 50_000, 50_000, 50_000)
    out, n = [], len(b.sent)
    eng._submit(_limit(pos, "entry", "BUY", buy_max + 100, False), pos, sig, out, 0)
    assert b.sent[n:] == []                              # refused before sending
    rej = next(r for r in out if isinstance(r, Order) and r.client_order_id == "smc-x-entry")
    assert rej.status == "REJECTED" and rej.reason.startswith("filter PERCENT_PRICE.multiplierUp")
    assert f"mark {mark}" in rej.reason
    # a reduce-only exit goes out, at the band's edge
    sell_min, _ = percent_price_band(eng.instruments.known["BTCUSDT"], "SELL", mark)
    eng._submit(_limit(pos, "exit", "SELL", 1_000.0, True), pos, sig, [], 0)
    assert [(o.leg, o.price) for o in b.sent[n:]] == [("exit", sell_min)]
    # band off: the same entry is sent at its own price
    eng, b, pos = _engine_with_an_open_long(ExecutorConfig(percent_price=False))
    n = len(b.sent)
    eng._submit(_limit(pos, "entry", "BUY", buy_max + 100, False), pos, sig, [], 0)
    assert [(o.leg, o.price) for o in b.sent[n:]] == [("entry", buy_max + 100)]
    assert not config_from_env(10_000, {"SMC_EXEC_PERCENT_PRICE": "0"}).percent_price
    assert config_from_env(10_000, {}).percent_price
