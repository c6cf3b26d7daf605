"""Exit rules (pure), evaluated on every bar record (Signal) of the position's symbol and timeframe.

Timeline of a trade, and which bar may exit:
* bar B0 closes with an entry signal -> a MARKET entry order is sent; B0 itself can NEVER exit the
  position: it does not exist yet (the paper fill happens at the next bar's open);
* bar B1: the entry fills at B1.open; the stop and target (conditional orders) rest from that instant,
  so B1's high/low, which trade after its open, CAN trigger them (`intrabar_exit`);
* time exits are judged at each bar's end (close_time + 1 ms) from the fill time `opened_at`:
  held = bar_end - opened_at. They send a MARKET reduce-only order that fills at the next bar's open.

Rules:
* stop / target intra-bar from high/low; a gap through a level fills at the bar's open; when both
  levels are inside one bar the order of the ticks is unknown and the worse outcome (the stop) wins;
* max hold: held >= 2 h (exactly 2 h exits);
* stagnation: held >= 30 min (exactly 30 min counts) and |price PnL| < 0.1 % (strict: exactly 0.1 %
  stays open). PnL % = side * (close - entry) / entry, rounded to 1e-12 so that float noise
  (100.1 - 100 = 0.0999999...) does not decide a boundary; fees are not part of this test;
* manual flatten (a command): exits at the next bar regardless of the rest.
"""
from __future__ import annotations

from dataclasses import dataclass

MINUTE = 60_000


@dataclass(frozen=True, slots=True)
class ExitRules:
    max_hold_ms: int = 120 * MINUTE
    stagnation_after_ms: int = 30 * MINUTE
    stagnation_pct: float = 0.001


def intrabar_exit(side: str, stop: float, target: float, bar_open: float, high: float, low: float
                  ) -> tuple[str, float] | None:
    """Which resting level (stop | target) a bar triggers, and the trigger price before slippage.
    `stop` / `target` <= 0 mean "no such order"."""
    has_stop, has_target = stop > 0, target > 0
    if side == "long":
        if has_stop and bar_open <= stop:
            return "stop", bar_open
        if has_target and bar_open >= target:
            return "target", bar_open
        if has_stop and low <= stop:
            return "stop", stop
        if has_target and high >= target:
            return "target", target
        return None
    if side == "short":
        if has_stop and bar_open >= stop:
            return "stop", bar_open
        if has_target and bar_open <= target:
            return "target", bar_open
        if has_stop and high >= stop:
            return "stop", stop
        if has_target and low <= target:
            return "target", target
        return None
    raise ValueError(f"side must be long or short, not {side!r}")


def pnl_pct(side: str, entry: float, price: float) -> float:
    sign = 1.0 if side == "long" else -1.0
    return round(sign * (price - entry) / entry, 12)


def time_exit(side: str, entry_price: float, opened_at: int, bar_close_time: int, close: float,
              rules: ExitRules = ExitRules(), flatten: bool = False) -> str | None:
    """Reason for a time/manual exit at the end of this bar, or None: manual | max_hold | stagnation."""
    if flatten:
        return "manual"
    held = bar_close_time + 1 - opened_at
    if held >= rules.max_hold_ms:
        return "max_hold"
    if held >= rules.stagnation_after_ms and abs(pnl_pct(side, entry_price, close)) < rules.stagnation_pct:
        return "stagnation"
    return None
