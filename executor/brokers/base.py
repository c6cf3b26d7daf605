"""The broker interface the engine talks to, and the events brokers report back.

Every call returns a list of events (order status changes and fills) so the engine treats a
synchronous exchange answer (a MARKET order filled in the REST response) and a simulated one (the
paper broker filling at the next bar's open) the same way.

Call order per bar record (Signal) of a symbol, driven by the engine:
  on_bar_open(bar)   fills of orders that execute at this bar's open (paper MARKET orders)
  on_bar_range(bar)  conditional orders triggered inside the bar (paper: high/low; live: exchange poll)
  submit()/cancel()  new orders decided at this bar's close
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

from schemas.trading import Order


@dataclass(frozen=True, slots=True)
class OrderUpdate:
    client_order_id: str
    status: str                 # NEW | FILLED | CANCELED | REJECTED | EXPIRED | UNKNOWN
    ts: int
    reason: str = ""
    exchange_order_id: str = ""


@dataclass(frozen=True, slots=True)
class FillEvent:
    client_order_id: str
    qty: float
    price: float
    fee: float
    ts: int
    liquidity: str = "taker"
    trigger: str = ""           # for conditional fills: stop | target


class BrokerError(Exception):
    """A broker failure the engine cannot turn into an order status."""


class Broker(ABC):
    name = "base"
    # True when submit()/cancel() act on something outside the process (an exchange): the executor then
    # commits right after every signal that produced an order record, so that a restart never replays
    # more than the one signal whose orders were in flight (executor.service)
    external_effects = False

    @abstractmethod
    def submit(self, order: Order, ts: int, timeframe: str = "", position_side: str = "") -> list:
        """Send an order once. Returns events (at least NEW or REJECTED for this order).
        `timeframe` is the bar series the position lives on; `position_side` long|short."""

    @abstractmethod
    def cancel(self, order: Order, ts: int) -> list:
        """Cancel a resting order; returns its CANCELED event (or nothing if already gone)."""

    def on_bar_open(self, bar) -> list:
        return []

    def on_bar_range(self, bar) -> list:
        return []

    def to_dict(self) -> dict:
        return {}

    def load_dict(self, d: dict) -> None:  # noqa: B027 - optional hook: a broker without state keeps the no-op
        pass

    def close(self) -> None:  # noqa: B027 - optional hook: a broker without state keeps the no-op
        pass
