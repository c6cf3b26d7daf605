"""Labels = the executor's realised outcome: the same real USD-M 1m bars are run through the paper
Engine (executor.engine + PaperBroker) and through models.labels.simulate_trades, setup by setup."""
from __future__ import annotations

import dataclasses

import numpy as np
import polars as pl
import pytest

from executor.brokers.paper import PaperBroker, PaperConfig
from executor.config import ExecutorConfig
from executor.engine import Engine
from executor.instruments import InstrumentBook
from models.dataset import PERPS_1M, load_klines, smc_config, symbol_features, tick_of
from executor.funding import FundingHistory
from executor.funding_source import load_funding_history
from models.dataset import FUNDING
from models.labels import REASONS, LabelConfig, simulate_trades
from processors.smc import FEATURE_NAMES
from schemas.signal import Signal, make_signal_id
from schemas.trading import Position

MIN = 60_000


@pytest.fixture(scope="module")
def frames():
    kl = load_klines(PERPS_1M["2025-05"], ["BTCUSDT", "XRPUSDT"]).filter(
        pl.col("open_time") < pl.col("open_time").min() + 4 * 86_400_000)
    cfg = smc_config(MIN, 5)
    return {sym: symbol_features(bars, cfg) for (sym,), bars in kl.group_by(["symbol"], maintain_order=True)}


def _signal(sym: str, f: dict, side: str = "flat", conf: float = 0.0) -> Signal:
    return Signal(signal_id=make_signal_id(sym, "1m", f["open_time"], "labels-test"), strategy_version="labels-test",
                  symbol=sym, timeframe="1m", open_time=f["open_time"], close_time=f["open_time"] + MIN - 1,
                  open=f["open"], high=f["high"], low=f["low"], close=f["close"], volume=f["volume"],
                  atr=f["atr"] or 1.0, features=[0.0] * len(FEATURE_NAMES), confidence=conf, side=side,
                  entry=f["setup_entry"] if side != "flat" else 0.0, stop=f["setup_stop"] if side != "flat" else 0.0,
                  target=f["setup_target"] if side != "flat" else 0.0)


def _engine_trade(sym: str, rows: list[dict], i: int, cfg: ExecutorConfig) -> tuple[Position, float]:
    """Run one setup through a fresh paper engine; -> (closed Position record, |entry - stop| sized on)."""
    eng = Engine(cfg, PaperBroker(cfg.paper), InstrumentBook.default())
    eng.process(_signal(sym, rows[i], rows[i]["setup_side"], 0.9))
    pos = next(iter(eng.portfolio.positions.values()))
    risk = abs(pos.stop - float(_rounded_entry(sym, rows[i])))
    for j in range(i + 1, len(rows)):
        for rec in eng.process(_signal(sym, rows[j])):
            if isinstance(rec, Position) and rec.status == "closed":
                return rec, risk
    raise AssertionError("the engine's position never closed")


def _rounded_entry(sym: str, row: dict) -> float:
    from executor.risk import round_prices
    return round_prices(row["setup_side"], row["setup_entry"], row["setup_stop"], row["setup_target"],
                        tick_of(sym, row["close"]))[0]


def _label(sym: str, frame: pl.DataFrame, idx: np.ndarray, cfg: LabelConfig, funding=None) -> dict:
    side = np.where(frame["setup_side"].to_numpy()[idx] == "long", 1, -1)
    return simulate_trades(sym, idx, side, frame["setup_entry"].to_numpy()[idx], frame["setup_stop"].to_numpy()[idx],
                           frame["setup_target"].to_numpy()[idx], frame["open_time"].to_numpy(),
                           frame["open"].to_numpy(), frame["high"].to_numpy(), frame["low"].to_numpy(),
                           frame["close"].to_numpy(), MIN, tick_of(sym, float(frame["close"][-1])), cfg, funding)


def _pick(frame: pl.DataFrame, n: int, seed: int) -> np.ndarray:
    idx = np.flatnonzero((frame["setup_side"].to_numpy() != "flat") & (np.arange(frame.height) >= 100)
                         & (np.arange(frame.height) < frame.height - 200))
    return np.sort(np.random.default_rng(seed).choice(idx, size=min(n, len(idx)), replace=False))


def _history(kind: str) -> FundingHistory:
    if kind == "recorded":      # the real 2025-05 settlements, rates and marks
        return load_funding_history([FUNDING["2025-05"]])
    # large enough to matter: XRPUSDT every 4 h without a recorded mark (charged on the bar's open),
    # BTCUSDT without history (estimated at the fallback rate, 8 h UTC grid)
    t0 = 1_746_316_800_000      # 2025-05-04 00:00 UTC
    return FundingHistory.from_rows([("XRPUSDT", t0 + k * 4 * 3_600_000 + 7, 0.003 * (-1) ** k, None) for k in range(60)])


