"""Tearsheet figures of a run: pure functions over closed trades and the equity curve (no I/O).

Each figure is defined here once; infra.report reads the audit trail and renders them, `smc compare`
puts several runs' figures side by side. The basic ones (max drawdown, resampled returns, Sharpe,
profit factor, the confidence tier) live in infra.performance and are used from here.

Conventions (the page says them too):
* a trade is a win when its net PnL (after fees and funding) is > 0, a loss when < 0;
* R multiple = net PnL / (qty x |entry fill - stop|): the loss a stop-out at the stop price would cost;
* PnL % = net PnL / entry notional (qty x entry fill);
* returns for Sharpe / Sortino are close-to-close returns of the equity curve resampled to one
  sampling (days when the run spans >= MIN_DAILY_POINTS days, else hours), annualised by the square
  root of that sampling's periods per year (crypto trades 24/7: 365 days, 8,760 hours).
"""
from __future__ import annotations

import math
from datetime import datetime, timezone

import numpy as np

from infra.performance import DAY_MS, max_drawdown, resampled_returns, sharpe, sortino

HOUR_MS = 3_600_000
YEAR_MS = 365.25 * DAY_MS
MIN_DAILY_POINTS = 30          # fewer daily returns than this: Sharpe from hourly returns, and the page says so
BLOCKS = ("FVG", "OB", "sweep", "BOS", "CHoCH")
# the signal events (executor.engine.pattern_of joins them with "+") that make each building block
_BLOCK_EVENTS = {"fvg": "FVG", "fvg_mitigated": "FVG", "ob": "OB", "ob_mitigated": "OB", "sweep": "sweep",
                 "bos": "BOS", "choch": "CHoCH"}


def r_multiple(pnl: float, qty: float, entry: float, stop: float) -> float:
    """Net PnL in units of the risk the stop defined; NaN when there was no stop distance."""
    risk = qty * abs(entry - stop)
    return pnl / risk if risk > 0 else math.nan


def pnl_pct(pnl: float, qty: float, entry: float) -> float:
    """Net PnL as a percentage of the entry notional."""
    notional = qty * entry
    return pnl / notional * 100.0 if notional > 0 else math.nan


def blocks_of(pattern: str) -> list[str]:
    """The SMC building blocks a signal's pattern holds (a block with its mitigation counts once)."""
    found = {_BLOCK_EVENTS[p] for p in pattern.split("+") if p in _BLOCK_EVENTS}
    return [b for b in BLOCKS if b in found]


def longest_streak(pnls, losing: bool = True) -> int:
    """Longest run of consecutive losing (pnl < 0) or winning (pnl > 0) trades, in closing order."""
    best = cur = 0
    for p in pnls:
        cur = cur + 1 if (p < 0 if losing else p > 0) else 0
        best = max(best, cur)
    return best


def sqn(rs) -> float:
    """Van Tharp's System Quality Number: sqrt(n) x mean(R) / std(R) (sample std), over all trades
    with a defined R (not capped at 100 trades). NaN with fewer than 2 trades or no spread."""
    r = np.asarray([x for x in rs if math.isfinite(x)], dtype=np.float64)
    if r.size < 2 or np.std(r, ddof=1) == 0:
        return math.nan
    return float(math.sqrt(r.size) * r.mean() / np.std(r, ddof=1))


def trade_figures(pnls, rs) -> dict:
    """Per-trade figures: expectancy (USDT and R), average win / loss, payoff ratio, best / worst trade,
    streaks, SQN. `pnls` net PnL in closing order; `rs` their R multiples (NaN where undefined)."""
    p = np.asarray(pnls, dtype=np.float64)
    wins, losses = p[p > 0], p[p < 0]
    r = np.asarray([x for x in rs if math.isfinite(x)], dtype=np.float64)
    avg_win = float(wins.mean()) if wins.size else 0.0
    avg_loss = float(losses.mean()) if losses.size else 0.0
    return {
        "expectancy": float(p.mean()) if p.size else 0.0,
        "expectancy_r": float(r.mean()) if r.size else math.nan,
        "avg_win": avg_win,
        "avg_loss": avg_loss,
        "payoff_ratio": (avg_win / -avg_loss) if avg_loss < 0 else (math.inf if avg_win > 0 else 0.0),
        "best_trade": float(p.max()) if p.size else 0.0,
        "worst_trade": float(p.min()) if p.size else 0.0,
        "longest_losing_streak": longest_streak(p, losing=True),
        "longest_winning_streak": longest_streak(p, losing=False),
        "sqn": sqn(r),
    }


