"""`smc sweep`: a grid over the executor's knobs with walk-forward selection and overfitting statistics.

The signals are computed once (infra.backtest.run_in_process, the executor's order); every trial runs a
fresh executor engine (its own ExecutorConfig: paper broker, exits, sizing, accounting) over them with
infra.backtest.execute_signals, in parallel worker processes (fork: the signals are shared copy-on-write).
Per trial: the account's hourly equity -> hourly returns. Then
* walk-forward: the period is cut into `windows` consecutive blocks; on block k the trial with the best
  Sharpe is chosen and its result on block k+1 (out of sample) is recorded; the out-of-sample hourly
  returns are concatenated, with a bootstrap 95 % CI of their mean;
* the deflated Sharpe ratio of the trial chosen on the whole period, given all the trials' Sharpes;
* the probability of backtest overfitting (CSCV) of the T x N matrix of hourly returns;
* the random-entry baseline of the walk-forward choice: the trades the configuration chosen on block k
  opened in block k+1, against random entries with the same exits, costs, side mix and stop distances
  (infra.performance.random_entry_evidence, >= 20 seeds, the chosen configuration's exit rules), per
  out-of-sample block, with bootstrap CIs of mean R per trade and of the difference.
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


def hour_ends(start: int, end: int) -> np.ndarray:
    """The ends of the hours the sweep samples over [start, end): row j of the returns matrix is the
    change of equity over [hour_ends[j-1], hour_ends[j]) (row 0 from `start`)."""
    return np.arange(start - start % HOUR + HOUR, end + HOUR, HOUR)


def hourly_equity(equity_points: list[tuple[int, float]], start: int, end: int, start_equity: float) -> np.ndarray:
    """Equity at the end of each hour [start, end): the last equity record before the hour's end."""
    hours = hour_ends(start, end)
    if not equity_points:
        return np.full(hours.size, start_equity)
    ts = np.array([t for t, _ in equity_points], dtype=np.int64)
    eq = np.array([e for _, e in equity_points], dtype=np.float64)
    idx = np.searchsorted(ts, hours, side="left") - 1
    return np.where(idx >= 0, eq[np.maximum(idx, 0)], start_equity)


def _trial(i: int, closed: list | None = None) -> tuple[int, np.ndarray, int]:
    """Run configuration i over the shared signals -> (i, hourly returns, closed trades). `closed`, when
    given, receives (opened_at, infra.performance.ClosedPosition) of each closed position."""
    from executor.config import config_from_env
    from executor.service import ExecutorService
    from infra.backtest import execute_signals
    from infra.performance import ClosedPosition
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
            if closed is not None:
                closed.append((rec.opened_at, ClosedPosition(rec.symbol, rec.side, rec.qty, rec.entry_price, rec.stop,
                                                             rec.target, rec.realized_pnl)))

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
    baselines: list[dict] = dataclasses.field(default_factory=list)   # per OOS window (window_baselines)


def symbol_bars(plan) -> dict:
    """The plan's klines as models.baselines.SymbolBars per symbol (what the random entries draw from)."""
    from ingest.replay import load_klines
    from models.baselines import SymbolBars
    df = load_klines(plan.files, plan.symbols, plan.start, plan.end, plan.interval).sort("symbol", "open_time")
    out = {}
    for (sym,), g in df.group_by(["symbol"], maintain_order=True):
        out[sym] = SymbolBars(g["open_time"].to_numpy().astype(np.int64), *(g[c].to_numpy().astype(np.float64)
                                                                           for c in ("open", "high", "low", "close")))
    return out


def bars_between(b, lo: int, hi: int):
    """The bars of b with lo <= open_time < hi."""
    from models.baselines import SymbolBars
    i, j = np.searchsorted(b.open_time, [lo, hi], side="left")
    return SymbolBars(b.open_time[i:j], b.open[i:j], b.high[i:j], b.low[i:j], b.close[i:j])


def window_baselines(plan, configs: list[dict], walk_forward: list[dict], parts: list[np.ndarray],
                     seeds: int = 20) -> list[dict]:
    """Random entries with the same exits for the walk-forward choice: per out-of-sample block, the trades
    its chosen configuration opened in that block (each block has its own exit rules, so the blocks are
    not pooled)."""
    from executor.config import config_from_env
    from infra.performance import random_entry_evidence
    from models.baselines import WARMUP_BARS
    from models.dataset import interval_ms_of
    bars = symbol_bars(plan)
    ends = hour_ends(plan.start, plan.end)
    out = []
    for w in walk_forward:
        rows = parts[w["window"] - 1]
        lo = int(ends[rows[0] - 1]) if rows[0] > 0 else plan.start
        hi = int(ends[rows[-1]])
        closed: list = []
        _trial(w["chosen"], closed)
        pos = [p for t, p in closed if lo <= t < hi]
        cfg = config_from_env(1.0, env={**configs[w["chosen"]], "SMC_EXEC_FUNDING_FILES": "none"})
        step = interval_ms_of(plan.interval)
        # the twins enter in the same block (after the simulator's 100-bar warm-up, taken from before it)
        # and may run up to the max hold past its end, as the block's own trades may
        block = {sym: bars_between(b, lo - WARMUP_BARS * step, hi + cfg.exits.max_hold_ms) for sym, b in bars.items()}
        ev = random_entry_evidence(pos, block, step, cfg.paper, cfg.exits, seeds, funding=_CTX["funding"])
        out.append({"window": w["window"], "start": lo, "end": hi, "trades": len(pos), "evidence": ev})
    return out


