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


def worst_unplaced_stop_s(timeout_s: float, recv_window_ms: int, margin_s: float, attempts: int = 2) -> float:
    """How long a stop can stay unplaced while its outcome is unknown: each attempt waits for the answer
    (timeout) or, after an unknown outcome, until the request can no longer execute (recvWindow +
    margin), whichever is longer; the broker sends once and resends once (same client id) before the
    engine re-places or flattens."""
    return attempts * max(timeout_s, recv_window_ms / 1000 + margin_s)


def check_protection_bound(timeout_s: float, recv_window_ms: int, margin_s: float, protect_within_ms: int) -> None:
    """Refuse settings under which a stop's send + resend alone can outlast the naked-position bound."""
    worst = worst_unplaced_stop_s(timeout_s, recv_window_ms, margin_s)
    if worst * 1000 > protect_within_ms:
        raise ValueError(
            f"SMC_BINANCE_TIMEOUT_S={timeout_s:g} and SMC_BINANCE_RECV_WINDOW_MS={recv_window_ms}: a stop whose "
            f"send and resend both end unknown stays unplaced up to {worst:g} s (2 x max(timeout, recvWindow + "
            f"{margin_s:g} s)), beyond SMC_EXEC_PROTECT_WITHIN_MS={protect_within_ms}; lower the timeout or the "
            "recvWindow, or raise the bound")


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
