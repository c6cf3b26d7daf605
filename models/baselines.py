"""Baselines as evidence (pure): what a set of trades is worth against doing something dumb.

* random entries with the same exits: every trade of the strategy is replaced by an entry at a bar
  drawn uniformly from the same symbol's bars, with the same side (so the same long/short mix), the
  same stop distance as a fraction of price and the same target / stop distance ratio, simulated by
  the same trade simulator (the executor's exits and costs: models.labels.simulate_trades) -> mean R
  per trade per seed (at least 20 seeds); the difference strategy - random is paired per trade;
* always flat: 0 R, 0 % (costs nothing, earns nothing);
* buy-and-hold of the same basket: equal weight in every symbol traded, long from the first bar's open
  to the last bar's close, paying one taker round trip with slippage.

R per trade is independent of the position size (every cost is linear in the quantity), so "same
sizing" holds for any tier: the same R at the same risk fraction is the same equity change.
Confidence intervals: percentile bootstrap of the mean (trades resampled with replacement; for the
difference, each trade with its twins' mean R), seeded, so the figures reproduce.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

MIN_SEEDS = 20
WARMUP_BARS = 100      # random entries are drawn after a symbol's first WARMUP_BARS bars


def _boot_means(x: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    return np.array([x[rng.integers(0, x.size, x.size)].mean() for _ in range(n_boot)])


def bootstrap_mean_ci(x: np.ndarray, n_boot: int = 2000, seed: int = 0, level: float = 0.95) -> dict:
    """{"n", "mean", "lo", "hi"}: percentile bootstrap CI of the mean (NaN for an empty sample)."""
    x = np.asarray(x, dtype=np.float64)
    if x.size == 0:
        return {"n": 0, "mean": float("nan"), "lo": float("nan"), "hi": float("nan")}
    means = _boot_means(x, n_boot, np.random.default_rng(seed))
    a = (1 - level) / 2
    return {"n": int(x.size), "mean": float(x.mean()), "lo": float(np.quantile(means, a)),
            "hi": float(np.quantile(means, 1 - a))}


@dataclass(frozen=True)
class SymbolBars:
    """One symbol's bars (one contiguous period) as the simulator reads them."""
    open_time: np.ndarray
    open: np.ndarray
    high: np.ndarray
    low: np.ndarray
    close: np.ndarray


# simulate(symbol, idx, side, entry, stop, target) -> {"valid": bool[], "r": float[]} (models.labels shape)
Simulator = Callable[[str, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray], dict]


def random_entries(symbols: np.ndarray, side: np.ndarray, stop_frac: np.ndarray, target_ratio: np.ndarray,
                   bars: dict[str, SymbolBars], simulate: Simulator, seed: int, warmup: int = WARMUP_BARS) -> np.ndarray:
    """One seed's random twin of every trade: same symbol, side, stop distance (fraction of price) and
    target / stop ratio, entry decided at the close of a uniformly drawn bar. -> R aligned with the
    trades (NaN where the twin's outcome is unknown: still open at the data end, a hole, ...)."""
    rng = np.random.default_rng(seed)
    symbols = np.asarray(symbols)
    side, stop_frac, target_ratio = np.asarray(side), np.asarray(stop_frac), np.asarray(target_ratio)
    out = np.full(symbols.size, np.nan)
    for sym in sorted(set(symbols.tolist())):
        sel = np.flatnonzero(symbols == sym)
        b = bars[sym]
        lo_i, hi_i = min(warmup, len(b.close) - 2), len(b.close) - 2
        if hi_i <= lo_i:
            continue
        idx = rng.integers(lo_i, hi_i, size=sel.size)
        s, d, rr = side[sel], stop_frac[sel], target_ratio[sel]
        entry = b.close[idx]
        lab = simulate(sym, idx, s, entry, entry * (1 - s * d), entry * (1 + s * d * rr))
        out[sel] = np.where(lab["valid"], lab["r"], np.nan)
    return out


def buy_and_hold(bars: dict[str, SymbolBars], symbols, taker_fee: float, slippage_bps: float) -> dict:
    """Equal-weight long basket from the first open to the last close, one taker round trip each."""
    rets = {}
    for sym in sorted(set(symbols)):
        b = bars[sym]
        buy = b.open[0] * (1 + slippage_bps / 1e4)
        sell = b.close[-1] * (1 - slippage_bps / 1e4)
        rets[sym] = float((sell - buy - taker_fee * (buy + sell)) / buy)
    return {"return_pct": float(np.mean(list(rets.values())) * 100) if rets else float("nan"),
            "per_symbol_pct": {k: v * 100 for k, v in rets.items()}}


def evidence(strategy_r: np.ndarray, symbols: np.ndarray, side: np.ndarray, stop_frac: np.ndarray,
             target_ratio: np.ndarray, bars: dict[str, SymbolBars], simulate: Simulator, seeds: int = MIN_SEEDS,
             seed0: int = 1000, n_boot: int = 2000, taker_fee: float = 0.0005, slippage_bps: float = 1.0,
             progress: Callable[[str], None] | None = None) -> dict:
    """The strategy's mean R per trade vs random entries with the same exits (>= 20 seeds), always-flat
    and buy-and-hold of the same basket, each with a bootstrap CI. The random side is summarised per
    trade (the mean R of its twins over the seeds), so the difference is a paired bootstrap over trades."""
    if seeds < MIN_SEEDS:
        raise ValueError(f"seeds={seeds}: random-entry baselines need at least {MIN_SEEDS} seeds")
    strategy_r = np.asarray(strategy_r, np.float64)
    twins = np.full((strategy_r.size, seeds), np.nan)
    for k in range(seeds):
        twins[:, k] = random_entries(symbols, side, stop_frac, target_ratio, bars, simulate, seed0 + k)
        if progress is not None:
            progress(f"random entries: seed {k + 1}/{seeds}, {int(np.isfinite(twins[:, k]).sum())} trades, "
                     f"mean R {np.nanmean(twins[:, k]) if np.isfinite(twins[:, k]).any() else float('nan'):+.4f}")
    has = np.isfinite(twins).any(axis=1) if strategy_r.size else np.zeros(0, bool)
    twin_mean = np.nanmean(twins[has], axis=1) if has.any() else np.zeros(0)
    per_seed = [float(np.nanmean(twins[:, k])) if np.isfinite(twins[:, k]).any() else float("nan")
                for k in range(seeds)]
    diff = strategy_r[has] - twin_mean
    return {
        "strategy": bootstrap_mean_ci(strategy_r, n_boot, seed0),
        "random": {**bootstrap_mean_ci(twin_mean, n_boot, seed0 + 1), "seeds": seeds,
                   "random_trades": int(np.isfinite(twins).sum()), "per_seed_mean_r": per_seed,
                   "seed_spread": [float(np.nanmin(per_seed)), float(np.nanmax(per_seed))] if strategy_r.size else []},
        "strategy_minus_random": {**bootstrap_mean_ci(diff, n_boot, seed0 + 2), "paired_trades": int(diff.size)},
        "always_flat": {"mean_r": 0.0, "return_pct": 0.0},
        "buy_and_hold": buy_and_hold(bars, sorted(set(np.asarray(symbols).tolist())), taker_fee, slippage_bps),
    }
