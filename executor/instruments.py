"""The few exchangeInfo facts the executor needs per symbol (tick, steps, limits, minimum notional).

Default for paper trading and backtests: the real USD-M snapshot bundled in executor/data (see
executor/data/SOURCES.md), never generic tick sizes. Every symbol of the snapshot is known, whatever
its status: a backtest replays dates when a since-delisted symbol traded (EOSUSDT, SETTLING since
2025-05 in the snapshot, is in the 2023-07 recording), and its last listed filters are the real ones
we have; the book logs such a symbol once. A symbol missing from the snapshot is NOT traded: the
strategy skips it with the reason `unknown_symbol` and the book logs the symbol once (MATICUSDT of the
2023-07 recording, delisted in 2024 and in neither real snapshot of shared/data/binance). Generic
instruments are an explicit opt-in (SMC_EXEC_GENERIC_INSTRUMENTS=1, paper only), e.g. for spot
recordings that have no perpetual. Live trading sees only TRADING symbols (ingest's universe), and
the exchange refuses orders on any other.

Independent of ingest.universe on purpose: `parse_exchange_info` reads the raw `GET /fapi/v1/exchangeInfo`
payload (PRICE_FILTER.tickSize, LOT_SIZE.stepSize/minQty, MARKET_LOT_SIZE.stepSize/minQty,
MIN_NOTIONAL.notional). All rounding goes through Decimal so 0.1 + 0.2 never leaks into a price.
"""
from __future__ import annotations

import functools
import logging
import math
from dataclasses import asdict, dataclass
from decimal import ROUND_CEILING, ROUND_FLOOR, ROUND_HALF_EVEN, Decimal
from pathlib import Path

import orjson

log = logging.getLogger("smc.executor.instruments")


@dataclass(frozen=True, slots=True)
class Instrument:
    symbol: str
    tick_size: float
    step_size: float
    market_step_size: float
    min_notional: float
    min_qty: float = 0.0
    market_min_qty: float = 0.0
    max_qty: float = 0.0            # LOT_SIZE.maxQty (0 = unknown: no cap)
    market_max_qty: float = 0.0     # MARKET_LOT_SIZE.maxQty
    min_price: float = 0.0          # PRICE_FILTER.minPrice / maxPrice (0 = no bound)
    max_price: float = 0.0

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
        pf = f["PRICE_FILTER"]
        out[sym["symbol"]] = Instrument(
            symbol=sym["symbol"], tick_size=tick, step_size=float(lot["stepSize"]),
            market_step_size=float(mlot.get("stepSize", lot["stepSize"])), min_notional=min_notional,
            min_qty=float(lot.get("minQty", 0.0)), market_min_qty=float(mlot.get("minQty", lot.get("minQty", 0.0))),
            max_qty=float(lot.get("maxQty", 0.0)), market_max_qty=float(mlot.get("maxQty", lot.get("maxQty", 0.0))),
            min_price=float(pf.get("minPrice", 0.0)), max_price=float(pf.get("maxPrice", 0.0)))
    return out


BUNDLED = Path(__file__).resolve().parent / "data" / "usdm_exchange_info_2025-12-24.json.gz"


@functools.lru_cache(maxsize=1)
def _bundled_payload() -> dict:
    import gzip
    return orjson.loads(gzip.decompress(BUNDLED.read_bytes()))


def bundled_instruments(tradable_only: bool = True) -> dict[str, Instrument]:
    """The bundled real USD-M exchangeInfo snapshot (2025-12-24): TRADING symbols by default."""
    payload = _bundled_payload()
    keep = {s["symbol"] for s in payload["symbols"] if not tradable_only or s.get("status") == "TRADING"}
    return {k: v for k, v in parse_exchange_info(payload).items() if k in keep}


def bundled_status() -> dict[str, str]:
    """symbol -> status (TRADING, SETTLING, ...) in the bundled snapshot."""
    return {s["symbol"]: s.get("status", "") for s in _bundled_payload()["symbols"]}


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
    """Known instruments; a symbol outside them gets None (the strategy skips it as `unknown_symbol`),
    unless `allow_generic` (explicit opt-in) models it generically (recorded, so a state snapshot keeps it)."""

    def __init__(self, known: dict[str, Instrument] | None = None, allow_generic: bool = False,
                 status: dict[str, str] | None = None) -> None:
        self.known = dict(known or {})
        self.allow_generic = allow_generic
        self.missing: set[str] = set()
        self.status = dict(status or {})          # symbol -> snapshot status, where known
        self._noted: set[str] = set()

    @classmethod
    def default(cls, allow_generic: bool = False) -> "InstrumentBook":
        """Every symbol of the bundled real snapshot, any status (see the module docstring)."""
        return cls(bundled_instruments(tradable_only=False), allow_generic, bundled_status())

    def get(self, symbol: str, price: float) -> Instrument | None:
        inst = self.known.get(symbol)
        status = self.status.get(symbol, "TRADING")
        if inst is not None and status != "TRADING" and symbol not in self._noted:
            self._noted.add(symbol)
            log.warning("%s is %s in the exchangeInfo snapshot (%s): its last listed filters are used",
                        symbol, status, BUNDLED.name)
        if inst is None and self.allow_generic:
            inst = generic_instrument(symbol, price)
            self.known[symbol] = inst
        if inst is None and symbol not in self.missing:
            self.missing.add(symbol)
            log.warning("no exchangeInfo for %s: not traded (skip reason unknown_symbol); "
                        "SMC_EXEC_GENERIC_INSTRUMENTS=1 models it generically (paper only)", symbol)
        return inst


class FilterViolation(ValueError):
    """An order that breaks an exchangeInfo filter and cannot be corrected; `filter` names it
    (e.g. MARKET_LOT_SIZE.maxQty), so the refusal says which rule the exchange would have applied."""

    def __init__(self, filter_name: str, detail: str) -> None:
        self.filter = filter_name
        super().__init__(f"filter {filter_name}: {detail}")


def conform(inst: Instrument, order_type: str, qty: float, price: float) -> tuple[float, float]:
    """(qty, price) corrected to the filters (quantity down to the step, trigger price to the nearest
    tick), or FilterViolation when a correction cannot make it valid. MARKET orders use MARKET_LOT_SIZE.
    Minimum notional is the sizing's business (entries below it are skipped; reduce-only is exempt)."""
    market = order_type == "MARKET"
    step = inst.market_step_size if market else inst.step_size
    lot = "MARKET_LOT_SIZE" if market else "LOT_SIZE"
    q = round_to(qty, step, "floor")
    min_q = inst.market_min_qty if market else inst.min_qty
    max_q = inst.market_max_qty if market else inst.max_qty
    if q <= 0 or q < min_q:
        raise FilterViolation(f"{lot}.minQty", f"quantity {qty} below {min_q} (step {step})")
    if max_q > 0 and q > max_q:
        raise FilterViolation(f"{lot}.maxQty", f"quantity {qty} above {max_q}")
    p = price
    if not market:
        p = round_to(price, inst.tick_size, "nearest")
        if inst.min_price > 0 and p < inst.min_price:
            raise FilterViolation("PRICE_FILTER.minPrice", f"price {price} below {inst.min_price}")
        if inst.max_price > 0 and p > inst.max_price:
            raise FilterViolation("PRICE_FILTER.maxPrice", f"price {price} above {inst.max_price}")
    return q, p