def run_sweep(settings, plan, grid: dict | None = None, workers: int = 2, windows: int = 4, blocks: int = 8,
              engine_form: str = "batch", progress: bool = True, seed: int = 0,
              baseline_seeds: int = 20) -> SweepResult:
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
    baselines = window_baselines(plan, configs, wf, parts, baseline_seeds) if baseline_seeds else []
    return SweepResult(configs, m, trades, srs, chosen, dsr, pbo, wf, float(o.mean()),
                       (float(np.percentile(boots, 2.5)), float(np.percentile(boots, 97.5))),
                       time.monotonic() - t0, baselines)


def baseline_line(b: dict) -> str:
    """One OOS window's random-entry comparison as text (CLI, README)."""
    ev = b["evidence"]
    if ev is None:
        return f"window {b['window']}: {b['trades']} trades, nothing to compare"
    st, rn, d = ev["strategy"], ev["random"], ev["strategy_minus_random"]
    return (f"window {b['window']}: {st['n']} trades, mean R {st['mean']:+.3f} [{st['lo']:+.3f}, {st['hi']:+.3f}] vs "
            f"random {rn['mean']:+.3f} [{rn['lo']:+.3f}, {rn['hi']:+.3f}] ({rn['seeds']} seeds); "
            f"difference {d['mean']:+.3f} [{d['lo']:+.3f}, {d['hi']:+.3f}]")


def baseline_rows(baselines: list[dict]) -> str:
    def ci(x: dict) -> str:
        return f"{x['mean']:+.3f} [{x['lo']:+.3f}, {x['hi']:+.3f}]"
    rows = []
    for b in baselines:
        ev = b["evidence"]
        cells = ([ci(ev["strategy"]), f"{ci(ev['random'])} ({ev['random']['seeds']} seeds)",
                  ci(ev["strategy_minus_random"])] if ev else ["-", "-", "-"])
        rows.append(f"<tr><td>{b['window']}</td><td>{b['trades']}</td>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    return "".join(rows)


def write_report(res: SweepResult, plan, out: Path) -> Path:
    import html
    import orjson
    out.mkdir(parents=True, exist_ok=True)
    summary = {"configurations": len(res.configs), "hours": int(res.returns.shape[0]), "symbols": plan.symbols,
               "start": plan.start, "end": plan.end, "chosen": res.configs[res.chosen],
               "chosen_sharpe_hourly": float(res.sharpes[res.chosen]), "chosen_trades": res.trades[res.chosen],
               "deflated_sharpe": res.dsr, "pbo": res.pbo, "walk_forward": res.walk_forward,
               "oos_mean_hourly_return": res.oos_mean, "oos_mean_ci95": res.oos_ci,
               "random_entry_baselines": res.baselines, "seconds": res.seconds}
    (out / "sweep.json").write_bytes(orjson.dumps(summary, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY))
    rows = "".join(f"<tr><td>{w['window']}</td><td>{html.escape(str(w['config']))}</td><td>{w['is_sharpe']:.4f}</td>"
                   f"<td>{w['oos_sharpe']:.4f}</td><td>{w['oos_return']:.4%}</td></tr>" for w in res.walk_forward)
    (out / "index.html").write_text(
        f"<html><body><h1>smc sweep</h1><p>{len(res.configs)} configurations, {len(plan.symbols)} symbols, "
        f"{res.returns.shape[0]} hours; chosen {html.escape(str(res.configs[res.chosen]))}</p>"
        f"<p>deflated Sharpe ratio {res.dsr:.3f}; PBO (CSCV) {res.pbo:.3f}; out-of-sample mean hourly return "
        f"{res.oos_mean:.2e} (95% CI {res.oos_ci[0]:.2e} .. {res.oos_ci[1]:.2e})</p>"
        f"<table border=1><tr><th>OOS window (1-based)</th><th>chosen on the previous window</th><th>IS Sharpe</th>"
        f"<th>OOS Sharpe</th><th>OOS return</th></tr>{rows}</table>"
        f"<h2>Random entries with the same exits (out of sample)</h2><table border=1><tr><th>OOS window</th>"
        f"<th>trades</th><th>strategy mean R (95% CI)</th><th>random mean R (95% CI)</th>"
        f"<th>strategy - random (95% CI)</th></tr>{baseline_rows(res.baselines)}</table></body></html>")
    return out
