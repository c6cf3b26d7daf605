"""The executor's deterministic core: one Signal in, the records it causes out.

No Kafka, no clocks (except `wall_ts`, which callers pass and which is for latency only): the same
signals in the same order give the same records with the same ids, which is what makes a replay a
backtest and a crash-restart harmless. Per bar record of a symbol (see executor.brokers.base):

  0. drop duplicates / out-of-order bars (open_time <= last seen for symbol+timeframe)
  1. roll the UTC day (start-of-day equity for the daily loss limit)
  2. broker.on_bar_open: orders executing at this bar's open (paper MARKET orders)
  3. real funding settlements reached by this bar's open, for positions still open (executor.funding)
  4. broker.on_bar_range: stop/target triggered inside the bar
  5. mark to the close; time/manual exits (exits.time_exit) -> MARKET reduce-only exit orders
  6. the strategy's entry decision -> Decision (+ MARKET entry order)
  7. an Equity record when the account changed

Protection (executor.protection): a stop that is rejected, raises a broker error or comes back with
an unknown outcome is re-placed once at a corrected price (leg `stop2`) or the position is flattened
with a MARKET reduce-only order; each step is an Alert record. The wall time from the entry fill to
the stop's acknowledgement is measured (`clock`) against cfg.protect_within_ms; past it an alert is
written and a still-unprotected position is flattened at the next bar of its symbol.
"""
from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from typing import Callable

from executor.brokers.base import Broker, BrokerError, FillEvent, OrderUpdate
from executor.config import ExecutorConfig
from executor.exits import time_exit
from executor.funding import funding_payment
from executor.instruments import FilterViolation, InstrumentBook, conform
from executor.portfolio import Portfolio, PositionState
from executor.protection import STOP_LEGS, next_protective_step
from executor.strategy import AccountView, decide
from schemas.signal import Signal
from schemas.trading import Decision, Fill, Order, client_order_id, decode_order, make_alert

log = logging.getLogger("smc.executor.engine")

FINAL = ("FILLED", "CANCELED", "REJECTED", "EXPIRED")


def pattern_of(events: dict) -> str:
    if isinstance(events.get("pattern"), str):
        return events["pattern"][:64]
    return "+".join(sorted(k for k, v in events.items() if v))[:64]


@dataclass
class EngineStats:
    signals: int = 0
    duplicates: int = 0
    decisions: int = 0
    entries: int = 0
    exits: int = 0
    orders: int = 0
    fills: int = 0
    rejected: int = 0
    alerts: int = 0
    funding_estimated: int = 0   # settlements charged without a real record (fallback rate)


