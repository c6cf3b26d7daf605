"""`smc sweep`: a grid over the executor's knobs with walk-forward selection and overfitting statistics.

The signals are computed once (infra.backtest.run_in_process, the executor's order); every trial runs a
fresh executor engine (its own ExecutorConfig: paper broker, exits, sizing, accounting) over them with
infra.backtest.execute_signals, in parallel worker processes (fork: the signals are shared copy-on-write).
Per trial: the account's hourly equity -> hourly returns. Then
* walk-forward: the period is cut into `windows` consecutive blocks; on block k the trial with the best
  Sharpe is chosen and its result on block k+1 (out of sample) is recorded; the out-of-sample hourly
  returns are concatenated, with a bootstrap 95 % CI of their mean;
* the deflated Sharpe ratio of the trial chosen on the whole period, given all the trials' Sharpes;
* the probability of backtest overfitting (CSCV) of the T x N matrix of hourly returns.
The knobs are executor-side only (entry/exit/sizing); signal-side knobs (SmcConfig) need the processors
rerun per value and are not in this grid.
"""
from __future__ import annotations

import dataclasses
import itertools
import multiprocessing as mp
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from infra.overfit import deflated_sharpe, pbo_cscv, sharpe

HOUR = 3_600_000

# the default grid: 6 x 4 x 3 x 3 = 216 configurations (env names of executor.config.config_from_env)
GRID = {
    "SMC_EXEC_TARGET_R": ["0", "1", "1.5", "2", "2.5", "3"],
    "SMC_EXEC_MAX_HOLD_MIN": ["30", "60", "120", "240"],
    "SMC_EXEC_STAGNATION_MIN": ["15", "30", "60"],
    "SMC_EXEC_TIMEFRAMES": ["", "1m", "5m"],
}

_SIGNALS: list = []      # set in the parent before the pool forks
_CTX: dict = {}


def grid_configs(grid: dict[str, list[str]]) -> list[dict[str, str]]:
    keys = sorted(grid)
    return [dict(zip(keys, vals)) for vals in itertools.product(*(grid[k] for k in keys))]


def hourly_equity(equity_points: list[tuple[int, float]], start: int, end: int, start_equity: float) -> np.ndarray:
    """Equity at the end of each hour [start, end): the last equity record before the hour's end."""
    hours = np.arange(start - start % HOUR + HOUR, end + HOUR, HOUR)
    if not equity_points:
        return np.full(hours.size, start_equity)
    ts = np.array([t for t, _ in equity_points], dtype=np.int64)
    eq = np.array([e for _, e in equity_points], dtype=np.float64)
    idx = np.searchsorted(ts, hours, side="left") - 1
    return np.where(idx >= 0, eq[np.maximum(idx, 0)], start_equity)


def _trial(i: int) -> tuple[int, np.ndarray, int]:
    from executor.config import config_from_env
    from executor.service import ExecutorService
    from infra.backtest import execute_signals
    settings, plan, configs = _CTX["settings"], _CTX["plan"], _CTX["configs"]
    # the funding history was read in the parent: polars must not run in a forked child (its thread
    # pool does not survive the fork: the trial hung in read_parquet)
    cfg = dataclasses.replace(config_from_env(settings.equity, env={**configs[i], "SMC_EXEC_FUNDING_FILES": "none"}),
                              funding=_CTX["funding"])
    svc = ExecutorService(settings, cfg)
    points: list[tuple[int, float]] = []
    trades = [0]

    def emit(base, _key, _value, rec):
        if base == "equity":
            points.append((rec.ts, rec.equity))
        elif base == "positions" and rec.status == "closed":
            trades[0] += 1

    execute_signals(svc.engine, _SIGNALS, emit)
    svc.broker.close()
    eq = hourly_equity(points, plan.start, plan.end, cfg.start_equity)
    rets = np.diff(np.r_[cfg.start_equity, eq]) / np.r_[cfg.start_equity, eq][:-1]
    return i, rets, trades[0]


@dataclass
class SweepResult:
    configs: list[dict]
    returns: np.ndarray          # T hours x N configurations
    trades: list[int]
    sharpes: np.ndarray
    chosen: int
    dsr: float
    pbo: float
    walk_forward: list[dict]
    oos_mean: float
    oos_ci: tuple[float, float]
    seconds: float


