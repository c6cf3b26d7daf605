"""Start-up and reconnect reconciliation: the exchange's positions and open orders against the executor's.

Pure core: `plan(snapshot, holdings, ticks)` -> actions; no I/O. The Binance broker takes the
snapshot (GET /fapi/v2/positionRisk, /fapi/v1/openOrders, /fapi/v1/openAlgoOrders), executes the
order actions and `apply()` writes their outcome into the engine's state, with one Alert record per
action and one `reconciled` record summarising the comparison (the audit trail's alerts topic/table).

Per symbol, with `ex` the exchange's signed position and `ours` the executor's open/closing ones:
* the exchange does not hold what the executor holds (ex == 0, opposite sign, or smaller) -> `drop`:
  the executor's positions there are closed in its books at the mark (reason `reconciled`), their
  live orders cancelled; whatever the exchange does hold there is treated as extra;
* the executor's position is held but none of its stops is open at the exchange -> `protect`: a stop
  re-placed once at a corrected price (executor.protection, the same rule as a rejected stop), else
  `flatten` MARKET reduce-only;
* extra exchange position (ex - ours != 0; opened behind the executor's back, or left over): `adopt`
  when stops with the strategy's client-id prefix, reduce-only on the closing side, cover it (they
  belong to the strategy: kept, with their sibling orders), else `flatten` MARKET reduce-only;
* open orders: the executor's own -> `adopt` (polled again); the strategy's prefix but neither the
  executor's nor covering an adopted position -> `cancel` (orphan); another prefix -> `foreign`
  (reported, never touched: it is not the strategy's to cancel).
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field

from executor.protection import STOP_LEGS, next_protective_step

PREFIX = "smc-"
EPS = 1e-9


@dataclass(frozen=True)
class Holding:
    """What the executor holds: one open/closing position and the client ids of its live orders."""
    position_id: str
    signal_id: str
    symbol: str
    side: str                  # long | short
    qty: float
    stop: float
    orders: tuple[str, ...] = ()

    @property
    def signed(self) -> float:
        return self.qty if self.side == "long" else -self.qty


@dataclass(frozen=True)
class ExchangeSnapshot:
    positions: dict[str, float]                 # symbol -> signed positionAmt (non-zero only)
    marks: dict[str, float]
    open_orders: tuple[dict, ...] = ()          # Binance openOrders rows (clientOrderId, symbol, side, type)
    open_algos: tuple[dict, ...] = ()           # Binance openAlgoOrders rows (clientAlgoId, symbol, side, type, quantity, reduceOnly)


@dataclass(frozen=True)
class Action:
    kind: str          # adopt | protect | flatten | cancel | drop | foreign
    symbol: str
    cid: str = ""              # the exchange order concerned (adopt/cancel/foreign), or the stop to replace (protect)
    position_id: str = ""      # the executor's position (protect/drop/flatten of a holding); "" = extra exposure
    side: str = ""             # BUY | SELL of the order to send (protect/flatten)
    qty: float = 0.0
    price: float = 0.0         # protect: the corrected trigger price
    algo: bool = False         # adopt/cancel/foreign: an algo (conditional) order
    detail: str = ""


@dataclass
class Report:
    """The comparison and the actions taken, for the `reconciled` record."""
    differences: list[str] = field(default_factory=list)
    actions: list[Action] = field(default_factory=list)
    incomplete: bool = False            # an action could not be done: reconcile again soon


def _group(cid: str) -> str:
    """smc-<hash>-<leg> -> smc-<hash> (the orders of one signal)."""
    return cid.rsplit("-", 1)[0] if cid.startswith(PREFIX) else cid


def _close_side(signed: float) -> str:
    return "SELL" if signed > 0 else "BUY"


def plan(snap: ExchangeSnapshot, holdings: list[Holding], ticks: dict[str, float], prefix: str = PREFIX) -> Report:
    rep = Report()
    act = rep.actions.append
    open_algo = {a["clientAlgoId"]: a for a in snap.open_algos}
    open_plain = {o["clientOrderId"]: o for o in snap.open_orders}
    known = {cid for h in holdings for cid in h.orders}
    dropped: set[str] = set()
    adopted_groups: set[str] = set()
    symbols = sorted(set(snap.positions) | {h.symbol for h in holdings})
    for sym in symbols:
        ex = snap.positions.get(sym, 0.0)
        held = [h for h in holdings if h.symbol == sym]
        ours = sum(h.signed for h in held)
        mark = snap.marks.get(sym, 0.0)
        if abs(ex - ours) > EPS:
            rep.differences.append(f"{sym}: exchange {ex:g} vs executor {ours:g}")
        if held and (abs(ex) < EPS or ex * ours < 0 or abs(ex) < abs(ours) - EPS):
            for h in held:
                act(Action("drop", sym, position_id=h.position_id, qty=h.qty,
                           detail=f"exchange holds {ex:g}, executor {ours:g}: closed in the books at the mark {mark:g}"))
                dropped |= set(h.orders)
            held, extra = [], ex
        else:
            extra = ex - ours
        for h in held:
            stops = [c for c in h.orders if c.rsplit("-", 1)[-1] in STOP_LEGS]
            if h.stop <= 0 or any(c in open_algo for c in stops):
                continue
            last_leg = "stop2" if any(c.endswith("-stop2") for c in stops) else "stop"
            step, price = next_protective_step(last_leg, h.side, h.stop, mark, ticks.get(sym, 0.0))
            if step == "replace":
                act(Action("protect", sym, position_id=h.position_id, side=_close_side(h.signed), qty=h.qty,
                           price=price, detail=f"no working stop at the exchange: re-placed at {price:g} (mark {mark:g})"))
            else:
                act(Action("flatten", sym, position_id=h.position_id, side=_close_side(h.signed), qty=h.qty,
                           detail=f"no working stop at the exchange and no valid stop price (mark {mark:g})"))
        if abs(extra) > EPS:
            cover = [a for a in snap.open_algos
                     if a["symbol"] == sym and a["clientAlgoId"].startswith(prefix) and a["clientAlgoId"] not in known
                     and a.get("type") == "STOP_MARKET" and a.get("side") == _close_side(extra)
                     and str(a.get("reduceOnly", "")).lower() == "true"]
            if sum(float(a.get("quantity") or 0) for a in cover) >= abs(extra) - EPS:
                for a in cover:
                    adopted_groups.add(_group(a["clientAlgoId"]))
                act(Action("adopt", sym, qty=abs(extra), side=_close_side(extra),
                           detail=f"exchange position {extra:g} unknown to the executor, protected by the strategy's "
                                  f"stop(s) {', '.join(a['clientAlgoId'] for a in cover)}: kept"))
            else:
                act(Action("flatten", sym, side=_close_side(extra), qty=abs(extra),
                           detail=f"exchange position {extra:g} unknown to the executor and not protected"))
    for book, algo in ((open_algo, True), (open_plain, False)):
        for cid, o in sorted(book.items()):
            sym = o.get("symbol", "")
            if cid in known and cid not in dropped:
                act(Action("adopt", sym, cid=cid, algo=algo, detail="the executor's order, open at the exchange"))
            elif cid in dropped or (cid.startswith(prefix) and _group(cid) not in adopted_groups):
                act(Action("cancel", sym, cid=cid, algo=algo, detail="orphan: no position of the executor behind it"))
            elif cid.startswith(prefix):
                act(Action("adopt", sym, cid=cid, algo=algo, detail="belongs to an adopted position"))
            else:
                act(Action("foreign", sym, cid=cid, algo=algo, detail="not the strategy's client id: left alone"))
    return rep


def holdings(engine) -> list[Holding]:
    """The executor's side of the comparison, read from the engine's state."""
    out = []
    for p in engine.portfolio.positions.values():
        if p.status not in ("open", "closing"):
            continue
        cids = tuple(sorted(c for c, o in engine.orders.items() if o.signal_id == p.signal_id and o.leg != "entry"))
        out.append(Holding(p.position_id, p.signal_id, p.symbol, p.side, p.qty, p.stop, cids))
    return sorted(out, key=lambda h: h.position_id)


# --- writing the outcome into the engine's state (called by the adapter after the orders went out) ----
def reconcile_order(symbol: str, key: str, side: str, qty: float, ts: int):
    """The MARKET reduce-only order that flattens `qty` found by a reconciliation at `ts` (its own id:
    the same position flattened by two reconciliations gets two ids, never a resend of a final one)."""
    from schemas.trading import Order, client_order_id
    sid = f"reconcile:{key}:{ts}"
    return Order(client_order_id=client_order_id(sid, "exit"), signal_id=sid, symbol=symbol, leg="exit", side=side,
                 type="MARKET", qty=qty, price=0.0, reduce_only=True, status="NEW", ts=ts, reason="reconcile")


def apply(engine, rep: Report, outcomes: dict[int, list], ts: int, wall_ts: int = 0) -> list:
    """Write the executed actions into the engine's state. `outcomes[i]` = [(Order, events), ...] for
    action i (the orders the adapter sent for it and the broker events they returned). Returns the
    records: Orders, Fills, closed Positions, one Alert per action that changed something and the
    `reconciled` summary."""
    from executor.brokers.base import FillEvent, OrderUpdate
    from schemas.trading import Fill, make_alert
    import dataclasses
    out: list = []
    pf = engine.portfolio
    counts: dict[str, int] = {}

    def forget(signal_id: str) -> None:
        for cid in [c for c, o in engine.orders.items() if o.signal_id == signal_id]:
            engine.orders.pop(cid)

    for i, a in enumerate(rep.actions):
        counts[a.kind] = counts.get(a.kind, 0) + 1
        pos = pf.positions.get(a.position_id) if a.position_id else None
        fill = None
        working = None
        for order, events in outcomes.get(i, []):
            for ev in events:
                if isinstance(ev, OrderUpdate):
                    out.append(dataclasses.replace(order, status=ev.status, ts=ts, reason=ev.reason or order.reason,
                                                   exchange_order_id=ev.exchange_order_id, wall_ts=wall_ts))
                    if order.leg in STOP_LEGS and ev.status == "NEW" and ev.reason != "unknown_outcome":
                        working = order
                elif isinstance(ev, FillEvent):
                    fill = (order, ev)
                    out.append(Fill(fill_id=f"{ev.client_order_id}:1", client_order_id=ev.client_order_id,
                                    symbol=order.symbol, side=order.side, qty=ev.qty, price=ev.price, fee=ev.fee,
                                    ts=ts, liquidity=ev.liquidity, wall_ts=wall_ts))
            if working is not None:
                engine.orders[working.client_order_id] = working
        cid = a.cid or a.position_id or (fill[0].client_order_id if fill else a.symbol)
        if a.kind == "adopt" and a.cid and a.detail.startswith("the executor's"):
            continue                                            # the normal case: no alert
        detail = a.detail
        if a.kind == "drop" and pos is not None:
            mark = pf.marks.get(a.symbol) or pos.entry_price
            closed = pf.fill_exit(pos.position_id, mark, 0.0, ts, "reconciled")
            forget(closed.signal_id)
            engine._unprotected_since.pop(closed.position_id, None)
            out.append(closed.record())
        elif a.kind in ("protect", "flatten"):
            if working is not None:
                engine._unprotected_since.pop(a.position_id, None)
                detail += f"; stop {working.client_order_id} working"
            elif fill is not None:
                detail += f"; flattened {fill[1].qty:g} at {fill[1].price:g} ({fill[0].client_order_id})"
                if pos is not None:
                    closed = pf.fill_exit(pos.position_id, fill[1].price, fill[1].fee, ts, "unprotected")
                    forget(closed.signal_id)
                    engine._unprotected_since.pop(closed.position_id, None)
                    out.append(closed.record())
            else:
                detail += "; NOT DONE (the exchange refused or did not answer): retried at the next reconciliation"
                rep.incomplete = True
        elif a.kind == "cancel":
            engine.orders.pop(a.cid, None)
        engine.stats.alerts += 1
        out.append(make_alert(f"reconcile_{a.kind}", a.symbol, "", cid, ts, detail, wall_ts))
    summary = "; ".join(rep.differences) or "exchange and executor agree"
    summary += " | " + (", ".join(f"{k}={v}" for k, v in sorted(counts.items())) or "no action")
    engine.stats.alerts += 1
    out.append(make_alert("reconciled", "*", "", "", ts, summary, wall_ts))
    return out


# --- between reconciliations: the user stream's ACCOUNT_UPDATE positions against the executor's ------
class PositionWatch:
    """The exchange's position per symbol as ACCOUNT_UPDATE pushes it (a.P[].pa, signed), compared with
    what the executor holds: a position changed behind its back (closed by hand, liquidated, ADL, opened
    from another client) makes a reconciliation due at once instead of at the next reconnect.

    An update of our own fill can reach the stream before or after the engine applied that fill, so a
    difference counts only once it has lasted `grace_s` (then the engine has applied every fill it
    knows of). No I/O: the caller passes the clock; `observe` runs on the stream's thread, `drifted` on
    the engine's (a lock between them)."""

    def __init__(self, grace_s: float = 5.0) -> None:
        self.grace_s = grace_s
        self.pushed: dict[str, tuple[float, float]] = {}    # symbol -> (signed amount, when it arrived)
        self._lock = threading.Lock()

    def observe(self, symbol: str, amount: float, now: float) -> None:
        with self._lock:
            self.pushed[symbol] = (amount, now)

    def drifted(self, held: dict[str, float], now: float) -> list[tuple[str, float, float]]:
        """(symbol, exchange amount, executor's amount) for each difference older than grace_s; those
        are forgotten (the reconciliation that follows compares a fresh REST snapshot anyway)."""
        out = []
        with self._lock:
            for symbol, (amount, since) in list(self.pushed.items()):
                ours = held.get(symbol, 0.0)
                if abs(amount - ours) <= EPS * max(1.0, abs(amount)):
                    del self.pushed[symbol]          # agrees: nothing to watch
                elif now - since >= self.grace_s:
                    out.append((symbol, amount, ours))
                    del self.pushed[symbol]
        return sorted(out)


def held_positions(engine) -> dict[str, float]:
    """The executor's signed position per symbol (open and closing positions, as reconcile compares)."""
    out: dict[str, float] = {}
    for h in holdings(engine):
        out[h.symbol] = out.get(h.symbol, 0.0) + h.signed
    return out
