"""The few exchangeInfo facts the executor needs per symbol (tick, steps, minimum notional).

Independent of ingest.universe on purpose: `parse_exchange_info` reads the raw `GET /fapi/v1/exchangeInfo`
payload (PRICE_FILTER.tickSize, LOT_SIZE.stepSize/minQty, MARKET_LOT_SIZE.stepSize/minQty,
MIN_NOTIONAL.notional). All rounding goes through Decimal so 0.1 + 0.2 never leaks into a price.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from decimal import ROUND_CEILING, ROUND_FLOOR, ROUND_HALF_EVEN, Decimal
from pathlib import Path

import orjson


@dataclass(frozen=True, slots=True)
class Instrument:
    symbol: str
    tick_size: float
    step_size: float
    market_step_size: float
    min_notional: float
    min_qty: float = 0.0
    market_min_qty: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


def _dec(x: float) -> Decimal:
    return Decimal(repr(float(x)))


def round_to(value: float, step: float, mode: str) -> float:
    """Round `value` to a multiple of `step`: mode floor | ceil | nearest (exact in decimal)."""
    if step <= 0:
        return float(value)
    v, s = _dec(value), _dec(step)
    rounding = {"floor": ROUND_FLOOR, "ceil": ROUND_CEILING, "nearest": ROUND_HALF_EVEN}[mode]
    n = (v / s).quantize(Decimal(1), rounding=rounding)
    return float(n * s)


def parse_exchange_info(payload: dict | bytes | str) -> dict[str, Instrument]:
    """Instruments of every symbol in an exchangeInfo payload (any status; callers filter)."""
    if not isinstance(payload, dict):
        payload = orjson.loads(payload)
    out: dict[str, Instrument] = {}
    for sym in payload.get("symbols", []):
        f = {flt.get("filterType"): flt for flt in sym.get("filters", [])}
        try:
            tick = float(f["PRICE_FILTER"]["tickSize"])
            lot = f["LOT_SIZE"]
        except KeyError:
            continue
        mlot = f.get("MARKET_LOT_SIZE", lot)
        mn = f.get("MIN_NOTIONAL", {})
        min_notional = float(mn.get("notional", mn.get("minNotional", 0.0)))
        out[sym["symbol"]] = Instrument(
            symbol=sym["symbol"], tick_size=tick, step_size=float(lot["stepSize"]),
            market_step_size=float(mlot.get("stepSize", lot["stepSize"])), min_notional=min_notional,
            min_qty=float(lot.get("minQty", 0.0)), market_min_qty=float(mlot.get("minQty", lot.get("minQty", 0.0))))
    return out


def load_exchange_info(path: str | Path) -> dict[str, Instrument]:
    return parse_exchange_info(Path(path).read_bytes())


def generic_instrument(symbol: str, price: float, min_notional: float = 5.0) -> Instrument:
    """Fallback for a symbol without exchangeInfo (paper mode only): ~5 significant price digits
    and a quantity step worth about 0.001 USDT, so rounding never dominates the sizing."""
    if not (price > 0 and math.isfinite(price)):
        price = 1.0
    mag = math.floor(math.log10(price))
    tick = 10.0 ** (mag - 4)
    step = 10.0 ** min(3, max(-8, math.floor(math.log10(0.001 / price))))
    return Instrument(symbol, float(f"{tick:.12g}"), float(f"{step:.12g}"), float(f"{step:.12g}"), min_notional)


class InstrumentBook:
    """Known instruments plus the generic fallback (recorded as used, so a state snapshot keeps it)."""

    def __init__(self, known: dict[str, Instrument] | None = None, allow_generic: bool = True) -> None:
        self.known = dict(known or {})
        self.allow_generic = allow_generic

    def get(self, symbol: str, price: float) -> Instrument | None:
        inst = self.known.get(symbol)
        if inst is None and self.allow_generic:
            inst = generic_instrument(symbol, price)
            self.known[symbol] = inst
        return inst