def run_sweep(settings, plan, grid: dict | None = None, workers: int = 2, windows: int = 4, blocks: int = 8,
              engine_form: str = "batch", progress: bool = True, seed: int = 0) -> SweepResult:
    from rich.progress import Progress
    from infra.backtest import run_in_process
    global _SIGNALS
    t0 = time.monotonic()
    configs = grid_configs(grid or GRID)
    settings = settings.with_(interval=plan.interval, replay_end=plan.end, universe=",".join(plan.symbols),
                              namespace=settings.namespace or "sweep")
    released: list = []
    run_in_process(settings, plan, engine_form=engine_form, released=released)
    _SIGNALS = released
    from executor.config import config_from_env
    _CTX.update(settings=settings, plan=plan, configs=configs, funding=config_from_env(settings.equity, env={}).funding)
    n = len(configs)
    results: dict[int, tuple[np.ndarray, int]] = {}
    with Progress(disable=not progress) as bar:
        task = bar.add_task(f"sweep ({n} configurations, {workers} workers)", total=n)
        if workers > 1:
            with mp.get_context("fork").Pool(workers) as pool:
                for i, rets, tr in pool.imap_unordered(_trial, range(n)):
                    results[i] = (rets, tr)
                    bar.advance(task)
        else:
            for i in range(n):
                _, rets, tr = _trial(i)
                results[i] = (rets, tr)
                bar.advance(task)
    m = np.column_stack([results[i][0] for i in range(n)])
    trades = [results[i][1] for i in range(n)]
    srs = np.array([sharpe(m[:, j]) for j in range(n)])
    chosen = int(np.argmax(srs))
    dsr = deflated_sharpe(m[:, chosen], srs)
    pbo, _ = pbo_cscv(m, blocks=blocks)
    parts = np.array_split(np.arange(m.shape[0]), windows)
    wf, oos = [], []
    for k in range(windows - 1):
        ins, outs = parts[k], parts[k + 1]
        is_sr = np.array([sharpe(m[ins, j]) for j in range(n)])
        best = int(np.argmax(is_sr))
        r = m[outs, best]
        oos.append(r)
        # window: the 1-based index of the out-of-sample block
        wf.append({"window": k + 2, "chosen": best, "config": configs[best], "is_sharpe": float(is_sr[best]),
                   "oos_sharpe": sharpe(r), "oos_return": float(np.prod(1 + r) - 1)})
    o = np.concatenate(oos)
    rng = np.random.default_rng(seed)
    boots = np.array([rng.choice(o, o.size).mean() for _ in range(2000)])
    return SweepResult(configs, m, trades, srs, chosen, dsr, pbo, wf, float(o.mean()),
                       (float(np.percentile(boots, 2.5)), float(np.percentile(boots, 97.5))),
                       time.monotonic() - t0)


def write_report(res: SweepResult, plan, out: Path) -> Path:
    import html
    import orjson
    out.mkdir(parents=True, exist_ok=True)
    summary = {"configurations": len(res.configs), "hours": int(res.returns.shape[0]), "symbols": plan.symbols,
               "start": plan.start, "end": plan.end, "chosen": res.configs[res.chosen],
               "chosen_sharpe_hourly": float(res.sharpes[res.chosen]), "chosen_trades": res.trades[res.chosen],
               "deflated_sharpe": res.dsr, "pbo": res.pbo, "walk_forward": res.walk_forward,
               "oos_mean_hourly_return": res.oos_mean, "oos_mean_ci95": res.oos_ci, "seconds": res.seconds}
    (out / "sweep.json").write_bytes(orjson.dumps(summary, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY))
    rows = "".join(f"<tr><td>{w['window']}</td><td>{html.escape(str(w['config']))}</td><td>{w['is_sharpe']:.4f}</td>"
                   f"<td>{w['oos_sharpe']:.4f}</td><td>{w['oos_return']:.4%}</td></tr>" for w in res.walk_forward)
    (out / "index.html").write_text(
        f"<html><body><h1>smc sweep</h1><p>{len(res.configs)} configurations, {len(plan.symbols)} symbols, "
        f"{res.returns.shape[0]} hours; chosen {html.escape(str(res.configs[res.chosen]))}</p>"
        f"<p>deflated Sharpe ratio {res.dsr:.3f}; PBO (CSCV) {res.pbo:.3f}; out-of-sample mean hourly return "
        f"{res.oos_mean:.2e} (95% CI {res.oos_ci[0]:.2e} .. {res.oos_ci[1]:.2e})</p>"
        f"<table border=1><tr><th>OOS window (1-based)</th><th>chosen on the previous window</th><th>IS Sharpe</th>"
        f"<th>OOS Sharpe</th><th>OOS return</th></tr>{rows}</table></body></html>")
    return out
