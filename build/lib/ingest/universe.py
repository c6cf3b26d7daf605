"""The tradable universe: USDT-margined perpetuals in TRADING status, from GET /fapi/v1/exchangeInfo.

`parse_exchange_info` and `vet_universe` are pure. `Universe` is a small cache around an async fetch
function: `get()` re-fetches when older than `refresh_s` (1 h), `reconcile()` re-fetches on its own
cadence (`reconcile_s`, 15 min) and returns the diff (added / removed symbols) for the shard plan. An
empty, unparsable or implausibly shrunken answer is refused: the universe it had is kept.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from decimal import ROUND_DOWN, ROUND_HALF_UP, Decimal
from typing import Awaitable, Callable

import orjson


@dataclass(frozen=True, slots=True)
class SymbolSpec:
    """Trading rules of one symbol (also used by the executor for rounding)."""
    symbol: str
    base_asset: str
    quote_asset: str
    tick_size: float          # PRICE_FILTER.tickSize
    step_size: float          # LOT_SIZE.stepSize
    market_step_size: float   # MARKET_LOT_SIZE.stepSize
    min_notional: float       # MIN_NOTIONAL.notional
    min_qty: float = 0.0      # LOT_SIZE.minQty
    market_min_qty: float = 0.0
    min_price: float = 0.0    # PRICE_FILTER.minPrice
    price_precision: int = 8
    quantity_precision: int = 8
    status: str = "TRADING"
    contract_type: str = "PERPETUAL"

    def round_price(self, price: float) -> float:
        """Nearest multiple of tickSize (exact decimal arithmetic)."""
        return _to_step(price, self.tick_size, ROUND_HALF_UP)

    def floor_qty(self, qty: float, market: bool = False) -> float:
        """Quantity rounded DOWN to stepSize (MARKET_LOT_SIZE.stepSize for market orders)."""
        return _to_step(qty, self.market_step_size if market else self.step_size, ROUND_DOWN)

    def meets_min_notional(self, price: float, qty: float) -> bool:
        return price * qty >= self.min_notional


def _to_step(value: float, step: float, rounding) -> float:
    if step <= 0:
        return value
    s = Decimal(repr(step))
    return float((Decimal(repr(value)) / s).quantize(Decimal(1), rounding=rounding) * s)


def _filters(sym: dict) -> dict[str, dict]:
    return {f.get("filterType"): f for f in sym.get("filters", [])}


def parse_exchange_info(payload: dict | bytes | str, quote: str = "USDT",
                        contract_types: tuple[str, ...] = ("PERPETUAL",)) -> dict[str, SymbolSpec]:
    """Symbols with status TRADING, contractType PERPETUAL and quoteAsset USDT -> SymbolSpec."""
    data = payload if isinstance(payload, dict) else orjson.loads(payload)
    out: dict[str, SymbolSpec] = {}
    for s in data.get("symbols", []):
        if s.get("status") != "TRADING" or s.get("contractType") not in contract_types \
                or s.get("quoteAsset") != quote:
            continue
        f = _filters(s)
        price, lot = f.get("PRICE_FILTER", {}), f.get("LOT_SIZE", {})
        mlot = f.get("MARKET_LOT_SIZE", lot)
        notional = f.get("MIN_NOTIONAL", {})
        out[s["symbol"]] = SymbolSpec(
            symbol=s["symbol"], base_asset=s.get("baseAsset", ""), quote_asset=s["quoteAsset"],
            tick_size=float(price.get("tickSize", 0)), step_size=float(lot.get("stepSize", 0)),
            market_step_size=float(mlot.get("stepSize", lot.get("stepSize", 0))),
            min_notional=float(notional.get("notional", notional.get("minNotional", 0))),
            min_qty=float(lot.get("minQty", 0)), market_min_qty=float(mlot.get("minQty", 0)),
            min_price=float(price.get("minPrice", 0)),
            price_precision=int(s.get("pricePrecision", 8)), quantity_precision=int(s.get("quantityPrecision", 8)),
            status=s["status"], contract_type=s["contractType"])
    return out


@dataclass(frozen=True)
class UniverseDiff:
    added: tuple[str, ...]
    removed: tuple[str, ...]

    def __bool__(self) -> bool:
        return bool(self.added or self.removed)


def diff_symbols(old: set[str] | frozenset[str], new: set[str] | frozenset[str]) -> UniverseDiff:
    return UniverseDiff(tuple(sorted(set(new) - set(old))), tuple(sorted(set(old) - set(new))))


async def fetch_exchange_info(rest) -> dict:
    """GET /fapi/v1/exchangeInfo (weight 1) through the process's MarketRest (shared weight budget)."""
    from ingest.rest import EXCHANGE_INFO_WEIGHT
    return await rest.get_json("/fapi/v1/exchangeInfo", weight=EXCHANGE_INFO_WEIGHT, what="exchangeInfo")


