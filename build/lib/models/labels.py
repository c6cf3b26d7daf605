"""Triple-barrier labels for SMC setups, simulated the way the paper broker would trade them.

A setup is decided at the close of bar t (features from bars <= t). The trade:

* entry: MARKET at the NEXT bar's open (bar t+1 = B1), `slippage_bps` against us, taker fee;
* stop / target: the setup's absolute prices, resting from the fill instant, so B1's own high/low can
  trigger them. Per bar the rule of executor.exits.intrabar_exit: a gap through a level fills at the
  bar's open; when both levels lie inside one bar the STOP counts (the worse outcome); the exit fills at
  the level with slippage against us and pays the taker fee;
* time-out: no level hit within `horizon` bars (B1..BH) -> MARKET exit at the open of B(H+1)
  (the executor's time exits are market orders filling at the next bar's open), slippage + fee.

Outputs per candidate: exit reason, exit index, label end time `t1` (the instant the exit fills: the
close_time of the bar that hit a level, or the open_time of B(H+1) for a time-out), the net PnL per
unit of quantity and the realized R = net PnL / planned risk, where planned risk = |entry - stop| of
the signal (what the executor sizes on). label = 1 iff the net PnL after fees and slippage is > 0
(a target hit is a win unless fees exceed it; a time-out counts as a win when it is net positive).
Candidates whose horizon runs past the end of the series are dropped (label unknown), as are
degenerate setups (planned risk <= 0).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class LabelConfig:
    horizon: int = 24            # bars held at most (B1..BH); 24 x 1h = one day
    taker_fee: float = 0.0005    # per side (Binance USD-M regular taker)
    slippage_bps: float = 1.0    # per fill, against us (paper broker default)

    def to_dict(self) -> dict:
        return asdict(self)

    def describe(self) -> str:
        return (f"triple barrier: fill at next bar open (+{self.slippage_bps} bps slippage), setup stop/target "
                f"resting from the fill (gap -> open, both in one bar -> stop), time-out after {self.horizon} bars "
                f"-> exit at the following open; taker fee {self.taker_fee:.4%} per side; "
                "label = 1 iff net PnL after fees and slippage > 0; R = net PnL / |signal entry - stop|")


def intrabar(side: int, stop: float, target: float, o: float, h: float, lo: float) -> tuple[int, float]:
    """executor.exits.intrabar_exit with ints: (0 none | -1 stop | +1 target, trigger price)."""
    if side > 0:
        if o <= stop:
            return -1, o
        if o >= target:
            return 1, o
        if lo <= stop:
            return -1, stop
        if h >= target:
            return 1, target
        return 0, 0.0
    if o >= stop:
        return -1, o
    if o <= target:
        return 1, o
    if h >= stop:
        return -1, stop
    if lo <= target:
        return 1, target
    return 0, 0.0


REASONS = {-1: "stop", 1: "target", 0: "timeout"}


def label_candidates(idx: np.ndarray, side: np.ndarray, entry: np.ndarray, stop: np.ndarray, target: np.ndarray,
                     open_time: np.ndarray, o: np.ndarray, h: np.ndarray, lo: np.ndarray, interval_ms: int,
                     cfg: LabelConfig = LabelConfig()) -> dict[str, np.ndarray]:
    """Label candidate bars `idx` (signal bar indices into one symbol's series).

    side: +1 long / -1 short. Returns arrays aligned with `idx` plus `valid` (False = dropped)."""
    n = len(o)
    m = len(idx)
    slip = cfg.slippage_bps * 1e-4
    fee = cfg.taker_fee
    O, H, L, T = o.tolist(), h.tolist(), lo.tolist(), open_time.tolist()
    out = {k: np.zeros(m) for k in ("fill", "exit_price", "pnl", "r", "gross_ret", "net_ret")}
    reason = np.zeros(m, dtype=np.int8)
    exit_idx = np.full(m, -1, dtype=np.int64)
    t1 = np.zeros(m, dtype=np.int64)
    bars_held = np.zeros(m, dtype=np.int64)
    valid = np.zeros(m, dtype=bool)
    for k in range(m):
        i = int(idx[k])
        s = int(side[k])
        risk = abs(float(entry[k]) - float(stop[k]))
        if i + cfg.horizon + 1 >= n or risk <= 0 or s == 0:
            continue
        st, tg = float(stop[k]), float(target[k])
        fill = O[i + 1] * (1 + s * slip)
        hit, px, j = 0, 0.0, i + cfg.horizon + 1
        for jj in range(i + 1, i + cfg.horizon + 1):
            hit, px = intrabar(s, st, tg, O[jj], H[jj], L[jj])
            if hit:
                j = jj
                break
        if hit:
            end = T[j] + interval_ms - 1
        else:
            px = O[j]
            end = T[j]
        exit_px = px * (1 - s * slip)
        pnl = s * (exit_px - fill) - fee * (fill + exit_px)
        out["fill"][k] = fill
        out["exit_price"][k] = exit_px
        out["pnl"][k] = pnl
        out["r"][k] = pnl / risk
        out["gross_ret"][k] = s * (px - O[i + 1]) / O[i + 1]
        out["net_ret"][k] = pnl / fill
        reason[k] = hit
        exit_idx[k] = j
        t1[k] = end
        bars_held[k] = j - i
        valid[k] = True
    out.update(reason=reason, exit_idx=exit_idx, t1=t1, bars_held=bars_held, valid=valid,
               label=(out["pnl"] > 0).astype(np.int8) * valid)
    return out
