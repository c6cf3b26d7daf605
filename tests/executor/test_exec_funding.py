"""Funding as the exchange does it: the real settlements of ingest/recorded/funding_2025-05.parquet,
at their own times (LAYERUSDT goes from 4 h to 1 h on 2025-05-06 08:00, ENAUSDT settles every 4 h,
BTCUSDT every 8 h), with their real rates, on the position's mark-price notional, sign by side.
The expectation is computed here from the raw Parquet and the raw 1m bars, not from executor.funding."""
from __future__ import annotations

import exec_helpers  # noqa: F401  (first: makes `executor` the real package, see its docstring)

from pathlib import Path

import polars as pl
import pytest

from executor.brokers.paper import PaperBroker
from executor.config import ExecutorConfig, config_from_env
from executor.engine import Engine
from executor.exits import ExitRules
from executor.funding import FundingHistory, Settlement, funding_payment, settlement_time
from executor.funding_source import load_funding_history
from executor.instruments import InstrumentBook
from exec_helpers import MIN, bar

ROOT = Path(__file__).resolve().parents[2]
FUNDING = ROOT / "ingest" / "recorded" / "funding_2025-05.parquet"
KLINES = ROOT / "ingest" / "recorded" / "perps_1m_2025-05.parquet"
HOUR = 60 * MIN
START = 1_746_403_200_000 + 12 * HOUR      # 2025-05-05 12:00 UTC
END = START + 36 * HOUR                    # 2025-05-07 00:00 UTC


@pytest.fixture(scope="module")
def history() -> FundingHistory:
    return load_funding_history([FUNDING])


def _bars(symbol: str) -> list[tuple]:
    return (pl.read_parquet(KLINES).filter((pl.col("symbol") == symbol) & pl.col("open_time").is_between(START, END - 1))
            .sort("open_time").select("open_time", "open", "high", "low", "close").rows())


def _records(symbol: str) -> list[tuple[int, float, float | None]]:
    return (pl.read_parquet(FUNDING).filter(pl.col("symbol") == symbol).sort("funding_time")
            .select("funding_time", "funding_rate", "mark_price").rows())


def _hold(history: FundingHistory, symbol: str, side: str):
    """One position on `symbol` entered at the first bar's close, held over the whole window (no
    stop/target/time exit reachable); every funding charge recorded as (time, amount)."""
    cfg = ExecutorConfig(funding=history, exits=ExitRules(max_hold_ms=10 ** 12, stagnation_after_ms=10 ** 12))
    eng = Engine(cfg, PaperBroker(cfg.paper), InstrumentBook.default())
    charges: list[tuple[int, float]] = []
    orig = eng.portfolio.charge_funding

    def spy(pid, amount, ts):
        charges.append((ts, amount))
        return orig(pid, amount, ts)
    eng.portfolio.charge_funding = spy
    rows = _bars(symbol)
    assert len(rows) == 36 * 60, "the recorded bars of the window are contiguous"
    for i, (ot, o, h, l, c) in enumerate(rows):
        if i == 0:
            stop, target = (c * 0.5, c * 2.0) if side == "long" else (c * 2.0, c * 0.5)
            eng.process(bar(symbol, ot, o, h, l, c, side, 0.9, c, stop, target))
        else:
            eng.process(bar(symbol, ot, o, h, l, c))
    (pos,) = eng.portfolio.positions.values()
    assert pos.status == "open"
    return eng, pos, charges, {ot: o for ot, o, *_ in rows}


@pytest.mark.parametrize("symbol,side,intervals", [("LAYERUSDT", "long", {4, 1}), ("LAYERUSDT", "short", {4, 1}),
                                                     ("ENAUSDT", "short", {4}), ("BTCUSDT", "long", {8})])
