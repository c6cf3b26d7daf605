"""smc sweep: every trial is the in-process backtest with that configuration (same equity path), the
parallel sweep is deterministic, and the walk-forward / DSR / PBO outputs are well formed."""
from __future__ import annotations

import numpy as np
import orjson

from executor.config import config_from_env
from infra.backtest import run_in_process
from infra.pipeline import RECORDED, plan_backtest
from infra.settings import load_settings
from infra.sweep import hour_ends, hourly_equity, run_sweep

GRID = {"SMC_EXEC_TARGET_R": ["0", "2"], "SMC_EXEC_TIMEFRAMES": ["", "5m"]}


def test_sweep_trials_equal_backtests_and_repeat(tmp_path):
    plan = plan_backtest([str(RECORDED / "perps_1m_2025-05.parquet")], ["BTCUSDT", "ETHUSDT", "SOLUSDT"],
                         "2025-05-20", "2025-05-22", None, 0, "1m")
    s = load_settings(env={}).with_(model_path="", data_dir=str(tmp_path), namespace="sweeptest")
    a = run_sweep(s, plan, GRID, workers=2, windows=3, blocks=4, progress=False)
    b = run_sweep(s, plan, GRID, workers=1, windows=3, blocks=4, progress=False, baseline_seeds=0)
    assert a.returns.tobytes() == b.returns.tobytes() and a.trades == b.trades
    assert a.returns.shape == (48, 4) and sum(a.trades) > 20
    chosen_by_window = {w["window"]: w["chosen"] for w in a.walk_forward}
    assert [b["window"] for b in a.baselines] == sorted(chosen_by_window)
    ends = hour_ends(plan.start, plan.end)
    parts = np.array_split(np.arange(a.returns.shape[0]), 3)
    for j, env in enumerate(a.configs):
        cfg = config_from_env(s.equity, env=env)
        out, _ = run_in_process(s.with_(interval="1m", replay_end=plan.end), plan, keep=True, engine_form="batch", cfg=cfg)
        positions = [orjson.loads(v) for _, v in out.records.get("positions", [])]
        for base in (b for b in a.baselines if chosen_by_window[b["window"]] == j):
            # the window's strategy side: the closed positions this configuration opened in that block
            rows = parts[base["window"] - 1]
            lo = int(ends[rows[0] - 1]) if rows[0] > 0 else plan.start
            mine = [p for p in positions if p["status"] == "closed" and lo <= p["opened_at"] < int(ends[rows[-1]])]
            assert (base["start"], base["trades"]) == (lo, len(mine)), base
            ev = base["evidence"]
            if not mine:
                assert ev is None
                continue
            r = [p["realized_pnl"] / (p["qty"] * abs(p["entry_price"] - p["stop"])) for p in mine]
            assert ev["strategy"]["n"] == len(r) and abs(ev["strategy"]["mean"] - float(np.mean(r))) < 1e-12
            assert ev["random"]["seeds"] >= 20 and ev["random"]["random_trades"] > 0
            assert ev["random"]["lo"] <= ev["random"]["mean"] <= ev["random"]["hi"]
        pts = [(e["ts"], e["equity"]) for e in map(orjson.loads, (v for _, v in out.records.get("equity", [])))]
        eq = hourly_equity(pts, plan.start, plan.end, cfg.start_equity)
        want = np.diff(np.r_[cfg.start_equity, eq]) / np.r_[cfg.start_equity, eq][:-1]
        assert want.tobytes() == a.returns[:, j].tobytes(), env
        closed = sum(1 for _, v in out.records.get("positions", []) if orjson.loads(v)["status"] == "closed")
        assert closed == a.trades[j]
    assert len({orjson.dumps(c) for c in a.configs}) == 4
    assert len(a.walk_forward) == 2 and 0.0 <= a.pbo <= 1.0 and 0.0 <= a.dsr <= 1.0
    assert a.oos_ci[0] <= a.oos_mean <= a.oos_ci[1]
