"""Paper broker (default): deterministic simulation from the signals alone.

* MARKET orders fill at the NEXT bar's open of the same symbol and timeframe (the next Signal record
  whose open_time is after the order's time), plus `slippage_bps` against us, paying the taker fee
  (`taker_fee`, Binance USD-M regular 0.05 %).
* STOP_MARKET / TAKE_PROFIT_MARKET rest until a bar's range reaches them (executor.exits.intrabar_exit:
  gaps fill at the open, both-in-one-bar -> the stop), then fill like a market order (slippage, taker).
* Funding is charged by the engine at each REAL settlement of the symbol, with its real rate, on the
  position's mark-price notional (executor.funding; the history is ExecutorConfig.funding, loaded
  from ingest/recorded/funding_*.parquet). `funding_rate` / `default_funding_h` are only the
  estimate outside the history's span (live paper trading), and such settlements are counted as
  estimated (EngineStats.funding_estimated) and logged.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

from executor.brokers.base import Broker, FillEvent, OrderUpdate
from executor.exits import intrabar_exit
from schemas.trading import Order, decode_order


@dataclass(frozen=True, slots=True)
class PaperConfig:
    slippage_bps: float = 1.0
    taker_fee: float = 0.0005
    maker_fee: float = 0.0002
    funding_rate: float = 0.0001      # estimate outside the real funding history (counted, logged)
    default_funding_h: int = 8        # interval of that estimate for a symbol without any history

    def round_trip_cost(self) -> float:
        """Cost of entering and leaving at market, as a fraction of notional: taker fee + slippage, twice."""
        return 2.0 * (self.taker_fee + self.slippage_bps / 10_000.0)


def slipped_price(order_side: str, price: float, slippage_bps: float) -> float:
    """The fill price of a paper MARKET / triggered order: `slippage_bps` against us (BUY pays more)."""
    slip = slippage_bps / 10_000.0
    return price * (1.0 + slip) if order_side == "BUY" else price * (1.0 - slip)


def taker_fee(price: float, qty: float, fee_rate: float) -> float:
    """The fee of a taker fill (quote currency)."""
    return price * qty * fee_rate


class PaperBroker(Broker):
    name = "paper"

    def __init__(self, cfg: PaperConfig = PaperConfig()) -> None:
        self.cfg = cfg
        self.pending: dict[str, tuple[Order, str]] = {}      # cid -> (MARKET order, timeframe)
        self.resting: dict[str, tuple[Order, str, str]] = {}  # cid -> (conditional order, timeframe, position side)

    # the engine tells the broker which bar series an order belongs to
    def submit(self, order: Order, ts: int, timeframe: str = "", position_side: str = "") -> list:
        if order.type == "MARKET":
            self.pending[order.client_order_id] = (order, timeframe)
        elif order.type in ("STOP_MARKET", "TAKE_PROFIT_MARKET"):
            self.resting[order.client_order_id] = (order, timeframe, position_side)
        else:
            return [OrderUpdate(order.client_order_id, "REJECTED", ts, f"paper broker: unsupported type {order.type}")]
        return [OrderUpdate(order.client_order_id, "NEW", ts)]

    def cancel(self, order: Order, ts: int) -> list:
        cid = order.client_order_id
        if self.pending.pop(cid, None) is not None or self.resting.pop(cid, None) is not None:
            return [OrderUpdate(cid, "CANCELED", ts)]
        return []

    def _price(self, side: str, price: float) -> float:
        return slipped_price(side, price, self.cfg.slippage_bps)

    def _fill(self, order: Order, raw_price: float, ts: int, trigger: str = "") -> list:
        price = self._price(order.side, raw_price)
        fee = taker_fee(price, order.qty, self.cfg.taker_fee)
        return [OrderUpdate(order.client_order_id, "FILLED", ts),
                FillEvent(order.client_order_id, order.qty, price, fee, ts, "taker", trigger)]

    def on_bar_open(self, bar) -> list:
        out = []
        for cid, (order, tf) in list(self.pending.items()):
            if order.symbol == bar.symbol and (not tf or tf == bar.timeframe) and bar.open_time > order.ts:
                del self.pending[cid]
                out += self._fill(order, bar.open, bar.open_time)
        return out

    def on_bar_range(self, bar) -> list:
        # group the resting legs by position (signal), so stop and target are judged together
        groups: dict[str, dict[str, tuple[Order, str]]] = {}
        for order, tf, pside in self.resting.values():
            if order.symbol == bar.symbol and (not tf or tf == bar.timeframe) and bar.close_time > order.ts:
                groups.setdefault(order.signal_id, {})[order.leg] = (order, pside)
        out = []
        for legs in groups.values():
            stop = legs.get("stop")
            target = legs.get("target")
            pside = (stop or target)[1]
            hit = intrabar_exit(pside, stop[0].price if stop else 0.0, target[0].price if target else 0.0,
                                bar.open, bar.high, bar.low)
            if hit is None:
                continue
            leg, raw = hit
            order = legs[leg][0]
            del self.resting[order.client_order_id]
            out += self._fill(order, raw, bar.close_time, leg)
        return out

    def to_dict(self) -> dict:
        return {"pending": [[asdict(o), tf] for o, tf in self.pending.values()],
                "resting": [[asdict(o), tf, ps] for o, tf, ps in self.resting.values()]}

    def load_dict(self, d: dict) -> None:
        self.pending = {}
        self.resting = {}
        for od, tf in d.get("pending", []):
            o = decode_order(od)
            self.pending[o.client_order_id] = (o, tf)
        for od, tf, ps in d.get("resting", []):
            o = decode_order(od)
            self.resting[o.client_order_id] = (o, tf, ps)