def test_every_real_settlement_crossed_is_charged_with_its_rate(history, symbol, side, intervals):
    eng, pos, charges, opens = _hold(history, symbol, side)
    last_open = max(opens)
    expected = []
    for ftime, rate, mark in _records(symbol):
        t = ftime - ftime % MIN                      # fundingTime carries a few ms of jitter
        if pos.opened_at <= t <= last_open:          # held at the settlement instant
            price = mark if mark is not None else opens[t]
            sign = 1.0 if side == "long" else -1.0
            expected.append((t, sign * pos.qty * price * rate))
    hours = {round((b[0] - a[0]) / HOUR) for a, b in zip(expected, expected[1:])}
    assert hours == intervals, f"the window must cross {symbol}'s real intervals, got {hours}"
    assert [t for t, _ in charges] == [t for t, _ in expected]
    for (_, got), (_, want) in zip(charges, expected):
        assert got == pytest.approx(want, rel=1e-12, abs=1e-15)
    assert pos.funding == pytest.approx(sum(a for _, a in expected), rel=1e-12)
    assert eng.stats.funding_estimated == 0
    # a long pays a positive rate, a short receives it
    rates = {settlement_time(f): r for f, r, _ in _records(symbol)}
    for t, amount in charges:
        if rates[t] != 0:
            assert (amount > 0) == ((rates[t] > 0) == (side == "long"))


def test_funding_history_due_is_half_open_and_estimates_outside_its_span(history):
    times = [settlement_time(f) for f, _, _ in _records("LAYERUSDT")]
    a, b = times[10], times[12]
    due = history.due("LAYERUSDT", a, b)
    assert [s.time for s in due] == times[11:13] and not any(s.estimated for s in due)
    assert history.due("LAYERUSDT", a, a) == []
    # past the end of the history: estimated on the last real interval (1 h for LAYERUSDT), fallback rate
    last = times[-1]
    tail = history.due("LAYERUSDT", last - 1, last + 3 * HOUR, fallback_rate=0.0002)
    assert [s.time for s in tail] == [last, last + HOUR, last + 2 * HOUR, last + 3 * HOUR]
    assert [s.estimated for s in tail] == [False, True, True, True] and tail[1].rate == 0.0002
    # a symbol without any record: the 8h UTC grid
    assert [s.time for s in history.due("NOSUCHUSDT", 0, 16 * HOUR)] == [8 * HOUR, 16 * HOUR]


def test_funding_payment_and_bad_records():
    assert funding_payment("long", 2.0, 100.0, 0.0001) == pytest.approx(0.02)
    assert funding_payment("short", 2.0, 100.0, 0.0001) == pytest.approx(-0.02)
    assert funding_payment("short", 2.0, 100.0, -0.0003) == pytest.approx(0.06)
    with pytest.raises(ValueError, match="side"):
        funding_payment("flat", 1, 1, 1)
    with pytest.raises(ValueError, match="funding_rate=None"):
        FundingHistory.from_rows([("BTCUSDT", 1_000, None, None)])
    with pytest.raises(ValueError, match="differs"):
        FundingHistory.from_rows([("BTCUSDT", 28_800_000, 0.0001, None), ("BTCUSDT", 28_800_003, 0.0002, None)])
    same = FundingHistory.from_rows([("BTCUSDT", 28_800_000, 0.0001, None), ("BTCUSDT", 28_800_003, 0.0001, 5.0)])
    assert same.by_symbol["BTCUSDT"] == (Settlement(28_800_000, 0.0001, 5.0),)


def test_the_executor_loads_every_recorded_funding_file_by_default():
    cfg = config_from_env(10_000.0, env={})
    recorded = pl.concat([pl.read_parquet(p) for p in sorted((ROOT / "ingest" / "recorded").glob("funding_*.parquet"))])
    assert sum(len(v) for v in cfg.funding.by_symbol.values()) == recorded.unique(["symbol", "funding_time"]).height
    assert config_from_env(10_000.0, env={"SMC_EXEC_FUNDING_FILES": "none"}).funding.by_symbol == {}