def cagr(start_equity: float, final_equity: float, start_ms: int, end_ms: int) -> float:
    """Compound annual growth rate (fraction) over the period [start_ms, end_ms), 365.25-day years."""
    years = (end_ms - start_ms) / YEAR_MS
    if years <= 0 or start_equity <= 0:
        return 0.0
    if final_equity <= 0:
        return -1.0
    return float((final_equity / start_equity) ** (1.0 / years) - 1.0)


def calmar(cagr_value: float, max_drawdown_fraction: float) -> float:
    """CAGR / max drawdown (both fractions); NaN without a drawdown."""
    return cagr_value / max_drawdown_fraction if max_drawdown_fraction > 0 else math.nan


def drawdown_episode(ts: np.ndarray, equity: np.ndarray, start_equity: float, start_ms: int, end_ms: int) -> dict:
    """The largest peak-to-trough fall of the equity curve (start_equity at start_ms, then the snapshots):
    depth (%), the peak's, trough's and recovery's times (recovery: the first snapshot at or above the
    peak after the trough; None if never) and duration peak -> recovery (or -> end_ms if unrecovered);
    also the longest time spent below a previous peak (underwater)."""
    t = np.concatenate([[start_ms], np.asarray(ts, dtype=np.int64)])
    e = np.concatenate([[start_equity], np.asarray(equity, dtype=np.float64)])
    peaks = np.maximum.accumulate(e)
    dd = (peaks - e) / peaks
    out = {"max_drawdown_pct": max_drawdown(e) * 100.0, "peak_at": None, "trough_at": None, "recovered_at": None,
           "duration_ms": 0, "longest_underwater_ms": 0}
    if e.size == 0:
        return out
    trough = int(np.argmax(dd))
    if dd[trough] > 0:
        peak = int(np.flatnonzero(e[:trough + 1] == peaks[trough])[-1])
        after = np.flatnonzero(e[trough:] >= peaks[trough])
        rec = trough + int(after[0]) if after.size else None
        out.update(peak_at=int(t[peak]), trough_at=int(t[trough]), recovered_at=None if rec is None else int(t[rec]),
                   duration_ms=int((t[rec] if rec is not None else end_ms) - t[peak]))
    # underwater spells: from the last new high to the next snapshot at or above it
    longest, high_at = 0, int(t[0])
    for i in range(1, e.size):
        if e[i] >= peaks[i - 1]:
            longest = max(longest, int(t[i]) - high_at) if dd[i - 1] > 0 else longest
            high_at = int(t[i])
    if dd[-1] > 0:
        longest = max(longest, end_ms - high_at)
    out["longest_underwater_ms"] = longest
    return out


def monthly_returns(ts: np.ndarray, equity: np.ndarray, start_equity: float) -> list[dict]:
    """Return (%) of each calendar month (UTC): its last equity snapshot over the previous month's last
    (the first month over start_equity). A month without a snapshot is absent (0 %: nothing changed)."""
    closes: dict[str, float] = {}
    for t, e in zip(np.asarray(ts).tolist(), np.asarray(equity).tolist()):
        closes[datetime.fromtimestamp(t / 1000, timezone.utc).strftime("%Y-%m")] = e   # ts ascending: last wins
    out, prev = [], start_equity
    for month in sorted(closes):
        out.append({"month": month, "return_pct": (closes[month] / prev - 1.0) * 100.0})
        prev = closes[month]
    return out


def sharpe_sampling(start_ms: int, end_ms: int) -> tuple[str, int]:
    """The sampling the risk-adjusted figures use: days when the period holds >= MIN_DAILY_POINTS of
    them, else hours. -> (name, period in ms)."""
    return ("1d", DAY_MS) if (end_ms - start_ms) // DAY_MS >= MIN_DAILY_POINTS else ("1h", HOUR_MS)


