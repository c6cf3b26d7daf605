"""The protection rule, as pure functions: what to do when a protective stop is not working.

A position must never stay open without a working stop at the exchange. When the stop is rejected
(tick size, "would immediately trigger", a transient error), it is re-placed ONCE at a corrected
price: rounded to the symbol's tick AWAY from the market (a long's stop down, a short's up, so the
rounding never tightens it into the price), and only if that price is still on the protective side
of the mark (long: below, short: above; Binance refuses a stop that would trigger at once: -2021).
Otherwise, or when the re-placed stop fails too, the position is flattened with a MARKET
reduce-only order.
"""
from __future__ import annotations

from executor.instruments import round_to

STOP_LEGS = ("stop", "stop2")


def corrected_stop(side: str, stop: float, mark: float, tick: float) -> float | None:
    """The re-placement trigger price for a rejected stop, or None when the position must be flattened."""
    if not (stop > 0 and mark > 0):
        return None
    price = round_to(stop, tick, "floor" if side == "long" else "ceil")
    if side == "long":
        return price if 0 < price < mark else None
    return price if price > mark else None


def next_protective_step(leg: str, side: str, stop: float, mark: float, tick: float) -> tuple[str, float]:
    """('replace', price) after the first stop failed and a valid price exists, else ('flatten', 0)."""
    if leg == "stop":
        price = corrected_stop(side, stop, mark, tick)
        if price is not None:
            return "replace", price
    return "flatten", 0.0
