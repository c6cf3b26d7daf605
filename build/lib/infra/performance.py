"""Performance metrics of a run: pure functions over closed trades and equity snapshots (no I/O)."""
from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass

import numpy as np

DAY_MS = 86_400_000


@dataclass(frozen=True)
class Trade:
    symbol: str
    side: str
    opened_at: int
    closed_at: int
    pnl: float            # net: after fees and funding
    fees: float
    funding: float
    confidence: float
    pattern: str
    exit_reason: str


def tier_of(confidence: float) -> str:
    if confidence > 0.85:
        return ">0.85"
    if confidence > 0.70:
        return "0.70-0.85"
    if confidence > 0.60:
        return "0.60-0.70"
    return "<=0.60"


def profit_factor(pnls: list[float]) -> float:
    gains = sum(p for p in pnls if p > 0)
    losses = -sum(p for p in pnls if p < 0)
    if losses == 0:
        return math.inf if gains > 0 else 0.0
    return gains / losses


def max_drawdown(equity: np.ndarray) -> float:
    """Largest peak-to-trough fall as a fraction of the peak (0.12 = 12%)."""
    if equity.size == 0:
        return 0.0
    peaks = np.maximum.accumulate(equity)
    return float(np.max((peaks - equity) / peaks))


def drawdown_series(equity: np.ndarray) -> np.ndarray:
    if equity.size == 0:
        return equity
    peaks = np.maximum.accumulate(equity)
    return (equity - peaks) / peaks


def daily_returns(ts: np.ndarray, equity: np.ndarray, start_equity: float) -> np.ndarray:
    """Close-to-close daily returns of the equity curve (UTC days; a day without a snapshot carries over)."""
    if ts.size == 0:
        return np.zeros(0)
    days = ts // DAY_MS
    first, last = int(days.min()), int(days.max())
    closes = np.full(last - first + 1, np.nan)
    for d, e in zip(days, equity):    # the last snapshot of a day is its close
        closes[int(d) - first] = e
    prev = start_equity
    for i in range(closes.size):
        if np.isnan(closes[i]):
            closes[i] = prev
        prev = closes[i]
    series = np.concatenate([[start_equity], closes])
    return series[1:] / series[:-1] - 1.0


def sharpe(returns: np.ndarray, periods_per_year: float = 365.0) -> float:
    if returns.size < 2 or np.std(returns, ddof=1) == 0:
        return 0.0
    return float(np.mean(returns) / np.std(returns, ddof=1) * math.sqrt(periods_per_year))


def sortino(returns: np.ndarray, periods_per_year: float = 365.0) -> float:
    if returns.size < 2:
        return 0.0
    downside = np.minimum(returns, 0.0)
    dd = math.sqrt(float(np.mean(downside ** 2)))
    if dd == 0:
        return 0.0
    return float(np.mean(returns) / dd * math.sqrt(periods_per_year))


def exposure(trades: list[Trade], start: int, end: int) -> float:
    """Fraction of the run's time with at least one open position."""
    if end <= start or not trades:
        return 0.0
    spans = sorted((max(t.opened_at, start), min(t.closed_at, end)) for t in trades)
    covered, cur_s, cur_e = 0, None, None
    for s, e in spans:
        if cur_e is None or s > cur_e:
            if cur_e is not None:
                covered += cur_e - cur_s
            cur_s, cur_e = s, e
        else:
            cur_e = max(cur_e, e)
    if cur_e is not None:
        covered += cur_e - cur_s
    return covered / (end - start)


def group_pnl(trades: list[Trade], key) -> list[dict]:
    groups: dict[str, list[Trade]] = defaultdict(list)
    for t in trades:
        groups[key(t)].append(t)
    rows = []
    for k, ts in groups.items():
        pnls = [t.pnl for t in ts]
        rows.append({"group": k, "trades": len(ts), "pnl": sum(pnls), "win_rate": sum(p > 0 for p in pnls) / len(ts),
                     "profit_factor": profit_factor(pnls)})
    return sorted(rows, key=lambda r: (-r["pnl"], r["group"]))


def summarize(trades: list[Trade], eq_ts: np.ndarray, eq: np.ndarray, start_equity: float,
              start: int, end: int) -> dict:
    pnls = [t.pnl for t in trades]
    rets = daily_returns(eq_ts, eq, start_equity)
    final = float(eq[-1]) if eq.size else start_equity
    return {
        "trades": len(trades),
        "net_pnl": float(sum(pnls)),
        "return_pct": (final / start_equity - 1.0) * 100.0,
        "start_equity": start_equity,
        "final_equity": final,
        "win_rate": (sum(p > 0 for p in pnls) / len(pnls)) if pnls else 0.0,
        "profit_factor": profit_factor(pnls),
        "max_drawdown_pct": max_drawdown(np.concatenate([[start_equity], eq])) * 100.0,
        "sharpe": sharpe(rets),
        "sortino": sortino(rets),
        "exposure_pct": exposure(trades, start, end) * 100.0,
        "fees": float(sum(t.fees for t in trades)),
        "funding": float(sum(t.funding for t in trades)),
        "avg_minutes_held": (float(np.mean([(t.closed_at - t.opened_at) / 60000 for t in trades])) if trades else 0.0),
    }