def risk_adjusted(ts: np.ndarray, equity: np.ndarray, start_equity: float, start_ms: int, end_ms: int) -> dict:
    """Sharpe and Sortino from the returns of one sampling (sharpe_sampling), with that sampling's
    annualisation, and the number of returns they rest on."""
    name, period = sharpe_sampling(start_ms, end_ms)
    rets = resampled_returns(ts, equity, start_equity, period)
    per_year = 365.0 if period == DAY_MS else 8760.0
    return {"sharpe": sharpe(rets, per_year), "sortino": sortino(rets, per_year), "sharpe_sampling": name,
            "sharpe_n": int(rets.size), "sharpe_periods_per_year": per_year}


def rolling_sharpe(returns: np.ndarray, window: int, periods_per_year: float) -> np.ndarray:
    """Annualised Sharpe of each trailing `window` of returns (NaN before the first full window)."""
    r = np.asarray(returns, dtype=np.float64)
    out = np.full(r.size, np.nan)
    for i in range(window - 1, r.size):
        out[i] = sharpe(r[i - window + 1:i + 1], periods_per_year)
    return out


def mae_mfe(side: str, entry: float, exit_price: float, opened_at: int, closed_at: int,
            open_time: np.ndarray, high: np.ndarray, low: np.ndarray, interval_ms: int) -> tuple[float, float]:
    """Maximum adverse / favourable excursion of a trade (% of the entry fill, both >= 0) over the bars
    wholly inside [opened_at, closed_at] (a stop / target fills at its bar's close time, so that bar
    counts; a time exit fills at a bar's open, so that bar does not), plus the entry and exit fills.
    open_time ascending."""
    lo = int(np.searchsorted(open_time, opened_at, side="left"))
    hi = int(np.searchsorted(open_time, closed_at - interval_ms + 1, side="right"))   # close_time <= closed_at
    top = max(entry, exit_price, float(high[lo:hi].max()) if hi > lo else -math.inf)
    bottom = min(entry, exit_price, float(low[lo:hi].min()) if hi > lo else math.inf)
    up, down = (top - entry) / entry * 100.0, (entry - bottom) / entry * 100.0
    return (down, up) if side == "long" else (up, down)


def rolling_sharpe_series(ts: np.ndarray, equity: np.ndarray, start_equity: float, start_ms: int, end_ms: int) -> dict:
    """The trailing Sharpe of the run's sampling (sharpe_sampling) over 30 days, or 24 hours when hourly:
    {"sampling", "window", "points": [[end of the period (ms), sharpe], ...]} (full windows only)."""
    name, period = sharpe_sampling(start_ms, end_ms)
    window, per_year = (30, 365.0) if period == DAY_MS else (24, 8760.0)
    rets = resampled_returns(ts, equity, start_equity, period)
    out = {"sampling": name, "window": window, "points": []}
    if rets.size < window:
        return out
    first = int(np.asarray(ts).min()) // period
    roll = rolling_sharpe(rets, window, per_year)
    out["points"] = [[(first + i + 1) * period, float(v)] for i, v in enumerate(roll.tolist()) if math.isfinite(v)]
    return out


def figures(trades, ts: np.ndarray, equity: np.ndarray, start_equity: float, start_ms: int, end_ms: int) -> dict:
    """The tearsheet's headline figures of a run (infra.performance.Trade records in closing order)."""
    final = float(equity[-1]) if len(equity) else start_equity
    dd = drawdown_episode(ts, equity, start_equity, start_ms, end_ms)
    growth = cagr(start_equity, final, start_ms, end_ms)
    rs = [r_multiple(t.pnl, t.qty, t.entry_price, t.stop) for t in trades]
    return {
        "period_days": (end_ms - start_ms) / DAY_MS,
        "cagr_pct": growth * 100.0,
        "calmar": calmar(growth, dd["max_drawdown_pct"] / 100.0),
        **trade_figures([t.pnl for t in trades], rs),
        "drawdown_peak_at": dd["peak_at"], "drawdown_trough_at": dd["trough_at"],
        "drawdown_recovered_at": dd["recovered_at"], "drawdown_duration_days": dd["duration_ms"] / DAY_MS,
        "longest_underwater_days": dd["longest_underwater_ms"] / DAY_MS,
    }


