"""`smc lookahead-check` (processors/lookahead.py): clean on real data, catches a leaky user feature, a leaky
engine and a leaky scorer at the right bar and field; the command's exit codes."""
from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from processors import lookahead as L
from processors.scoring import HeuristicScorer, load_scorer
from processors.smc import SmcConfig, SymbolState

import lookahead_user_features as UF
import smc_testutil as U

DAY = 1440


@pytest.fixture(scope="module")
def day_bars():
    """2 real USD-M perps x 1 day of 1m bars (2025-05-20)."""
    d = pl.read_parquet(U.RECORDED / "perps_1m_2025-05.parquet").filter(
        pl.col("symbol").is_in(["BTCUSDT", "SOLUSDT"]) & (pl.col("open_time") >= 1747699200000)
        & (pl.col("open_time") < 1747699200000 + DAY * 60_000))
    out = {s: g.sort("open_time").select(U.COLS) for (s,), g in d.group_by("symbol", maintain_order=True)}
    assert sorted(out) == ["BTCUSDT", "SOLUSDT"] and all(g.height == DAY for g in out.values())
    return out


def _factory(scorer=None):
    return L.processor_factory(scorer or load_scorer(str(U.REPO / "models" / "lgbm_smc.txt")), "smc-v1", "1m",
                               SmcConfig(interval_ms=60_000, htf_factor=5))


