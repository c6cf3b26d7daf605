"""Sizing evidence for the run report: per risk tier, the risk intended vs the risk actually taken and
how often the position cap bound (issue 15: with the seed's 10 % notional cap and sub-1 % stops the
cap binds on most entries, and then the tiers do not change the size).

Per entry: intended = the tier's risk fraction (Decision.risk_pct); taken = filled qty x |fill price -
stop| / the equity the sizing used (Decision.equity), i.e. what the stop would lose before fees and
slippage; the cap bound when the Decision's reason is `notional_cap` (executor.risk.size_position).
Tiers are the executor's own (Decision.risk_pct), not re-derived from the confidence here.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, slots=True)
class EntrySizing:
    risk_pct: float        # intended, fraction of equity
    capped: bool           # the position cap bound
    equity: float          # equity the sizing used
    qty: float             # filled quantity (0: the entry never filled)
    entry_price: float     # fill price
    stop: float

    @property
    def taken_pct(self) -> float:
        if self.qty <= 0 or self.equity <= 0:
            return 0.0
        return self.qty * abs(self.entry_price - self.stop) / self.equity


def sizing_by_tier(entries: list[EntrySizing]) -> list[dict]:
    """One row per tier (largest risk first): entries, filled, cap bound (count and %), mean intended
    and taken risk (% of equity, filled entries), and taken / intended."""
    rows = []
    for frac in sorted({e.risk_pct for e in entries}, reverse=True):
        tier = [e for e in entries if e.risk_pct == frac]
        filled = [e for e in tier if e.qty > 0]
        capped = sum(e.capped for e in tier)
        taken = float(np.mean([e.taken_pct for e in filled])) if filled else 0.0
        rows.append({"tier_risk_pct": round(frac * 100, 6), "entries": len(tier), "filled": len(filled),
                     "cap_bound": capped, "cap_bound_pct": 100.0 * capped / len(tier),
                     "risk_intended_pct": frac * 100, "risk_taken_pct": taken * 100,
                     "taken_over_intended": taken / frac if frac > 0 else 0.0})
    return rows


def load_entry_sizing(store) -> list[EntrySizing]:
    """Every entry decision of the run with its position's fill (audit trail, FINAL)."""
    db = store.database
    _, decisions = store.query(f"SELECT signal_id, risk_pct, reason, equity FROM {db}.decisions FINAL "
                               f"WHERE action = 'enter' ORDER BY ts, signal_id")
    _, positions = store.query(f"SELECT signal_id, qty, entry_price, stop FROM {db}.positions FINAL "
                               f"WHERE entry_price > 0")
    fills = {sid: (qty, price, stop) for sid, qty, price, stop in positions}
    out = []
    for sid, risk_pct, reason, equity in decisions:
        qty, price, stop = fills.get(sid, (0.0, 0.0, 0.0))
        out.append(EntrySizing(float(risk_pct), reason == "notional_cap", float(equity), float(qty),
                               float(price), float(stop)))
    return out