def trade_rows(trades, bars: dict, interval_ms: int) -> list[dict]:
    """One row per closed trade for the trade list: times, fills, size, PnL, PnL %, R, MAE / MFE (from the
    run's bars, `bars`: symbol -> object with open_time / high / low arrays; NaN without bars)."""
    from schemas.tiers import tier_name
    rows = []
    for t in trades:
        b = bars.get(t.symbol)
        mae, mfe = (mae_mfe(t.side, t.entry_price, t.exit_price, t.opened_at, t.closed_at, b.open_time, b.high,
                            b.low, interval_ms) if b is not None and t.entry_price > 0 else (math.nan, math.nan))
        rows.append({"position_id": t.position_id, "symbol": t.symbol, "side": t.side, "opened_at": t.opened_at,
                     "closed_at": t.closed_at, "minutes": (t.closed_at - t.opened_at) / 60000, "qty": t.qty,
                     "entry_price": t.entry_price, "exit_price": t.exit_price, "stop": t.stop, "target": t.target,
                     "pnl": t.pnl, "pnl_pct": pnl_pct(t.pnl, t.qty, t.entry_price),
                     "r": r_multiple(t.pnl, t.qty, t.entry_price, t.stop), "mae_pct": mae, "mfe_pct": mfe,
                     "fees": t.fees, "funding": t.funding, "confidence": t.confidence, "tier": tier_name(t.confidence),
                     "blocks": "+".join(blocks_of(t.pattern)), "pattern": t.pattern, "exit_reason": t.exit_reason})
    return rows


def downsample_curve(ts: np.ndarray, equity: np.ndarray, max_points: int = 2000) -> list[list]:
    """At most ~max_points [ts, equity] of a curve for drawing (`smc compare`): the first snapshot and the
    last one of each of max_points equal time buckets (so every kept value is a real snapshot)."""
    t, e = np.asarray(ts, dtype=np.int64), np.asarray(equity, dtype=np.float64)
    if t.size <= max_points:
        return [[int(a), float(b)] for a, b in zip(t.tolist(), e.tolist())]
    span = max(int(t[-1] - t[0]), 1)
    bucket = np.minimum((t - t[0]) * max_points // span, max_points - 1)
    last = np.flatnonzero(np.append(bucket[1:] != bucket[:-1], True))
    keep = np.unique(np.concatenate([[0], last]))
    return [[int(t[i]), float(e[i])] for i in keep.tolist()]


_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def monthly_grid(monthly: list[dict]) -> list[dict]:
    """monthly_returns as a year x month table (returns in %, None for a month without a snapshot) with
    each year's compounded return."""
    years: dict[str, dict] = {}
    for r in monthly:
        y, m = r["month"].split("-")
        years.setdefault(y, {})[_MONTHS[int(m) - 1]] = r["return_pct"]
    out = []
    for y in sorted(years):
        row = {"year": y, **{m: years[y].get(m) for m in _MONTHS}}
        growth = 1.0
        for v in years[y].values():
            growth *= 1.0 + v / 100.0
        row["year_pct"] = (growth - 1.0) * 100.0
        out.append(row)
    return out


def buy_and_hold_curve(bars: dict, symbols, start_equity: float, interval_ms: int, taker_fee: float,
                       slippage_bps: float) -> tuple[np.ndarray, np.ndarray]:
    """The buy-and-hold benchmark over time: start_equity split equally over `symbols`, each bought at its
    first bar's open (slippage against us) and valued at each bar's close as if sold there (slippage and a
    taker fee both ways), cash until a symbol's first bar. Its last value is models.baselines.buy_and_hold's
    return on start_equity. -> (bar close times (ms, exclusive ends), equity)."""
    syms = [s for s in sorted(set(symbols)) if s in bars and len(bars[s].open_time)]
    if not syms:
        return np.zeros(0, dtype=np.int64), np.zeros(0)
    grid = np.unique(np.concatenate([np.asarray(bars[s].open_time, dtype=np.int64) for s in syms]))
    w = start_equity / len(syms)
    value = np.zeros(grid.size)
    for s in syms:
        b = bars[s]
        buy = float(b.open[0]) * (1 + slippage_bps / 1e4)
        idx = np.searchsorted(np.asarray(b.open_time), grid, side="right") - 1
        sell = np.asarray(b.close, dtype=np.float64)[np.maximum(idx, 0)] * (1 - slippage_bps / 1e4)
        held = w * (1 + (sell - buy - taker_fee * (buy + sell)) / buy)
        value += np.where(idx >= 0, held, w)
    return grid + interval_ms, value