class UniverseRefused(Exception):
    """An exchangeInfo answer that would empty or shrink the universe implausibly; the old one is kept."""


def vet_universe(old: frozenset[str], new: frozenset[str], max_drop_share: float) -> str | None:
    """Why `new` must not replace `old` (None: it may). Pure.

    An empty answer, or one that drops more than `max_drop_share` of the symbols at once, is far more
    likely a broken or partial payload than a market event; taking it would close the shards of the
    dropped symbols and lose their bars.
    """
    if not new:
        return "no TRADING USDT perpetual in the answer"
    if old:
        dropped = len(old - new)
        if dropped > max_drop_share * len(old):
            return f"it drops {dropped} of {len(old)} symbols at once (more than {max_drop_share:.0%})"
    return None


class Universe:
    """Cached universe that cannot vanish; intervals are parameters (tests use short ones).

    A failed fetch or a refused answer keeps the current universe and retries after an exponential
    backoff (`retry_base_s` doubling, capped at `reconcile_s`), never on every tick. A shrink beyond
    `max_drop_share` is accepted only when the very same symbol set comes back `confirmations` times
    in a row (a real mass delisting stays; a glitch does not).
    """

    def __init__(self, fetch: Callable[[], Awaitable[dict]], refresh_s: float = 3600.0, reconcile_s: float = 900.0,
                 clock: Callable[[], float] = time.monotonic, symbols_filter: Callable[[str], bool] | None = None,
                 max_drop_share: float = 0.2, confirmations: int = 3, retry_base_s: float = 5.0):
        self._fetch = fetch
        self.refresh_s = refresh_s
        self.reconcile_s = reconcile_s
        self.clock = clock
        self.filter = symbols_filter
        self.max_drop_share = max_drop_share
        self.confirmations = confirmations
        self.retry_base_s = retry_base_s
        self.specs: dict[str, SymbolSpec] = {}
        self.fetched_at: float | None = None
        self.next_attempt_at: float | None = None
        self.failures = 0                      # consecutive failed or refused fetches
        self.refused = 0                       # refused answers, in all
        self._suspect: tuple[frozenset[str], int] | None = None   # a refused shrink and how often seen

    @property
    def symbols(self) -> frozenset[str]:
        return frozenset(self.specs)

    def _failed(self) -> None:
        self.failures += 1
        delay = min(self.reconcile_s, self.retry_base_s * 2 ** (self.failures - 1))
        self.next_attempt_at = self.clock() + delay

    async def _load(self) -> UniverseDiff:
        """Fetch, vet and install a new universe; raises (and schedules the retry) when it cannot."""
        try:
            specs = parse_exchange_info(await self._fetch())
        except Exception:
            self._failed()
            raise
        if self.filter is not None:
            specs = {k: v for k, v in specs.items() if self.filter(k)}
        new = frozenset(specs)
        why = vet_universe(self.symbols, new, self.max_drop_share)
        if why is not None and new:
            seen = self._suspect[1] + 1 if self._suspect and self._suspect[0] == new else 1
            self._suspect = (new, seen)
            if seen >= self.confirmations:
                why = None                     # the same shrunken answer, again and again: it is real
        if why is not None:
            self.refused += 1
            self._failed()
            raise UniverseRefused(f"exchangeInfo refused, keeping {len(self.specs)} symbols: {why}")
        self._suspect = None
        d = diff_symbols(set(self.specs), set(specs))
        self.specs = specs
        self.failures = 0
        self.fetched_at = self.clock()
        self.next_attempt_at = self.fetched_at + self.reconcile_s
        return d

    async def get(self) -> dict[str, SymbolSpec]:
        if self.fetched_at is None or self.clock() - self.fetched_at >= self.refresh_s:
            await self._load()
        return self.specs

    def reconcile_due(self) -> bool:
        return self.next_attempt_at is None or self.clock() >= self.next_attempt_at

    async def reconcile(self) -> UniverseDiff:
        """Re-fetch and return which symbols were listed / delisted since the last accepted answer."""
        return await self._load()
