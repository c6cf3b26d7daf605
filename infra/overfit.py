"""Overfitting statistics for a parameter search (pure; numpy/scipy).

* Probabilistic and deflated Sharpe ratio: Bailey & Lopez de Prado, "The Deflated Sharpe Ratio" (2014).
  PSR(SR*) = Phi( (SR - SR*) sqrt(T - 1) / sqrt(1 - g3 SR + (g4 - 1)/4 SR^2) ), SR per period (not
  annualised), g3 skewness, g4 kurtosis (not excess) of the chosen configuration's returns, T periods.
  DSR = PSR(SR0) with SR0 the expected maximum Sharpe of N unskilled trials:
  SR0 = sqrt(V) ((1 - gamma) Z^-1(1 - 1/N) + gamma Z^-1(1 - 1/(N e))), V the variance of the trials' SRs.
* Probability of backtest overfitting by combinatorially symmetric cross-validation (CSCV): Bailey,
  Borwein, Lopez de Prado & Zhu, "The Probability of Backtest Overfitting" (2015). The T x N matrix of
  per-period returns is cut into S row blocks; for every choice of S/2 blocks as in-sample (the rest
  out-of-sample) the best in-sample configuration's out-of-sample rank gives a logit; PBO = share of
  logits <= 0 (the in-sample winner is at or below the out-of-sample median).
"""
from __future__ import annotations

import itertools
import math

import numpy as np
from scipy import stats

EULER_GAMMA = 0.5772156649015329


def sharpe(returns: np.ndarray) -> float:
    """Per-period Sharpe ratio (mean / sample std, not annualised); 0 for a constant series (the report's
    infra.performance.sharpe with one period a year)."""
    from infra.performance import sharpe as annualised
    return annualised(np.asarray(returns, dtype=np.float64), 1.0)


def probabilistic_sharpe(returns: np.ndarray, sr_benchmark: float = 0.0) -> float:
    """P(true SR > sr_benchmark) given the observed per-period returns (non-normality corrected)."""
    r = np.asarray(returns, dtype=np.float64)
    t = r.size
    if t < 3:
        raise ValueError(f"probabilistic_sharpe: {t} returns; needs at least 3")
    sr = sharpe(r)
    g3 = float(stats.skew(r)) if r.std() > 0 else 0.0
    g4 = float(stats.kurtosis(r, fisher=False)) if r.std() > 0 else 3.0
    denom = 1.0 - g3 * sr + (g4 - 1.0) / 4.0 * sr * sr
    if denom <= 0:
        denom = 1e-12
    return float(stats.norm.cdf((sr - sr_benchmark) * math.sqrt(t - 1) / math.sqrt(denom)))


def expected_max_sharpe(trial_sharpes: np.ndarray) -> float:
    """SR0: the expected maximum per-period Sharpe of len(trial_sharpes) unskilled trials with their variance."""
    s = np.asarray(trial_sharpes, dtype=np.float64)
    n = s.size
    if n < 2:
        return 0.0
    v = float(s.var(ddof=1))
    z = stats.norm.ppf
    return math.sqrt(v) * ((1 - EULER_GAMMA) * z(1 - 1.0 / n) + EULER_GAMMA * z(1 - 1.0 / (n * math.e)))


def deflated_sharpe(chosen_returns: np.ndarray, trial_sharpes: np.ndarray) -> float:
    """DSR: PSR of the chosen configuration against the expected maximum Sharpe of all the trials."""
    return probabilistic_sharpe(chosen_returns, expected_max_sharpe(trial_sharpes))


def pbo_cscv(returns: np.ndarray, blocks: int = 8) -> tuple[float, np.ndarray]:
    """(PBO, logits) of a T x N matrix of per-period returns (rows: time, columns: configurations)."""
    m = np.asarray(returns, dtype=np.float64)
    t, n = m.shape
    if blocks % 2 or blocks < 2:
        raise ValueError(f"pbo_cscv: blocks={blocks}; needs an even number >= 2")
    if n < 2 or t < blocks:
        raise ValueError(f"pbo_cscv: a {t} x {n} matrix; needs >= 2 configurations and >= {blocks} periods")
    parts = np.array_split(np.arange(t), blocks)
    logits = []
    for ins in itertools.combinations(range(blocks), blocks // 2):
        is_rows = np.concatenate([parts[i] for i in ins])
        oos_rows = np.concatenate([parts[i] for i in range(blocks) if i not in ins])
        is_sr = _col_sharpe(m[is_rows])
        oos_sr = _col_sharpe(m[oos_rows])
        best = int(np.argmax(is_sr))                      # ties: the first column (deterministic)
        rank = stats.rankdata(oos_sr)[best]              # 1 = worst .. n = best (average ranks for ties)
        w = rank / (n + 1)
        logits.append(math.log(w / (1 - w)))
    lg = np.array(logits)
    return float(np.mean(lg <= 0)), lg


def _col_sharpe(m: np.ndarray) -> np.ndarray:
    sd = m.std(axis=0, ddof=1)
    mu = m.mean(axis=0)
    return np.where(sd > 0, mu / np.where(sd > 0, sd, 1.0), 0.0)
