"""Binance USD-M user data stream: the pure parser (raw event JSON -> typed updates) and the mapping of
those updates onto the broker events the engine already applies for polled fills (one fill path).

No I/O here; the adapter (executor.user_stream_ws) owns the listenKey and the websocket.

Event layouts and rules, from Binance's USDS-M docs (developers.binance.com, "User Data Streams"):
* ORDER_TRADE_UPDATE: "When new order created, order status changed will push such event."
  o.s symbol, o.c client order id, o.X order status, o.x execution type, o.z "Order Filled Accumulated
  Quantity", o.ap "Average Price", o.l / o.L last filled qty / price, o.n commission, o.R reduce-only,
  o.o order type, o.i order id.
* ACCOUNT_UPDATE: a.P positions (s, pa position amount, ep entry price, ps position side), a.B balances
  (a asset, wb wallet balance, cw cross wallet balance).
* ALGO_UPDATE: "When new algo order created, order status changed will push such event." o.caid client
  algo id, o.aid algo id, o.X algo status (NEW, CANCELED, TRIGGERING, TRIGGERED, FINISHED: "the triggered
  conditional order has been filled or canceled in the matching engine", REJECTED, EXPIRED), o.ai the
  actual order id once triggered, o.ap / o.aq its average price / filled qty.
* listenKeyExpired: pushed when the listenKey has expired; the stream stops: a new key is needed.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from executor.brokers.base import FillEvent, OrderUpdate


class MalformedEvent(ValueError):
    """A user-stream event whose field is missing or has a value of the wrong shape."""


@dataclass(frozen=True, slots=True)
class OrderTradeUpdate:
    symbol: str
    client_order_id: str
    order_id: str
    status: str               # NEW | PARTIALLY_FILLED | FILLED | CANCELED | EXPIRED | EXPIRED_IN_MATCH ...
    execution_type: str       # NEW | TRADE | CANCELED | CALCULATED | EXPIRED | AMENDMENT
    order_type: str
    side: str
    executed_qty: float       # accumulated
    avg_price: float
    last_qty: float
    last_price: float
    commission: float
    reduce_only: bool
    ts: int                   # transaction time


@dataclass(frozen=True, slots=True)
class PositionUpdate:
    symbol: str
    amount: float             # signed
    entry_price: float
    position_side: str


@dataclass(frozen=True, slots=True)
class BalanceUpdate:
    asset: str
    wallet_balance: float
    cross_wallet_balance: float


@dataclass(frozen=True, slots=True)
class AccountUpdate:
    reason: str
    positions: tuple[PositionUpdate, ...]
    balances: tuple[BalanceUpdate, ...]
    ts: int


@dataclass(frozen=True, slots=True)
class AlgoUpdate:
    symbol: str
    client_algo_id: str
    algo_id: str
    status: str
    order_type: str
    side: str
    qty: float
    trigger_price: float
    actual_order_id: str
    avg_price: float          # of the actual order (once triggered)
    executed_qty: float
    reduce_only: bool
    reason: str
    ts: int


@dataclass(frozen=True, slots=True)
class ListenKeyExpired:
    ts: int


@dataclass
class ParseStats:
    unknown: dict[str, int] = field(default_factory=dict)     # ignored event types -> count


def _get(d: dict, key: str, where: str):
    if not isinstance(d, dict) or key not in d:
        raise MalformedEvent(f"{where}: field {key!r} missing")
    return d[key]


def _num(d: dict, key: str, where: str, default: float | None = None) -> float:
    if default is not None and key not in d:
        return default
    v = _get(d, key, where)
    try:
        return float(v)
    except (TypeError, ValueError):
        raise MalformedEvent(f"{where}: field {key!r} is not a number: {v!r}") from None


def _int(d: dict, key: str, where: str, default: int | None = None) -> int:
    if default is not None and key not in d:
        return default
    v = _get(d, key, where)
    if isinstance(v, bool) or not isinstance(v, (int, str)) or not str(v).lstrip("-").isdigit():
        raise MalformedEvent(f"{where}: field {key!r} is not an integer: {v!r}")
    return int(v)


def _str(d: dict, key: str, where: str, default: str | None = None) -> str:
    if default is not None and key not in d:
        return default
    v = _get(d, key, where)
    if not isinstance(v, (str, int)) or isinstance(v, bool):
        raise MalformedEvent(f"{where}: field {key!r} is not a string: {v!r}")
    return str(v)


def _bool(d: dict, key: str, where: str) -> bool:
    v = d.get(key, False)
    if not isinstance(v, bool):
        raise MalformedEvent(f"{where}: field {key!r} is not a boolean: {v!r}")
    return v


def parse_event(ev: dict, stats: ParseStats | None = None):
    """One user-stream event -> OrderTradeUpdate | AccountUpdate | AlgoUpdate | ListenKeyExpired, or None
    for an event type this executor does not use (counted in `stats.unknown`)."""
    if not isinstance(ev, dict):
        raise MalformedEvent(f"event is not a JSON object: {ev!r}"[:200])
    kind = _str(ev, "e", "event")
    if kind == "ORDER_TRADE_UPDATE":
        w = "ORDER_TRADE_UPDATE.o"
        o = _get(ev, "o", "ORDER_TRADE_UPDATE")
        return OrderTradeUpdate(
            symbol=_str(o, "s", w), client_order_id=_str(o, "c", w), order_id=_str(o, "i", w), status=_str(o, "X", w),
            execution_type=_str(o, "x", w), order_type=_str(o, "o", w), side=_str(o, "S", w),
            executed_qty=_num(o, "z", w), avg_price=_num(o, "ap", w), last_qty=_num(o, "l", w),
            last_price=_num(o, "L", w), commission=_num(o, "n", w, 0.0), reduce_only=_bool(o, "R", w),
            ts=_int(o, "T", w, _int(ev, "T", "ORDER_TRADE_UPDATE", 0)))
    if kind == "ACCOUNT_UPDATE":
        a = _get(ev, "a", "ACCOUNT_UPDATE")
        pos = tuple(PositionUpdate(_str(p, "s", "ACCOUNT_UPDATE.a.P[]"), _num(p, "pa", "ACCOUNT_UPDATE.a.P[]"),
                                   _num(p, "ep", "ACCOUNT_UPDATE.a.P[]"), _str(p, "ps", "ACCOUNT_UPDATE.a.P[]", "BOTH"))
                    for p in a.get("P", []))
        bal = tuple(BalanceUpdate(_str(b, "a", "ACCOUNT_UPDATE.a.B[]"), _num(b, "wb", "ACCOUNT_UPDATE.a.B[]"),
                                  _num(b, "cw", "ACCOUNT_UPDATE.a.B[]", 0.0))
                    for b in a.get("B", []))
        return AccountUpdate(_str(a, "m", "ACCOUNT_UPDATE.a", ""), pos, bal, _int(ev, "T", "ACCOUNT_UPDATE", 0))
    if kind == "ALGO_UPDATE":
        w = "ALGO_UPDATE.o"
        o = _get(ev, "o", "ALGO_UPDATE")
        return AlgoUpdate(
            symbol=_str(o, "s", w), client_algo_id=_str(o, "caid", w), algo_id=_str(o, "aid", w), status=_str(o, "X", w),
            order_type=_str(o, "o", w), side=_str(o, "S", w), qty=_num(o, "q", w), trigger_price=_num(o, "tp", w, 0.0),
            actual_order_id=_str(o, "ai", w, ""), avg_price=_num(o, "ap", w, 0.0), executed_qty=_num(o, "aq", w, 0.0),
            reduce_only=_bool(o, "R", w), reason=_str(o, "rm", w, ""), ts=_int(ev, "T", "ALGO_UPDATE", 0))
    if kind == "listenKeyExpired":
        return ListenKeyExpired(_int(ev, "E", "listenKeyExpired", 0))
    if stats is not None:
        stats.unknown[kind] = stats.unknown.get(kind, 0) + 1
    return None


# --- onto the engine's events (the same FillEvent / OrderUpdate a REST poll produces) -------------------
PLAIN_STATUS = {"NEW": "NEW", "PARTIALLY_FILLED": "NEW", "FILLED": "FILLED", "CANCELED": "CANCELED",
                "EXPIRED": "EXPIRED", "EXPIRED_IN_MATCH": "EXPIRED", "REJECTED": "REJECTED"}


def broker_events(upd, legs: dict[str, str], taker_fee: float) -> list:
    """A parsed update -> the engine's events for the order it concerns. `legs` maps the client ids the
    broker knows (its live orders) to their leg; updates of other orders (someone else's, or already
    final: a MARKET fill the REST answer carried) give nothing, so a fill is never applied twice.
    Only final states are mapped: a NEW/partial is already known from the REST answer."""
    if isinstance(upd, OrderTradeUpdate):
        if upd.client_order_id not in legs:
            return []
        status = PLAIN_STATUS.get(upd.status, "NEW")
        if status == "FILLED":
            return [OrderUpdate(upd.client_order_id, "FILLED", upd.ts, exchange_order_id=upd.order_id),
                    FillEvent(upd.client_order_id, upd.executed_qty, upd.avg_price, upd.commission, upd.ts)]
        if status in ("CANCELED", "EXPIRED", "REJECTED"):
            return [OrderUpdate(upd.client_order_id, status, upd.ts, exchange_order_id=upd.order_id)]
        return []
    if isinstance(upd, AlgoUpdate):
        cid = upd.client_algo_id
        if cid not in legs:
            return []
        if upd.status in ("CANCELED", "EXPIRED", "REJECTED"):
            return [OrderUpdate(cid, upd.status, upd.ts, reason=upd.reason if upd.status == "REJECTED" else "",
                                exchange_order_id=upd.algo_id)]
        if upd.status == "FINISHED" and upd.executed_qty > 0:
            # the fee of the actual order is in its ORDER_TRADE_UPDATE (another client id): estimated at the
            # taker rate, exactly as the REST poll (BinanceBroker._events) does
            fee = upd.avg_price * upd.executed_qty * taker_fee
            return [OrderUpdate(cid, "FILLED", upd.ts, exchange_order_id=upd.algo_id),
                    FillEvent(cid, upd.executed_qty, upd.avg_price, fee, upd.ts, trigger=legs[cid])]
        if upd.status == "FINISHED":
            return [OrderUpdate(cid, "CANCELED", upd.ts, reason="finished unfilled", exchange_order_id=upd.algo_id)]
    return []