def test_real_data_is_clean_and_every_value_was_compared(day_bars):
    rep = L.lookahead_check(day_bars, _factory(), cuts=8, seed=3,
                            features={"causal": UF.causal_range}, offsets=1)
    assert rep.clean, rep.findings[:5]
    assert all(len(c) == 8 for c in rep.cuts.values())
    # every prefix signal (1m and 5m) and every feature value below each cut was compared
    expected = sum(c + c // 5 + 2 * c for cuts in rep.cuts.values() for c in cuts)
    assert rep.compared >= expected - 2 * 8 * 2
    # the warm-up check sees the engine's history dependence (Wilder ATR) and the feature's rolling window
    fields = {(w.timeframe, w.field) for w in rep.warmup}
    assert ("1m", "atr") in fields
    # the bar's own range never depends on history; the rolling mean does: null for its first 4 bars after a
    # later start, and (polars keeps a running sum) its last bits can differ for far longer
    assert not [w for w in rep.warmup if w.field == "feature causal.range"]
    w = [w for w in rep.warmup if w.field == "feature causal.close_mean_5"]
    assert sorted(x.first_open_time for x in w) == sorted(
        day_bars[x.symbol]["open_time"][x.offset] for x in w) and len(w) == len(rep.offsets) == 2


def test_same_seed_same_cuts_other_seed_other_cuts(day_bars):
    one = {"BTCUSDT": day_bars["BTCUSDT"].head(300)}
    a = L.lookahead_check(one, _factory(HeuristicScorer()), cuts=4, seed=1, offsets=0)
    b = L.lookahead_check(one, _factory(HeuristicScorer()), cuts=4, seed=1, offsets=0)
    c = L.lookahead_check(one, _factory(HeuristicScorer()), cuts=4, seed=2, offsets=0)
    assert a.cuts == b.cuts and a.cuts != c.cuts


def test_leaky_user_feature_is_caught_at_the_last_bar_before_each_cut(day_bars):
    bars = {"SOLUSDT": day_bars["SOLUSDT"]}
    rep = L.lookahead_check(bars, _factory(HeuristicScorer()), cuts=5, seed=0,
                            features={"next_close": UF.next_close}, offsets=0)
    assert not rep.clean
    times = bars["SOLUSDT"]["open_time"].to_list()
    closes = bars["SOLUSDT"]["close"].to_list()
    assert {f.field for f in rep.findings} == {"feature next_close"}
    # exactly one value per cut changes: the bar just before the cut, whose "next close" was removed
    assert sorted((f.cut, f.open_time) for f in rep.findings) == [(c, times[c - 1]) for c in rep.cuts["SOLUSDT"]]
    for f in rep.findings:
        assert f.full == closes[f.cut] and (f.prefix is None or np.isnan(f.prefix))
        assert f.cut_time == times[f.cut]


def test_leaky_engine_is_caught(day_bars, monkeypatch):
    """An engine change that reads the future: the 1m signal of bar t is held back until bar t+1 and carries
    that bar's close as its entry. In a stream, reading the future means waiting for it: the prefix run never
emits the bar before the cut, which the full run emitted on the bar at the cut."""
    original = SymbolState.update

    def update_with_next_bar(self, bar):
        if self.base.last_time is None:   # a new state (ids of freed ones are reused)
            _HELD.pop(id(self), None)
        outs = original(self, bar)
        held = _HELD.get(id(self))      # SymbolState has __slots__: the held output lives beside it
        _HELD[id(self)] = outs[0]
        if held is None:
            return outs[1:]
        return [held._replace(setup=held.setup._replace(entry=bar[4])), *outs[1:]]

    _HELD: dict = {}
    monkeypatch.setattr(SymbolState, "update", update_with_next_bar)
    bars = {"BTCUSDT": day_bars["BTCUSDT"].head(400)}
    rep = L.lookahead_check(bars, _factory(HeuristicScorer()), cuts=3, seed=5, offsets=0)
    assert not rep.clean
    times = bars["BTCUSDT"]["open_time"].to_list()
    missing = sorted((f.cut, f.open_time) for f in rep.findings if f.field == "signal" and f.timeframe == "1m")
    assert missing == [(c, times[c - 1]) for c in rep.cuts["BTCUSDT"]]
    assert all(f.full == "present" and f.prefix == "absent" for f in rep.findings)


def test_batch_engine_is_clean_and_a_shifted_column_in_it_is_caught(day_bars, monkeypatch):
    """The numba batch form (smc backtest's default): clean; then a vectorised slip that reads the next row
    (rsi_14 shifted by -1, the classic lookahead of a column-wise engine) is caught at the bar and field."""
    import processors.batch_signals as BS
    bars = {"SOLUSDT": day_bars["SOLUSDT"].head(600)}
    clean = L.lookahead_check(bars, _factory(HeuristicScorer()), cuts=4, seed=2, offsets=1, form="batch")
    assert clean.clean and clean.compared > 0
    real = BS.compute_batch_all

    def leaky(b, cfg):
        return {tf: (f.with_columns(pl.col("rsi_14").shift(-1).fill_null(50.0)) if tf == "1m" else f)
                for tf, f in real(b, cfg).items()}
    monkeypatch.setattr(BS, "compute_batch_all", leaky)
    rep = L.lookahead_check(bars, _factory(HeuristicScorer()), cuts=4, seed=2, offsets=0, form="batch")
    times = bars["SOLUSDT"]["open_time"].to_list()
    rsi = [f for f in rep.findings if f.field == "features.rsi_14"]
    assert sorted((f.cut, f.open_time) for f in rsi) == [(c, times[c - 1]) for c in rep.cuts["SOLUSDT"]
                                                          if rep.cuts["SOLUSDT"]]
    assert all(f.timeframe == "1m" and f.prefix == 50.0 for f in rsi)


def test_scorer_reading_later_rows_of_its_batch_is_caught(day_bars, monkeypatch):
    """A confidence normalised over the batch (its later rows are the future): caught as 'confidence'."""
    plain = HeuristicScorer.score
    monkeypatch.setattr(HeuristicScorer, "score",
                        lambda self, f: np.clip(plain(self, f) - plain(self, f).mean() + 0.5, 0.0, 1.0))
    bars = {"BTCUSDT": day_bars["BTCUSDT"].head(300)}
    rep = L.lookahead_check(bars, _factory(HeuristicScorer()), cuts=2, seed=0, offsets=0)
    assert rep.findings and {f.field for f in rep.findings} == {"confidence"}
    assert all(f.open_time < f.cut_time for f in rep.findings)


def test_cli_exit_codes(capsys):
    from infra.cli import main
    base = ["lookahead-check", "--symbols", "BTCUSDT", "--start", "2025-05-20", "--end", "2025-05-20T06:00",
            "--cuts", "3", "--offsets", "1", "--scorer", "heuristic", "--no-progress"]
    assert main(base) == 0
    assert "clean" in capsys.readouterr().out
    assert main(base + ["--feature", "lookahead_user_features:next_close"]) == 1
    out = capsys.readouterr().out
    assert "LOOKAHEAD" in out and "feature" in out
    assert main(base + ["--feature", "lookahead_user_features:causal_range", "--smc", "swing_length=3"]) == 0
    with pytest.raises(SystemExit) as e:
        main(base + ["--feature", "no_such_module:f"])
    assert e.value.code == 2
    assert main(base + ["--engine", "batch"]) == 0
    assert main(["lookahead-check", "--symbols", "NOPEUSDT", "--no-progress"]) == 2
