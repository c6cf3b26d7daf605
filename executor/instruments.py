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
MIN_NOTIONAL.notional, PERCENT_PRICE.multiplierUp/multiplierDown). All rounding goes through Decimal
so 0.1 + 0.2 never leaks into a price.

PERCENT_PRICE on USD-M (https://developers.binance.com/docs/derivatives/usds-margined-futures/common-definition,
"Filters" > PERCENT_PRICE): "valid range for a price based on the mark price ... the following must be
true for price: BUY: price <= markPrice * multiplierUp; SELL: price >= markPrice * multiplierDown".
So the band is one-sided per side (a BUY has no floor, a SELL no ceiling: only the aggressive side is
bounded), and it constrains the limit `price` only: the same page writes "price/stopPrice" where a
rule covers trigger prices (PRICE_FILTER) and plain "price" here. (Third-party copies of the futures
error-code table, not checked against Binance's own page, agree: -4016 PRICE_HIGHER_THAN_MULTIPLIER_UP
and -4024 PRICE_LOWER_THAN_MULTIPLIER_DOWN have no STOP_PRICE twin, unlike -4006/-4007 for
PRICE_FILTER.) STOP_MARKET / TAKE_PROFIT_MARKET triggers are therefore not held to the band here, and
MARKET orders have no price to check: Binance applies the band to a MARKET order's fills at
execution (-4131 "The counterparty's best price does not meet the PERCENT_PRICE filter limit",
answered on https://dev.binance.vision/t/got-the-counterpartys-best-price-does-not-meet-the-percent-price-filter-limit/10962),
which depends on the book and cannot be decided before sending. multiplierDecimal is only the
multipliers' precision (same answer): not used. The check takes the engine's latest price for the
symbol as the mark (the contract's last close, not Binance's index-based mark price): near the edge
the exchange may still refuse, and that refusal comes back as a rejected order like any other.
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
    percent_up: float = 0.0         # PERCENT_PRICE.multiplierUp / multiplierDown (0 = unknown: no band)
    percent_down: float = 0.0

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
    info: dict = payload if isinstance(payload, dict) else orjson.loads(payload)
    out: dict[str, Instrument] = {}
    for sym in info.get("symbols", []):
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
        pp = f.get("PERCENT_PRICE", {})
        out[sym["symbol"]] = Instrument(
            symbol=sym["symbol"], tick_size=tick, step_size=float(lot["stepSize"]),
            market_step_size=float(mlot.get("stepSize", lot["stepSize"])), min_notional=min_notional,
            min_qty=float(lot.get("minQty", 0.0)), market_min_qty=float(mlot.get("minQty", lot.get("minQty", 0.0))),
            max_qty=float(lot.get("maxQty", 0.0)), market_max_qty=float(mlot.get("maxQty", lot.get("maxQty", 0.0))),
            min_price=float(pf.get("minPrice", 0.0)), max_price=float(pf.get("maxPrice", 0.0)),
            percent_up=float(pp.get("multiplierUp", 0.0)), percent_down=float(pp.get("multiplierDown", 0.0)))
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


LIMIT_PRICED = ("LIMIT",)     # order types whose `price` is a limit price (the rest: none, or a trigger)


def percent_price_band(inst: Instrument, side: str, mark: float) -> tuple[float, float]:
    """The prices PERCENT_PRICE lets a `side` (BUY | SELL) limit order have at `mark`, as an inclusive
    (low, high) on the tick grid: BUY (0, floor_tick(mark * multiplierUp)), SELL
    (ceil_tick(mark * multiplierDown), inf); (0, inf) when the filter or the mark is unknown."""
    if side not in ("BUY", "SELL"):
        raise ValueError(f"side must be BUY or SELL, not {side!r}")
    if not (mark > 0 and math.isfinite(mark)):
        return 0.0, math.inf
    if side == "BUY":
        if inst.percent_up <= 0:
            return 0.0, math.inf
        return 0.0, _tick_edge(_dec(mark) * _dec(inst.percent_up), inst.tick_size, ROUND_FLOOR)
    if inst.percent_down <= 0:
        return 0.0, math.inf
    return _tick_edge(_dec(mark) * _dec(inst.percent_down), inst.tick_size, ROUND_CEILING), math.inf


def _tick_edge(limit: Decimal, tick: float, rounding: str) -> float:
    # the last tick inside the band (exact in decimal: mark * multiplier is not itself on the grid)
    if tick <= 0:
        return float(limit)
    t = _dec(tick)
    return float((limit / t).quantize(Decimal(1), rounding=rounding) * t)


def conform(inst: Instrument, order_type: str, qty: float, price: float, *, side: str = "",
            reduce_only: bool = False, mark: float | None = None) -> tuple[float, float]:
    """(qty, price) corrected to the filters (quantity down to the step, price / trigger price to the
    nearest tick), or FilterViolation when a correction cannot make it valid. MARKET orders use
    MARKET_LOT_SIZE. Minimum notional is the sizing's business (entries below it are skipped;
    reduce-only is exempt).

    PERCENT_PRICE (limit prices only, see the module docstring) is checked when a `mark` is given: an
    entry outside the band is refused; a reduce-only price is moved to the band's edge instead, since
    an exit must go through and the edge is still on its aggressive side of the market (a SELL limit
    below mark * multiplierDown sells at the bid either way), so the exit keeps its meaning."""
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
        if order_type in LIMIT_PRICED and mark is not None:
            p = _within_percent_price(inst, side, p, mark, reduce_only)
        if inst.min_price > 0 and p < inst.min_price:
            raise FilterViolation("PRICE_FILTER.minPrice", f"price {price} below {inst.min_price}")
        if inst.max_price > 0 and p > inst.max_price:
            raise FilterViolation("PRICE_FILTER.maxPrice", f"price {price} above {inst.max_price}")
    return q, p


def _within_percent_price(inst: Instrument, side: str, price: float, mark: float, reduce_only: bool) -> float:
    low, high = percent_price_band(inst, side, mark)
    if low <= price <= high:
        return price
    if reduce_only:
        return min(max(price, low), high)
    which, mult = ("multiplierUp", inst.percent_up) if side == "BUY" else ("multiplierDown", inst.percent_down)
    raise FilterViolation(f"PERCENT_PRICE.{which}",
                          f"{side} price {price} outside the band [{low}, {high}] at mark {mark} "
                          f"(x {which} {mult})")
