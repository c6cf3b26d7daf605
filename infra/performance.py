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
    position_id: str = ""
    qty: float = 0.0
    entry_price: float = 0.0   # the fills
    exit_price: float = 0.0
    stop: float = 0.0
    target: float = 0.0


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


def resampled_returns(ts: np.ndarray, equity: np.ndarray, start_equity: float, period_ms: int = DAY_MS) -> np.ndarray:
    """Close-to-close returns of the equity curve per UTC period of `period_ms` (days by default; a period
    without a snapshot carries the last equity over), from the first snapshot's period to the last's."""
    if ts.size == 0:
        return np.zeros(0)
    days = ts // period_ms
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


def group_pnl(trades: list[Trade], key, ci=None) -> list[dict]:
    """Trades, net PnL, mean PnL per trade, win rate and profit factor per group, largest PnL first.
    key(trade) -> a group name, or a list of them (a trade counts in each: the building blocks).
    ci(values) -> {"lo", "hi"}: adds the mean's confidence interval (ci_lo, ci_hi)."""
    groups: dict[str, list[Trade]] = defaultdict(list)
    for t in trades:
        k = key(t)
        for name in ([k] if isinstance(k, str) else k):
            groups[name].append(t)
    rows = []
    for k, ts in groups.items():
        pnls = [t.pnl for t in ts]
        row = {"group": k, "trades": len(ts), "pnl": sum(pnls), "mean_pnl": sum(pnls) / len(ts)}
        if ci is not None:
            c = ci(np.asarray(pnls, dtype=np.float64))
            row.update(ci_lo=c["lo"], ci_hi=c["hi"])
        row.update(win_rate=sum(p > 0 for p in pnls) / len(ts), profit_factor=profit_factor(pnls))
        rows.append(row)
    return sorted(rows, key=lambda r: (-r["pnl"], r["group"]))


def summarize(trades: list[Trade], eq_ts: np.ndarray, eq: np.ndarray, start_equity: float,
              start: int, end: int) -> dict:
    from infra.tearsheet import risk_adjusted
    pnls = [t.pnl for t in trades]
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
        **risk_adjusted(eq_ts, eq, start_equity, start, end),   # sharpe, sortino, their sampling and n
        "exposure_pct": exposure(trades, start, end) * 100.0,
        "fees": float(sum(t.fees for t in trades)),
        "funding": float(sum(t.funding for t in trades)),
        "avg_minutes_held": (float(np.mean([(t.closed_at - t.opened_at) / 60000 for t in trades])) if trades else 0.0),
    }


@dataclass(frozen=True)
class ClosedPosition:
    """What the random-entry baseline needs of a closed position (positions table)."""
    symbol: str
    side: str
    qty: float
    entry_price: float    # the fill
    stop: float
    target: float
    realized_pnl: float   # net


def random_entry_evidence(positions: list[ClosedPosition], bars: dict, interval_ms: int, paper, exits,
                          seeds: int = 20, funding=None) -> dict | None:
    """The run's trades vs random entries with the same exits, costs, side mix and stop distances
    (models.baselines.evidence, >= 20 seeds, simulated by models.labels.simulate_trades with the run's
    paper costs and exit rules), always-flat and buy-and-hold of the traded basket. R per trade here is
    net PnL / (qty x |fill - stop|) (the positions table keeps the fill, not the signal's entry).
    `bars`: symbol -> models.baselines.SymbolBars of the run. None when there is nothing to compare."""
    from models.baselines import evidence
    from models.dataset import tick_of
    from models.labels import LabelConfig, simulate_trades
    pos = [p for p in positions if p.symbol in bars and p.qty > 0 and p.entry_price != p.stop]
    if not pos:
        return None
    cfg = LabelConfig(exits=exits, paper=paper)

    def simulate(sym, idx, side, entry, stop, target):
        b = bars[sym]
        return simulate_trades(sym, idx, side, entry, stop, target, b.open_time, b.open, b.high, b.low, b.close,
                               interval_ms, tick_of(sym, float(b.close[-1])) or 1e-8, cfg, funding)

    from infra.tearsheet import r_multiple
    dist = np.array([abs(p.entry_price - p.stop) for p in pos])
    r = np.array([r_multiple(p.realized_pnl, p.qty, p.entry_price, p.stop) for p in pos])
    side = np.array([1 if p.side == "long" else -1 for p in pos])
    ratio = np.array([abs(p.target - p.entry_price) / d if p.target > 0 else 2.0 for p, d in zip(pos, dist)])
    frac = dist / np.array([p.entry_price for p in pos])
    return evidence(r, np.array([p.symbol for p in pos]), side, frac, ratio, bars, simulate, seeds=seeds,
                    n_boot=1000, taker_fee=paper.taker_fee, slippage_bps=paper.slippage_bps)


@dataclass(frozen=True)
class SignalSeries:
    """One (symbol, timeframe) series of a run's signal records in open_time order: each record carries its
    bar, so this is also the bar series the paper broker fills on (the next record's open)."""
    symbol: str
    timeframe: str
    open_time: np.ndarray
    open: np.ndarray
    high: np.ndarray
    low: np.ndarray
    close: np.ndarray
    side: np.ndarray         # +1 long, -1 short, 0 flat
    entry: np.ndarray
    stop: np.ndarray
    target: np.ndarray
    confidence: np.ndarray


def shadow_trades(series: list[SignalSeries], label_cfg, funding=None) -> dict[str, np.ndarray]:
    """Every setup of a run traded as the executor's paper broker would, whether or not the executor took
    it (shadow trades): the labels' simulator (models.labels.simulate_trades: the executor's fills, exits,
    costs and funding) on the setup's own series. No position limit, no sizing: one trade per setup, so
    a run that took no trade still shows what its setups were worth, tier by tier. -> arrays over the
    simulated setups: confidence, label (net PnL > 0), r (net R per trade), pnl (net, per unit of
    quantity), timeframe, symbol, open_time (of the setup's bar); setups of a symbol without an instrument
    or still open at the data's end are left out."""
    from models.dataset import interval_ms_of, tick_of
    from models.labels import simulate_trades
    conf, label, r, pnl, t0, tf, sym = [], [], [], [], [], [], []
    for s in series:
        idx = np.flatnonzero(s.side != 0)
        tick = tick_of(s.symbol, float(s.close[-1])) if s.close.size else None
        if idx.size == 0 or tick is None:
            continue
        lab = simulate_trades(s.symbol, idx, s.side[idx], s.entry[idx], s.stop[idx], s.target[idx], s.open_time,
                              s.open, s.high, s.low, s.close, interval_ms_of(s.timeframe), tick, label_cfg, funding)
        ok = lab["valid"]
        conf.append(s.confidence[idx][ok])
        label.append(lab["label"][ok])
        r.append(lab["r"][ok])
        pnl.append(lab["pnl"][ok])
        t0.append(s.open_time[idx][ok])
        tf += [s.timeframe] * int(ok.sum())
        sym += [s.symbol] * int(ok.sum())
    def cat(xs: list, dt) -> np.ndarray:
        return np.concatenate(xs) if xs else np.zeros(0, dt)
    return {"confidence": cat(conf, np.float64), "label": cat(label, np.int8), "r": cat(r, np.float64),
            "pnl": cat(pnl, np.float64), "open_time": cat(t0, np.int64), "timeframe": np.array(tf, dtype=object), "symbol": np.array(sym, dtype=object)}
