"""models.baselines: random entries with the same exits / side mix / stop distances, bootstrap CIs,
buy-and-hold; on real USD-M 1m bars with the label simulator (the executor's exits and costs)."""
from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from models.baselines import (MIN_SEEDS, SymbolBars, bootstrap_mean_ci, buy_and_hold, evidence, random_entries)
from models.evaluate import make_simulator
from models.labels import LabelConfig

MIN = 60_000


def _bars(kl: pl.DataFrame) -> dict[str, SymbolBars]:
    return {sym: SymbolBars(*(g[c].to_numpy() for c in ("open_time", "open", "high", "low", "close")))
            for (sym,), g in kl.group_by(["symbol"], maintain_order=True)}


def test_bootstrap_ci_is_seeded_and_covers_the_mean():
    x = np.random.default_rng(0).normal(0.1, 1.0, 4000)
    a, b = bootstrap_mean_ci(x, 500, 3), bootstrap_mean_ci(x, 500, 3)
    assert a == b and a["lo"] < a["mean"] < a["hi"] and a["n"] == 4000
    se = x.std() / np.sqrt(x.size)
    assert a["hi"] - a["lo"] == pytest.approx(2 * 1.96 * se, rel=0.15)     # the normal-theory width
    assert np.isnan(bootstrap_mean_ci(np.zeros(0))["mean"])


def test_random_twins_keep_symbol_side_stop_and_target_ratio():
    rng = np.random.default_rng(1)
    n = 300
    t = np.arange(2000, dtype=np.int64) * MIN
    px = 100 + np.cumsum(rng.normal(0, 0.1, 2000))
    bars = {s: SymbolBars(t, px, px + 0.2, px - 0.2, px) for s in ("AUSDT", "BUSDT")}
    symbols = np.array(["AUSDT"] * 200 + ["BUSDT"] * 100)
    side = np.where(rng.uniform(size=n) < 0.3, 1, -1)
    stop_frac, ratio = rng.uniform(0.001, 0.01, n), rng.uniform(1.5, 3.0, n)
    seen = []

    def sim(sym, idx, s, entry, stop, target):
        seen.append((sym, idx, s, entry, stop, target))
        return {"valid": np.ones(len(idx), bool), "r": np.full(len(idx), 0.5)}

    r = random_entries(symbols, side, stop_frac, ratio, bars, sim, seed=5)
    assert r.shape == (n,) and np.all(r == 0.5)
    for sym, idx, s, entry, stop, target in seen:
        sel = symbols == sym
        assert np.array_equal(s, side[sel])                                   # same sides, trade by trade
        assert np.allclose(np.abs(entry - stop) / entry, stop_frac[sel])
        assert np.allclose(np.abs(target - entry) / np.abs(entry - stop), ratio[sel])
        assert np.all(np.sign(target - entry) == s) and np.all(entry == px[idx])
        assert idx.min() >= 100 and idx.max() < 2000 - 2
    other = random_entries(symbols, side, stop_frac, ratio, bars, sim, seed=6)
    assert seen[2][0] == seen[0][0] and not np.array_equal(seen[2][1], seen[0][1])   # another seed, other bars
    assert other.shape == (n,)
    with pytest.raises(ValueError, match="20 seeds"):
        evidence(r, symbols, side, stop_frac, ratio, bars, sim, seeds=MIN_SEEDS - 1)


def test_buy_and_hold_arithmetic():
    t = np.arange(3, dtype=np.int64) * MIN
    bars = {"A": SymbolBars(t, np.array([100.0, 101, 102]), np.array([101.0, 102, 103]),
                            np.array([99.0, 100, 101]), np.array([101.0, 102, 110.0])),
            "B": SymbolBars(t, np.array([10.0, 10, 10]), np.array([10.0, 10, 10]),
                            np.array([10.0, 10, 10]), np.array([10.0, 10, 9.0]))}
    b = buy_and_hold(bars, ["A", "B"], 0.0005, 1.0)
    buy_a, sell_a = 100 * 1.0001, 110 * 0.9999
    ra = (sell_a - buy_a - 0.0005 * (buy_a + sell_a)) / buy_a
    buy_b, sell_b = 10 * 1.0001, 9 * 0.9999
    rb = (sell_b - buy_b - 0.0005 * (buy_b + sell_b)) / buy_b
    assert b["return_pct"] == pytest.approx((ra + rb) / 2 * 100)