@pytest.mark.parametrize("history", ["recorded", "synthetic"])
def test_labels_equal_the_engines_realised_trades(frames, history):
    ecfg = ExecutorConfig(paper=PaperConfig(funding_rate=0.003), funding=_history(history))
    lcfg = LabelConfig(exits=ecfg.exits, paper=ecfg.paper)
    seen = set()
    funded = 0
    for k, (sym, frame) in enumerate(sorted(frames.items())):
        idx = _pick(frame, 40, seed=k)
        lab = _label(sym, frame, idx, lcfg, ecfg.funding)
        rows = frame.to_dicts()
        assert lab["valid"].all()
        for n, i in enumerate(idx.tolist()):
            rec, risk = _engine_trade(sym, rows, i, ecfg)
            assert rec.exit_reason == REASONS[lab["reason"][n]], (sym, i)
            assert rec.closed_at == lab["t1"][n] and rec.opened_at == rows[i + 1]["open_time"]
            assert rec.entry_price == pytest.approx(lab["fill"][n], rel=1e-12)
            assert rec.exit_price == pytest.approx(lab["exit_price"][n], rel=1e-12)
            assert rec.funding / rec.qty == pytest.approx(lab["funding"][n], rel=1e-9, abs=1e-12)
            assert rec.fees / rec.qty == pytest.approx(lab["fees"][n], rel=1e-9)
            assert rec.realized_pnl / rec.qty == pytest.approx(lab["pnl"][n], rel=1e-9, abs=1e-12)
            assert rec.realized_pnl / (rec.qty * risk) == pytest.approx(lab["r"][n], rel=1e-9, abs=1e-12)
            assert lab["label"][n] == int(rec.realized_pnl > 0)
            seen.add(rec.exit_reason)
            funded += rec.funding != 0
    assert {"stop", "target", "stagnation"} <= seen        # the exits that occur on 1m all compared
    assert funded >= (1 if history == "recorded" else 3)   # settlements crossed (real 8 h; 4 h and estimated 8 h)


def test_max_hold_equals_the_engine(frames):
    """Without stagnation every unresolved trade reaches the 2 h max hold: compare those too."""
    ecfg = ExecutorConfig(exits=dataclasses.replace(ExecutorConfig().exits, stagnation_pct=0.0))
    lcfg = LabelConfig(exits=ecfg.exits, paper=ecfg.paper)
    sym, frame = "BTCUSDT", frames["BTCUSDT"]
    idx = _pick(frame, 60, seed=3)
    lab = _label(sym, frame, idx, lcfg)
    rows = frame.to_dicts()
    reasons = set()
    for n, i in enumerate(idx.tolist()):
        rec, _ = _engine_trade(sym, rows, i, ecfg)
        assert (rec.exit_reason, rec.closed_at) == (REASONS[lab["reason"][n]], lab["t1"][n])
        assert rec.realized_pnl / rec.qty == pytest.approx(lab["pnl"][n], rel=1e-9, abs=1e-12)
        reasons.add(rec.exit_reason)
    assert "max_hold" in reasons


def test_a_hole_in_the_bars_or_the_data_end_drops_the_setup(frames):
    frame = frames["BTCUSDT"]
    idx = _pick(frame, 20, seed=5)
    full = _label("BTCUSDT", frame, idx, LabelConfig())
    i = int(idx[0])
    j = int(full["exit_idx"][0])
    holed = frame.filter(pl.arange(0, frame.height) != j)            # remove the exit bar
    lab = _label("BTCUSDT", holed, idx[:1], LabelConfig())
    assert not lab["valid"][0]
    cut = frame.head(j)                                               # data ends before the exit
    assert not _label("BTCUSDT", cut, idx[:1], LabelConfig())["valid"][0]
    # prefix: the label only reads bars up to its exit
    pref = _label("BTCUSDT", frame.head(j + 1), np.array([i]), LabelConfig())
    assert pref["valid"][0] and pref["pnl"][0] == full["pnl"][0] and pref["t1"][0] == full["t1"][0]


def test_labels_charge_the_real_settlements_on_the_recorded_mark():
    """One definition of funding: the labels charge what executor.funding says, at the settlement's
    recorded mark (its ms jitter removed), or the bar's open when none is recorded."""
    frame = pl.DataFrame({"open_time": [k * MIN for k in range(200)], "open": [100.0] * 200, "high": [100.5] * 200,
                          "low": [99.5] * 200, "close": [100.0] * 200})
    hist = FundingHistory.from_rows([("XRPUSDT", 20 * MIN + 5, 0.001, 80.0), ("XRPUSDT", 35 * MIN + 9, -0.002, None)])
    lab = simulate_trades("XRPUSDT", np.array([10]), np.array([1]), np.array([100.0]), np.array([90.0]),
                          np.array([130.0]), frame["open_time"].to_numpy(), frame["open"].to_numpy(),
                          frame["high"].to_numpy(), frame["low"].to_numpy(), frame["close"].to_numpy(), MIN, 0.1,
                          LabelConfig(), hist)
    assert lab["valid"][0] and REASONS[lab["reason"][0]] == "stagnation"    # held past both settlements
    assert lab["funding"][0] == pytest.approx(0.001 * 80.0 + (-0.002) * 100.0, rel=1e-12)