class Engine:
    def __init__(self, cfg: ExecutorConfig, broker: Broker, instruments: InstrumentBook | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.cfg = cfg
        self.broker = broker
        self.instruments = instruments if instruments is not None else InstrumentBook.default()
        self.portfolio = Portfolio(cfg.start_equity)
        self.orders: dict[str, Order] = {}         # live (non-final) orders by client_order_id
        self.last_bar: dict[str, int] = {}         # "symbol|timeframe" -> last open_time processed
        self.flatten: set[str] = set()             # symbols ("*" = all) to flatten at their next bar
        self.stats = EngineStats()
        self._done: dict[str, Order] = {}
        self._changed = False
        self._last_error = ""
        self.halted = ""                           # why new entries are stopped ("" = trading); operator resumes
        self.failures = 0                          # consecutive broker errors (halt at cfg.halt_after_failures)
        self._pending_alerts: list = []            # raised outside process() (commands), emitted at the next bar
        self.clock = clock                         # wall clock for the naked-position bound only
        self._unprotected_since: dict[str, float] = {}   # position_id -> clock() at entry fill, until a stop is NEW
        self._funding_estimated_logged: set[str] = set()

    # ------------------------------------------------------------------------------------------
    def process(self, sig: Signal, wall_ts: int = 0) -> list:
        key = f"{sig.symbol}|{sig.timeframe}"
        last = self.last_bar.get(key)
        if last is not None and sig.open_time <= last:
            self.stats.duplicates += 1
            return []
        self.last_bar[key] = sig.open_time
        self.stats.signals += 1
        out: list = []
        self._changed = False
        pf = self.portfolio
        pf.roll_day(sig.close_time)

        out += self._pending_alerts
        self._pending_alerts = []
        # on_bar_open is local for the live broker (MARKET orders fill in the REST answer): its success
        # says nothing about the exchange, so it does not reset the consecutive-failure count
        self._apply(self._broker_call("on_bar_open", self.broker.on_bar_open, sig, sig=sig, out=out, wall_ts=wall_ts,
                                      counts_as_success=False),
                    sig, out, wall_ts)
        self._funding(sig, out)
        self._apply(self._broker_call("on_bar_range", self.broker.on_bar_range, sig, sig=sig, out=out, wall_ts=wall_ts),
                    sig, out, wall_ts)
        pf.mark(sig.symbol, sig.close)
        self._enforce_protection_bound(sig, out, wall_ts)
        self._time_exits(sig, out, wall_ts)
        self._entry(sig, out, wall_ts)
        if self._changed or self.cfg.equity_every_bar:
            out.append(pf.snapshot(sig.close_time))
        return out

    def command(self, cmd: dict) -> None:
        """Operator commands: {"cmd": "flatten", "symbol": "BTCUSDT" | "*"}, {"cmd": "resume"} (after a halt)."""
        if cmd.get("cmd") == "flatten":
            self.flatten.add(str(cmd.get("symbol") or "*"))
        elif cmd.get("cmd") == "resume":
            if self.halted:
                log.warning("trading RESUMED by the operator (was halted: %s)", self.halted)
                self._pending_alerts.append(make_alert("resumed", "*", "", "", max(self.last_bar.values(), default=0),
                                                       f"operator resume; was: {self.halted}"))
            self.halted, self.failures = "", 0
        else:
            raise ValueError(f"unknown command {cmd.get('cmd')!r}")

    # ------------------------------------------------------------------------------------------
    def _entry(self, sig: Signal, out: list, wall_ts: int) -> None:
        pf = self.portfolio
        inst = self.instruments.get(sig.symbol, sig.entry or sig.close) if sig.side != "flat" else None
        view = AccountView(equity=pf.equity(), day_start_equity=pf.day_start_equity,
                           symbols_in_position=pf.symbols_in_position(), open_positions=pf.open_count())
        d = decide(sig, view, inst, self.cfg.strategy)
        if d.action == "enter" and self.halted:
            d = dataclasses.replace(d, action="skip", reason="halted", sizing=None)
        if d.reason == "flat" and not self.cfg.record_flat:
            return
        sz = d.sizing
        self.stats.decisions += 1
        out.append(Decision(signal_id=sig.signal_id, symbol=sig.symbol, ts=sig.close_time, action=d.action,
                            reason=d.reason, confidence=sig.confidence, risk_pct=d.risk_pct,
                            qty=sz.qty if sz else 0.0, equity=view.equity if sz else 0.0, wall_ts=wall_ts))
        if d.action != "enter":
            return
        self.stats.entries += 1
        pid = client_order_id(sig.signal_id, "entry")
        pos = PositionState(position_id=pid, signal_id=sig.signal_id, symbol=sig.symbol, timeframe=sig.timeframe,
                            side=sig.side, qty=sz.qty, stop=sz.stop, target=sz.target,
                            confidence=sig.confidence, pattern=pattern_of(sig.events))
        pf.add_pending(pos)
        order = Order(client_order_id=pid, signal_id=sig.signal_id, symbol=sig.symbol, leg="entry",
                      side="BUY" if sig.side == "long" else "SELL", type="MARKET", qty=sz.qty, price=0.0,
                      reduce_only=False, status="NEW", ts=sig.close_time, reason=d.reason)
        self._submit(order, pos, sig, out, wall_ts)

    def _time_exits(self, sig: Signal, out: list, wall_ts: int) -> None:
        flat_all = "*" in self.flatten
        for pos in self.portfolio.of_symbol(sig.symbol):
            if pos.status != "open" or pos.timeframe != sig.timeframe:
                continue
            manual = flat_all or sig.symbol in self.flatten or pos.flatten
            reason = time_exit(pos.side, pos.entry_price, pos.opened_at, sig.close_time, sig.close,
                               self.cfg.exits, manual)
            if reason is None:
                continue
            pos.to("closing")
            pos.pending_exit = reason
            self.stats.decisions += 1
            out.append(Decision(signal_id=sig.signal_id, symbol=sig.symbol, ts=sig.close_time, action="exit",
                                reason=reason, confidence=pos.confidence, qty=pos.qty, wall_ts=wall_ts))
            order = Order(client_order_id=client_order_id(pos.signal_id, "exit"), signal_id=pos.signal_id,
                          symbol=pos.symbol, leg="exit", side="SELL" if pos.side == "long" else "BUY",
                          type="MARKET", qty=pos.qty, price=0.0, reduce_only=True, status="NEW",
                          ts=sig.close_time, reason=reason)
            self._submit(order, pos, sig, out, wall_ts)
        self.flatten.discard(sig.symbol)
        if flat_all and not any(p.status == "open" for p in self.portfolio.positions.values()):
            self.flatten.discard("*")

    def _funding(self, sig: Signal, out: list) -> None:
        # --- funding (issue 15): the real settlements crossed since the last charge (executor.funding) ---
        pf = self.portfolio
        paper = self.cfg.paper
        for pos in pf.of_symbol(sig.symbol):
            if pos.status not in ("open", "closing"):
                continue
            due = self.cfg.funding.due(sig.symbol, pos.last_funding_ts, sig.open_time, paper.funding_rate,
                                       paper.default_funding_h)
            for st in due:
                # the recorded mark price at the settlement; else this bar's open (first price at or after it)
                mark = st.mark_price or sig.open
                pf.charge_funding(pos.position_id, funding_payment(pos.side, pos.qty, mark, st.rate), st.time)
                pos.last_funding_ts = st.time
                if st.estimated:
                    self.stats.funding_estimated += 1
                    if sig.symbol not in self._funding_estimated_logged:
                        self._funding_estimated_logged.add(sig.symbol)
                        log.warning("no real funding record for %s at %d: estimated at %.4f %% (SMC_EXEC_FUNDING_RATE)",
                                    sig.symbol, st.time, paper.funding_rate * 100)
            if due:
                self._changed = True
                out.append(pos.record())

    # ------------------------------------------------------------------------------------------
    def _submit(self, order: Order, pos: PositionState, sig: Signal, out: list, wall_ts: int) -> None:
        inst = self.instruments.known.get(order.symbol)
        refused = ""
        if inst is not None:
            try:
                qty, price = conform(inst, order.type, order.qty, order.price, side=order.side,
                                     reduce_only=order.reduce_only, mark=self._band_mark(order.symbol, sig))
                if (qty, price) != (order.qty, order.price):
                    order = dataclasses.replace(order, qty=qty, price=price)
            except FilterViolation as exc:
                refused = str(exc)
        self.orders[order.client_order_id] = order
        self.stats.orders += 1
        if refused:                # never sent: the exchange would refuse it for this filter
            self._apply([OrderUpdate(order.client_order_id, "REJECTED", order.ts, reason=refused[:200])], sig, out, wall_ts)
            return
        events = self._broker_call("submit", self.broker.submit, order, order.ts, timeframe=pos.timeframe,
                                   position_side=pos.side, sig=sig, out=out, wall_ts=wall_ts, order=order)
        if events is None:
            # the exchange error is recorded as a rejection (no retry here); protection and the halt
            # rule take it from there
            events = [OrderUpdate(order.client_order_id, "REJECTED", order.ts, reason=f"broker_error: {self._last_error}"[:200])]
        self._apply(events, sig, out, wall_ts)

    def _band_mark(self, symbol: str, sig: Signal) -> float | None:
        """The mark PERCENT_PRICE is checked against: the latest price the engine has for the symbol
        (its last marked close, else this signal's close); None = no band (cfg.percent_price off)."""
        if not self.cfg.percent_price:
            return None
        mark = self.portfolio.marks.get(symbol, 0.0)
        if mark <= 0 and symbol == sig.symbol:
            mark = sig.close
        return mark if mark > 0 else None

    # --- exchange errors: never out of the engine ----------------------------------------------
    def _broker_call(self, what: str, fn, *args, sig: Signal, out: list, wall_ts: int, order: Order | None = None,
                     counts_as_success: bool = True, **kw):
        """fn(*args, **kw); on a BrokerError: an alert, the failure counted (halt on an auth/ban error or
        on `halt_after_failures` in a row), and None for submit / [] for the event polls."""
        try:
            events = fn(*args, **kw)
        except BrokerError as exc:
            self._last_error = str(exc)
            self.failures += 1
            ctx = order or Order(client_order_id="", signal_id=sig.signal_id, symbol=sig.symbol, leg="entry",
                                 side="BUY", type="MARKET", qty=1.0, price=0.0, reduce_only=False, status="NEW",
                                 ts=sig.close_time)
            self._alert(out, "broker_error", ctx, f"{what} {ctx.leg if order else ''}: {exc}", wall_ts)
            if getattr(exc, "halt", False):
                self._halt(f"{exc}", ctx, out, wall_ts)
            elif self.failures >= self.cfg.halt_after_failures:
                self._halt(f"{self.failures} exchange errors in a row, last: {exc}", ctx, out, wall_ts)
            return None if what == "submit" else []
        if counts_as_success:
            self.failures = 0
        return events

    def _halt(self, why: str, ctx: Order, out: list, wall_ts: int) -> None:
        if self.halted:
            return
        self.halted = why[:300]
        log.critical("TRADING HALTED: %s. No new entries; open positions are still managed (stops, exits). "
                     "Fix the cause, then resume with the operator command {\"cmd\": \"resume\"}.", why)
        self._alert(out, "halted", ctx, why, wall_ts)

    # --- protection ------------------------------------------------------------------------
    def _alert(self, out: list, kind: str, order: Order, detail: str, wall_ts: int) -> None:
        self.stats.alerts += 1
        log.error("ALERT %s %s %s: %s", kind, order.symbol, order.client_order_id, detail)
        out.append(make_alert(kind, order.symbol, order.signal_id, order.client_order_id, order.ts, detail, wall_ts))

    def _stop_failed(self, order: Order, pos: PositionState, why: str, sig: Signal, out: list, wall_ts: int) -> None:
        """A protective stop is not working: re-place it once at a corrected price, else flatten."""
        self._alert(out, "stop_rejected", order, why, wall_ts)
        if pos.status != "open":
            return
        inst = self.instruments.get(pos.symbol, sig.close)
        step, price = next_protective_step(order.leg, pos.side, order.price, sig.close,
                                           inst.tick_size if inst is not None else 0.0)
        if step == "replace":
            o = dataclasses.replace(order, client_order_id=client_order_id(pos.signal_id, "stop2"), leg="stop2",
                                    price=price, status="NEW", reason="stop_replaced", exchange_order_id="")
            self._alert(out, "stop_replaced", o, f"{order.price} -> {price} (mark {sig.close})", wall_ts)
            self._submit(o, pos, sig, out, wall_ts)
            return
        self._flatten_unprotected(pos, order.ts, sig, out, wall_ts, f"after {order.leg} failed: {why}")

    def _flatten_unprotected(self, pos: PositionState, ts: int, sig: Signal, out: list, wall_ts: int,
                             why: str) -> None:
        pos.to("closing")
        pos.pending_exit = "unprotected"
        self._unprotected_since.pop(pos.position_id, None)
        order = Order(client_order_id=client_order_id(pos.signal_id, "exit"), signal_id=pos.signal_id,
                      symbol=pos.symbol, leg="exit", side="SELL" if pos.side == "long" else "BUY", type="MARKET",
                      qty=pos.qty, price=0.0, reduce_only=True, status="NEW", ts=ts, reason="unprotected")
        self._alert(out, "flattened_unprotected", order, why, wall_ts)
        self._submit(order, pos, sig, out, wall_ts)

    def _has_working_stop(self, pos: PositionState) -> bool:
        return any(o.signal_id == pos.signal_id and o.leg in STOP_LEGS and o.reason != "unknown_outcome"
                   for o in self.orders.values())

    def _enforce_protection_bound(self, sig: Signal, out: list, wall_ts: int) -> None:
        """At every bar of a symbol, an open position without a working stop is flattened (a bar is
        longer than the bound: whatever left it unprotected, a failed flatten included, has had its time)."""
        for pos in self.portfolio.of_symbol(sig.symbol):
            if pos.status != "open" or pos.stop <= 0 or self._has_working_stop(pos):
                continue
            self._flatten_unprotected(pos, sig.close_time, sig, out, wall_ts, "no working stop at this bar")

    def _cancel_siblings(self, pos: PositionState, sig: Signal, out: list, wall_ts: int, ts: int) -> None:
        for cid, o in list(self.orders.items()):
            if o.signal_id == pos.signal_id and o.leg in ("stop", "stop2", "target", "exit"):
                evs = self._broker_call("cancel", self.broker.cancel, o, ts, sig=sig, out=out, wall_ts=wall_ts, order=o)
                if not evs:       # the broker no longer knows it (or failed: a leftover is reduce-only): gone
                    evs = [OrderUpdate(cid, "CANCELED", ts, "gone")]
                self._apply(evs, sig, out, wall_ts)

    def _apply(self, events: list, sig: Signal, out: list, wall_ts: int) -> None:
        for ev in events:
            if isinstance(ev, OrderUpdate):
                self._on_update(ev, sig, out, wall_ts)
            elif isinstance(ev, FillEvent):
                self._on_fill(ev, sig, out, wall_ts)
        self._done.clear()

    def _on_update(self, ev: OrderUpdate, sig: Signal, out: list, wall_ts: int) -> None:
        order = self.orders.get(ev.client_order_id) or self._done.get(ev.client_order_id)
        if order is None:
            log.warning("update for an unknown order %s (%s)", ev.client_order_id, ev.status)
            return
        rec = dataclasses.replace(order, status=ev.status, ts=ev.ts, reason=ev.reason or order.reason,
                                  exchange_order_id=ev.exchange_order_id or order.exchange_order_id, wall_ts=wall_ts)
        out.append(rec)
        if ev.status in FINAL:
            self.orders.pop(ev.client_order_id, None)
            self._done[ev.client_order_id] = rec
        pid = client_order_id(order.signal_id, "entry")
        if order.leg in STOP_LEGS and ev.status == "NEW":
            pos = self.portfolio.positions.get(pid)
            if ev.reason == "unknown_outcome":
                # the exchange could not tell whether the stop exists: not proven protected
                # a second stop could double it, so no re-placement: flatten (a leftover reduce-only
                # stop cannot open a position)
                self.orders[ev.client_order_id] = rec
                if pos is not None and pos.status == "open":
                    self._alert(out, "stop_rejected", order, "outcome unknown after lookups", wall_ts)
                    self._flatten_unprotected(pos, order.ts, sig, out, wall_ts, "stop outcome unknown")
                return
            self.orders[ev.client_order_id] = rec
            since = self._unprotected_since.pop(pid, None)
            if since is not None:
                naked_ms = (self.clock() - since) * 1000
                if naked_ms > self.cfg.protect_within_ms:
                    self._alert(out, "naked_bound_exceeded", order,
                                f"stop acknowledged {naked_ms:.0f} ms after the entry fill "
                                f"(bound {self.cfg.protect_within_ms} ms)", wall_ts)
        if ev.status == "REJECTED":
            self.stats.rejected += 1
            pos = self.portfolio.positions.get(pid)
            if pos is not None:
                if order.leg == "entry" and pos.status == "pending":
                    self.portfolio.cancel(pid, ev.ts)
                elif order.leg in STOP_LEGS and pos.status == "open":
                    self._stop_failed(order, pos, ev.reason or "rejected", sig, out, wall_ts)
                elif order.leg == "exit" and pos.status == "closing":
                    if pos.pending_exit == "unprotected":
                        # stays open and unprotected: the next bar of the symbol flattens again
                        self._alert(out, "flatten_failed", order, ev.reason or "rejected", wall_ts)
                    pos.to("open")
                    pos.pending_exit = ""

    def _on_fill(self, ev: FillEvent, sig: Signal, out: list, wall_ts: int) -> None:
        order = self.orders.get(ev.client_order_id) or self._done.get(ev.client_order_id)
        if order is None:
            log.warning("fill for an unknown order %s", ev.client_order_id)
            return
        self.stats.fills += 1
        self._changed = True
        out.append(Fill(fill_id=f"{ev.client_order_id}:1", client_order_id=ev.client_order_id, symbol=order.symbol,
                        side=order.side, qty=ev.qty, price=ev.price, fee=ev.fee, ts=ev.ts,
                        liquidity=ev.liquidity, wall_ts=wall_ts))
        pf = self.portfolio
        pid = client_order_id(order.signal_id, "entry")
        if pid not in pf.positions:
            log.warning("fill %s for position %s that is not live", ev.client_order_id, pid)
            return
        if order.leg == "entry":
            pos = pf.fill_entry(pid, ev.price, ev.qty, ev.fee, ev.ts)
            out.append(pos.record())
            if pos.stop > 0:
                self._unprotected_since[pid] = self.clock()
            close_side = "SELL" if pos.side == "long" else "BUY"
            for leg, typ, level in (("stop", "STOP_MARKET", pos.stop), ("target", "TAKE_PROFIT_MARKET", pos.target)):
                if level <= 0 or pos.status != "open":      # a failed stop may have flattened it already
                    continue
                o = Order(client_order_id=client_order_id(pos.signal_id, leg), signal_id=pos.signal_id,
                          symbol=pos.symbol, leg=leg, side=close_side, type=typ, qty=pos.qty, price=level,
                          reduce_only=True, status="NEW", ts=ev.ts)
                self._submit(o, pos, sig, out, wall_ts)
        else:
            pos = pf.positions[pid]
            leg = "stop" if order.leg in STOP_LEGS else order.leg
            trigger = "stop" if ev.trigger in STOP_LEGS else ev.trigger
            reason = trigger or (leg if leg in ("stop", "target") else pos.pending_exit or "exit")
            pos = pf.fill_exit(pid, ev.price, ev.fee, ev.ts, reason)
            self.stats.exits += 1
            out.append(pos.record())
            self._cancel_siblings(pos, sig, out, wall_ts, ev.ts)

    # ------------------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {"portfolio": self.portfolio.to_dict(), "broker": self.broker.to_dict(),
                "orders": [dataclasses.asdict(o) for o in self.orders.values()],
                "last_bar": self.last_bar, "flatten": sorted(self.flatten), "halted": self.halted,
                "instruments": {k: v.to_dict() for k, v in self.instruments.known.items()},
                "stats": dataclasses.asdict(self.stats)}

    def load_dict(self, d: dict) -> None:
        from executor.instruments import Instrument
        self.portfolio = Portfolio.from_dict(d["portfolio"])
        self.broker.load_dict(d.get("broker", {}))
        self.orders = {o["client_order_id"]: decode_order(o) for o in d.get("orders", [])}
        self.last_bar = {k: int(v) for k, v in d.get("last_bar", {}).items()}
        self.flatten = set(d.get("flatten", []))
        self.halted = str(d.get("halted", ""))
        for k, v in d.get("instruments", {}).items():
            self.instruments.known.setdefault(k, Instrument(**v))
        self.stats = EngineStats(**d.get("stats", {}))
