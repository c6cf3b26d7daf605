"""Executor output: decisions, orders, fills, positions and equity snapshots (key = symbol).

Times are event times (the bar that caused them) so a backtest is reproducible byte for byte;
`wall_ts` carries the wall clock for latency analytics and is the only field that differs run to run.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from schemas.codec import decode_as, encode
from schemas.errors import SchemaError
from schemas.signal import short_hash

SCHEMA_VERSION = 1
CLIENT_ID_RE = re.compile(r"^[.A-Z:/a-z0-9_-]{1,36}$")
LEGS = ("entry", "stop", "stop2", "target", "exit")   # stop2: the re-placed protective stop


def client_order_id(signal_id: str, leg: str) -> str:
    """Binance newClientOrderId derived from the signal and the leg: <= 36 chars, Binance's alphabet."""
    if leg not in LEGS:
        raise SchemaError("Order", "leg", leg, f"expected one of {LEGS}")
    cid = f"smc-{short_hash(signal_id)}-{leg}"
    assert CLIENT_ID_RE.match(cid), cid
    return cid


@dataclass(slots=True, frozen=True)
class Decision:
    """What the executor decided for one signal, including 'no trade' and why."""
    signal_id: str
    symbol: str
    ts: int
    action: str            # enter | skip | exit
    reason: str            # enter: ok | notional_cap; skip: flat, below_threshold, timeframe, daily_loss_limit,
                           # already_in_position, max_positions, zero_distance, invalid_prices, min_notional,
                           # min_qty, unknown_symbol, stop_too_tight; exit: max_hold | stagnation | manual
                           # (executor.strategy/risk/exits)
    confidence: float
    risk_pct: float = 0.0  # the tier's intended risk, fraction of equity
    qty: float = 0.0
    equity: float = 0.0    # the account equity the sizing used (entries): risk taken = qty x stop distance / equity
    wall_ts: int = 0
    v: int = SCHEMA_VERSION


@dataclass(slots=True, frozen=True)
class Order:
    client_order_id: str
    signal_id: str
    symbol: str
    leg: str               # entry | stop | target | exit
    side: str              # BUY | SELL
    type: str              # MARKET | STOP_MARKET | TAKE_PROFIT_MARKET
    qty: float
    price: float           # trigger price for conditional legs, 0 for MARKET
    reduce_only: bool
    status: str            # NEW | FILLED | CANCELED | REJECTED | EXPIRED
    ts: int
    reason: str = ""
    exchange_order_id: str = ""
    wall_ts: int = 0
    v: int = SCHEMA_VERSION


@dataclass(slots=True, frozen=True)
class Fill:
    fill_id: str
    client_order_id: str
    symbol: str
    side: str
    qty: float
    price: float
    fee: float
    ts: int
    liquidity: str = "taker"
    wall_ts: int = 0
    v: int = SCHEMA_VERSION


@dataclass(slots=True, frozen=True)
class Position:
    position_id: str       # = the entry order's client_order_id
    signal_id: str
    symbol: str
    side: str              # long | short
    qty: float
    entry_price: float
    stop: float
    target: float
    opened_at: int
    status: str            # open | closed
    closed_at: int = 0
    exit_price: float = 0.0
    exit_reason: str = ""  # stop | target | max_hold | stagnation | manual | unprotected (no working stop)
    realized_pnl: float = 0.0   # NET: price PnL - fees - funding (so far, while open: -(fees + funding))
    fees: float = 0.0
    funding: float = 0.0        # > 0 paid, < 0 received
    confidence: float = 0.0
    pattern: str = ""
    updated_at: int = 0         # event time, strictly increasing per position (ReplacingMergeTree version)
    v: int = SCHEMA_VERSION


@dataclass(slots=True, frozen=True)
class Equity:
    ts: int
    equity: float
    cash: float
    realized_pnl: float
    unrealized_pnl: float
    open_positions: int
    v: int = SCHEMA_VERSION


@dataclass(slots=True, frozen=True)
class Alert:
    """An execution-safety event an operator must see: a protective stop rejected, re-placed, a position
    flattened because it could not be protected, trading halted or resumed. `alert_id` is derived from
    what happened (kind, order, event time), so a replayed batch writes the same id (no duplicate rows)."""
    alert_id: str
    kind: str              # stop_rejected | stop_replaced | flattened_unprotected | flatten_failed |
                           # naked_bound_exceeded | broker_error | halted | resumed
    symbol: str
    signal_id: str
    client_order_id: str
    ts: int                # event time of the bar being processed
    detail: str            # the exchange's code and message, the prices involved
    wall_ts: int = 0
    v: int = SCHEMA_VERSION


def make_alert(kind: str, symbol: str, signal_id: str, cid: str, ts: int, detail: str, wall_ts: int = 0) -> Alert:
    return Alert(alert_id=f"{kind}:{cid or symbol}:{ts}", kind=kind, symbol=symbol, signal_id=signal_id,
                 client_order_id=cid, ts=ts, detail=detail[:300], wall_ts=wall_ts)


def _validate_order(o: Order) -> None:
    if not CLIENT_ID_RE.match(o.client_order_id):
        raise SchemaError("Order", "client_order_id", o.client_order_id, "not a valid Binance client id")
    if o.side not in ("BUY", "SELL"):
        raise SchemaError("Order", "side", o.side, "expected BUY or SELL")
    if o.qty <= 0:
        raise SchemaError("Order", "qty", o.qty, "must be > 0")


def decode_decision(raw: bytes | str | dict) -> Decision:
    return decode_as(Decision, raw)


def decode_order(raw: bytes | str | dict) -> Order:
    return decode_as(Order, raw, _validate_order)


def decode_fill(raw: bytes | str | dict) -> Fill:
    return decode_as(Fill, raw)


def decode_position(raw: bytes | str | dict) -> Position:
    return decode_as(Position, raw)


def decode_equity(raw: bytes | str | dict) -> Equity:
    return decode_as(Equity, raw)


def decode_alert(raw: bytes | str | dict) -> Alert:
    return decode_as(Alert, raw)


__all__ = ["Decision", "Order", "Fill", "Position", "Equity", "Alert", "client_order_id", "make_alert", "encode",
           "decode_decision", "decode_order", "decode_fill", "decode_position", "decode_equity", "decode_alert"]
