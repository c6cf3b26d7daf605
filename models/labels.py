"""Labels for SMC setups: the executor's own trade, simulated with the executor's own code.

A setup is decided at the close of bar B0 (features from bars <= B0). What the executor (executor.engine
with the paper broker) does with it, and what this module calls to reproduce it:

* prices: `executor.strategy.derive_target` (the target R multiple, 0 = the signal's target) and
  `executor.risk.round_prices` on the symbol's real tick (stop away from the entry, target toward it);
  a setup the sizing refuses for its prices (zero distance / invalid) is dropped, as the executor skips it;
* entry: MARKET at the next bar's open, `executor.brokers.paper.slipped_price` + `taker_fee`;
* per bar B1, B2, ... (the engine's order within a bar): funding settlements reached by the bar's open
  (`executor.funding.FundingHistory.due` + `funding_payment`, on the recorded mark, else the bar's open), then the resting stop / target (`executor.exits.intrabar_exit`: gap -> the open,
  both in one bar -> the stop; fills at the level with slippage + taker fee at the bar's close time),
  then the time exits at the bar's end (`executor.exits.time_exit` with `ExitRules`: 2 h max hold,
  30-min stagnation under 0.1 %), which send a MARKET exit filling at the NEXT bar's open;
* R = net PnL / (|rounded entry - rounded stop|): the executor's risk per unit of quantity (every
  cost is linear in the quantity, so the R of a trade does not depend on its size).

label = 1 iff the net PnL (after fees, slippage and funding) is > 0. `t1` = the instant the exit fills
(used for purging). A setup whose trade is still open at the end of the series, or meets a hole in
the bars, is dropped (outcome unknown).

Funding: the engine's own history and rule (executor.funding): the real settlements (real times, rates
and marks) of ingest/recorded/funding_*.parquet (executor.funding_source.load_funding_history), estimated
at `PaperConfig.funding_rate` outside the recorded span, as the engine estimates them.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from executor.brokers.paper import PaperConfig, slipped_price, taker_fee
from executor.exits import ExitRules, intrabar_exit, time_exit
from executor.funding import FundingHistory, funding_payment
from executor.risk import round_prices
from executor.strategy import derive_target

HOUR_MS = 3_600_000
REASONS = ("stop", "target", "max_hold", "stagnation")
REASON_CODE = {r: i for i, r in enumerate(REASONS)}


@dataclass(frozen=True)
class LabelConfig:
    exits: ExitRules = field(default_factory=ExitRules)
    paper: PaperConfig = field(default_factory=PaperConfig)
    target_r_multiple: float = 0.0          # executor.strategy.StrategyConfig.target_r_multiple

    def to_dict(self) -> dict:
        return {"exits": asdict(self.exits), "slippage_bps": self.paper.slippage_bps,
                "taker_fee": self.paper.taker_fee, "target_r_multiple": self.target_r_multiple}

    def describe(self) -> str:
        e = self.exits
        return (f"the executor's paper trade: MARKET entry at the next bar's open (+{self.paper.slippage_bps:g} bps "
                f"slippage, taker fee {self.paper.taker_fee:.4%}), stop/target rounded to the symbol's tick and resting "
                "from the fill (executor.exits.intrabar_exit: gap -> open, both in one bar -> stop), time exits "
                f"(executor.exits.time_exit): max hold {e.max_hold_ms // 60_000} min, stagnation after "
                f"{e.stagnation_after_ms // 60_000} min under {e.stagnation_pct:.2%} -> MARKET at the next open; "
                "funding at each settlement crossed; label = 1 iff net PnL > 0; R = net PnL / |entry - stop|")


def simulate_trades(symbol: str, idx: np.ndarray, side: np.ndarray, entry: np.ndarray, stop: np.ndarray,
                    target: np.ndarray, open_time: np.ndarray, o: np.ndarray, h: np.ndarray, lo: np.ndarray,
                    c: np.ndarray, interval_ms: int, tick: float, cfg: LabelConfig = LabelConfig(),
                    funding: FundingHistory | None = None) -> dict[str, np.ndarray]:
    """Simulate the executor's trade for each setup bar `idx` of one symbol's series (side +1 / -1).
    Returns per-setup arrays aligned with `idx` plus `valid` (False = dropped). Amounts are per unit
    of quantity: gross, fees, slippage (cost vs. the unslipped prices), funding (> 0 = paid), pnl (net)."""
    funding = funding if funding is not None else FundingHistory()   # none recorded: the engine's estimate
    paper = cfg.paper
    n, m = len(o), len(idx)
    O, H, L, C, T = o.tolist(), h.tolist(), lo.tolist(), c.tolist(), np.asarray(open_time, np.int64).tolist()
    names = ("fill", "exit_price", "entry_r", "stop_r", "target_r", "gross", "fees", "slippage", "funding", "pnl", "r",
             "risk")
    out = {k: np.zeros(m) for k in names}
    reason = np.full(m, -1, dtype=np.int8)
    exit_idx = np.full(m, -1, dtype=np.int64)
    t1 = np.zeros(m, dtype=np.int64)
    valid = np.zeros(m, dtype=bool)
    slip_bps, fee_rate, rules = cfg.paper.slippage_bps, cfg.paper.taker_fee, cfg.exits
    for k in range(m):
        i, s = int(idx[k]), int(side[k])
        if s == 0 or i + 1 >= n:
            continue
        sd = "long" if s > 0 else "short"
        tgt = derive_target(sd, float(entry[k]), float(stop[k]), float(target[k]), cfg.target_r_multiple)
        e, st, tg = round_prices(sd, float(entry[k]), float(stop[k]), tgt, tick)
        if not ((s > 0 and st < e) or (s < 0 and e < st)):
            continue                                    # the sizing refuses it (zero_distance / invalid_prices)
        buy, sell = ("BUY", "SELL") if s > 0 else ("SELL", "BUY")
        fill = slipped_price(buy, O[i + 1], slip_bps)
        opened_at = T[i + 1]
        fund = 0.0
        # every settlement the trade can cross: the time exits close it by max hold + one bar
        pending = funding.due(symbol, opened_at - 1, opened_at + rules.max_hold_ms + interval_ms, paper.funding_rate,
                              paper.default_funding_h)
        nxt = 0
        raw, j, why, end = 0.0, -1, "", 0
        for jj in range(i + 1, n):
            if T[jj] - T[jj - 1] != interval_ms:
                break                                   # a hole in the data: the outcome is unknown
            while nxt < len(pending) and pending[nxt].time <= T[jj]:
                st_ = pending[nxt]                      # the engine's charge: recorded mark, else this bar's open
                fund += funding_payment(sd, 1.0, st_.mark_price or O[jj], st_.rate)
                nxt += 1
            hit = intrabar_exit(sd, st, tg, O[jj], H[jj], L[jj])
            if hit is not None:
                why, raw = hit
                j, end = jj, T[jj] + interval_ms - 1
                break
            te = time_exit(sd, fill, opened_at, T[jj] + interval_ms - 1, C[jj], rules)
            if te is not None:
                if jj + 1 >= n or T[jj + 1] - T[jj] != interval_ms:
                    break
                why, raw, j, end = te, O[jj + 1], jj + 1, T[jj + 1]
                break
        if j < 0:
            continue                                    # still open at the end of the data: outcome unknown
        exit_px = slipped_price(sell, raw, slip_bps)
        fees = taker_fee(fill, 1.0, fee_rate) + taker_fee(exit_px, 1.0, fee_rate)
        gross = s * (exit_px - fill)
        pnl = gross - fees - fund
        risk = abs(e - st)
        out["fill"][k], out["exit_price"][k] = fill, exit_px
        out["entry_r"][k], out["stop_r"][k], out["target_r"][k] = e, st, tg
        out["gross"][k], out["fees"][k], out["funding"][k], out["pnl"][k] = gross, fees, fund, pnl
        out["slippage"][k] = abs(fill - O[i + 1]) + abs(raw - exit_px)     # included in gross (against us)
        out["risk"][k], out["r"][k] = risk, pnl / risk
        reason[k], exit_idx[k], t1[k], valid[k] = REASON_CODE[why], j, end, True
    out.update(reason=reason, exit_idx=exit_idx, t1=t1, valid=valid,
               bars_held=np.where(valid, exit_idx - np.asarray(idx, np.int64), 0),
               label=((out["pnl"] > 0) & valid).astype(np.int8))
    return out