def test_evidence_on_real_bars_separates_an_oracle_from_random(small_dataset, majors_klines):
    """Random entries vs random entries: the difference CI holds 0. Setups chosen with hindsight (the
    winners only): the difference CI is far above 0. So the comparison can fail either way."""
    ds = small_dataset
    bars = _bars(majors_klines)
    sim = make_simulator(LabelConfig(), None, MIN, bars)
    rr = np.abs(ds["target"] - ds["entry"]).to_numpy() / np.abs(ds["entry"] - ds["stop"]).to_numpy()
    args = (ds["symbol"].to_numpy(), ds["side"].to_numpy().astype(np.int64), ds["stop_pct"].to_numpy(), rr)
    twin = random_entries(*args, bars, sim, seed=99)
    ok = np.isfinite(twin)
    sub = [a[ok] for a in args]
    ev = evidence(twin[ok], *sub, bars, sim, seeds=20, n_boot=400)
    d = ev["strategy_minus_random"]
    assert d["lo"] < 0 < d["hi"], d
    assert ev["random"]["seeds"] == 20 and len(ev["random"]["per_seed_mean_r"]) == 20
    assert ev["random"]["mean"] < 0                                            # costs: random 1m scalps lose
    win = ds["label"].to_numpy() == 1
    oracle = evidence(ds["r"].to_numpy()[win], *[a[win] for a in args], bars, sim, seeds=20, n_boot=400)
    assert oracle["strategy_minus_random"]["lo"] > 0.5
    assert oracle["always_flat"]["mean_r"] == 0.0 and np.isfinite(oracle["buy_and_hold"]["return_pct"])


def test_run_report_baselines_from_engine_positions():
    """infra.performance.random_entry_evidence on the closed positions a paper Engine produced from real
    1m bars (what the run report reads from the positions table): the strategy's R per trade is the
    positions' net PnL / (qty x |fill - stop|), the random side has 20 seeds, costs are the run's."""
    from executor.brokers.paper import PaperBroker
    from executor.config import ExecutorConfig
    from executor.engine import Engine
    from executor.instruments import InstrumentBook
    from infra.performance import ClosedPosition, random_entry_evidence
    from models.dataset import PERPS_1M, load_klines, smc_config, symbol_features
    from processors.smc import FEATURE_NAMES
    from schemas.signal import Signal, make_signal_id
    from schemas.trading import Position

    kl = load_klines(PERPS_1M["2025-05"], ["BTCUSDT", "ETHUSDT"]).group_by("symbol", maintain_order=True).head(3000)
    cfg = ExecutorConfig()
    eng = Engine(cfg, PaperBroker(cfg.paper), InstrumentBook.default())
    frames = [symbol_features(g, smc_config(MIN, 5)) .with_columns(pl.lit(s).alias("symbol"))
              for (s,), g in kl.group_by(["symbol"], maintain_order=True)]
    closed = {}
    for f in pl.concat(frames).sort(["open_time", "symbol"]).iter_rows(named=True):
        side = f["setup_side"]
        sig = Signal(signal_id=make_signal_id(f["symbol"], "1m", f["open_time"], "t"), strategy_version="t",
                     symbol=f["symbol"], timeframe="1m", open_time=f["open_time"], close_time=f["open_time"] + MIN - 1,
                     open=f["open"], high=f["high"], low=f["low"], close=f["close"], volume=f["volume"],
                     atr=f["atr"] or 1.0, features=[0.0] * len(FEATURE_NAMES), confidence=0.9 if side != "flat" else 0.0,
                     side=side, entry=f["setup_entry"] if side != "flat" else 0.0,
                     stop=f["setup_stop"] if side != "flat" else 0.0, target=f["setup_target"] if side != "flat" else 0.0)
        for rec in eng.process(sig):
            if isinstance(rec, Position) and rec.status == "closed":
                closed[rec.position_id] = rec
    pos = [ClosedPosition(p.symbol, p.side, p.qty, p.entry_price, p.stop, p.target, p.realized_pnl)
           for p in closed.values()]
    assert len(pos) > 30
    bars = _bars(kl)
    ev = random_entry_evidence(pos, bars, MIN, cfg.paper, cfg.exits, seeds=20)
    want = np.mean([p.realized_pnl / (p.qty * abs(p.entry_price - p.stop)) for p in pos])
    assert ev["strategy"]["mean"] == pytest.approx(want) and ev["strategy"]["n"] == len(pos)
    assert ev["random"]["seeds"] == 20 and ev["random"]["lo"] <= ev["random"]["mean"] <= ev["random"]["hi"]
    d = ev["strategy_minus_random"]
    assert d["lo"] <= d["mean"] <= d["hi"] and d["paired_trades"] >= len(pos) - 2
    assert random_entry_evidence([], bars, MIN, cfg.paper, cfg.exits) is None
    from infra.report import baseline_text
    assert "20 seeds" in baseline_text(ev) and baseline_text(None) == ""
