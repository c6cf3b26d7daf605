"""Funding as Binance USD-M settles it (pure): the real settlements a position crosses, and what it pays.

Rules (Binance "Introduction to Funding Rates"):
* at each settlement of its symbol, a position held at that instant pays
  `qty x mark price x funding rate` (funding > 0: longs pay shorts; < 0: shorts pay longs);
* settlements are at the exchange's own times: most symbols every 8 h, some every 4 h or 1 h, and
  a symbol can change interval (LAYERUSDT went from 4 h to 1 h on 2025-05-06), so the times come from
  the real history, never from a fixed grid;
* a position is held at instant T when opened_at <= T < closed_at (the engine charges at the first
  bar opening at or after T, after that bar's opening fills and before its stop/target range).

The history (`FundingHistory`, loaded by executor.funding_source from ingest/recorded/funding_*.parquet)
gives each settlement's time (Binance's fundingTime floored to the minute: the records carry up to
16 ms of processing jitter after the whole hour), rate and, at the 8-hourly settlements, the mark price
(the open of the 8h mark-price candle starting then). Where the mark price is not recorded (4 h / 1 h
settlements) the caller prices the position at the first bar open at or after the settlement: the
last price, whose basis to the mark is a few basis points, i.e. ~1e-8 of notional on a 0.01 % rate.

Outside the history's span for a symbol (live paper trading, files without funding records) there is
no real rate: the settlements are ESTIMATED on the symbol's last known interval (else 8 h on the UTC grid)
at a fallback rate (PaperConfig.funding_rate), and marked `estimated=True` so the caller counts and reports them.
"""
from __future__ import annotations

import bisect
from dataclasses import dataclass, field

HOUR = 3_600_000
MINUTE = 60_000


@dataclass(frozen=True, slots=True)
class Settlement:
    time: int                 # ms UTC, the settlement instant
    rate: float               # funding rate of that settlement (0.0001 = 0.01 %)
    mark_price: float = 0.0   # the mark price at the settlement; 0.0 = not recorded
    estimated: bool = False   # True: no real record covers this instant (fallback rate and grid)


def settlement_time(funding_time: int) -> int:
    """The settlement instant of a fundingTime record (its ms jitter removed)."""
    return int(funding_time) - int(funding_time) % MINUTE


def funding_payment(side: str, qty: float, mark_price: float, rate: float) -> float:
    """What the position PAYS at one settlement (negative = receives): side x qty x mark x rate."""
    if side not in ("long", "short"):
        raise ValueError(f"side must be long or short, not {side!r}")
    sign = 1.0 if side == "long" else -1.0
    return sign * float(qty) * float(mark_price) * float(rate)


@dataclass(frozen=True)
class FundingHistory:
    """Real settlements per symbol, sorted by time; `due` answers which ones a position crosses."""
    by_symbol: dict[str, tuple[Settlement, ...]] = field(default_factory=dict)
    _times: dict[str, list[int]] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for sym, rows in self.by_symbol.items():
            times = [s.time for s in rows]
            if any(b <= a for a, b in zip(times, times[1:])):
                raise ValueError(f"funding history of {sym}: settlement times must be strictly increasing")
            self._times[sym] = times

    @classmethod
    def from_rows(cls, rows) -> "FundingHistory":
        """From (symbol, funding_time, funding_rate, mark_price or None) rows, any order; the same
        settlement in two files (overlapping windows) must agree on the rate."""
        seen: dict[tuple[str, int], Settlement] = {}
        for sym, ftime, rate, mark in rows:
            if rate is None or rate != rate:
                raise ValueError(f"funding record {sym} fundingTime={ftime}: funding_rate={rate!r} is not a number")
            st = Settlement(settlement_time(ftime), float(rate), float(mark) if mark else 0.0)
            key = (str(sym), st.time)
            old = seen.get(key)
            if old is not None and old.rate != st.rate:
                raise ValueError(f"funding record {sym} fundingTime={ftime}: funding_rate {st.rate} differs from "
                                 f"{old.rate} in another file for the same settlement")
            if old is None or (not old.mark_price and st.mark_price):
                seen[key] = st
        by: dict[str, list[Settlement]] = {}
        for (sym, _), st in sorted(seen.items()):
            by.setdefault(sym, []).append(st)
        return cls({k: tuple(v) for k, v in by.items()})

    def interval_at(self, symbol: str, ts: int, fallback_hours: int = 8) -> int:
        """The symbol's settlement interval (ms) in force at `ts`: the gap between the two real
        settlements around it (the last gap past the end); `fallback_hours` without history."""
        times = self._times.get(symbol)
        if not times or len(times) < 2:
            return fallback_hours * HOUR
        i = min(max(bisect.bisect_right(times, ts), 1), len(times) - 1)
        return times[i] - times[i - 1]

    def span(self, symbol: str) -> tuple[int, int] | None:
        """[first settlement, last settlement + its interval): the instants the real history covers."""
        times = self._times.get(symbol)
        if not times:
            return None
        return times[0], times[-1] + self.interval_at(symbol, times[-1])

    def due(self, symbol: str, after: int, upto: int, fallback_rate: float = 0.0001,
            fallback_hours: int = 8) -> list[Settlement]:
        """Settlements with after < time <= upto, in time order: the real ones inside the history's
        span, estimated ones outside it (`fallback_rate`; the symbol's first/last known interval, or
        `fallback_hours` on the UTC grid for a symbol without history)."""
        if upto <= after:
            return []
        sp = self.span(symbol)
        if sp is None:
            return _estimated(after, upto, fallback_hours * HOUR, 0, fallback_rate)
        first, end = sp
        out: list[Settlement] = []
        if after < first - 1:      # before the history: on its first interval, ending before it
            out += _estimated(after, min(upto, first - 1), self.interval_at(symbol, first), first, fallback_rate)
        times = self._times[symbol]
        out += self.by_symbol[symbol][bisect.bisect_right(times, after):bisect.bisect_right(times, upto)]
        last = times[-1]
        if upto >= end:            # past the history: on its last interval from the last real settlement
            out += _estimated(max(after, last), upto, self.interval_at(symbol, last), last, fallback_rate)
        return out


def _estimated(after: int, upto: int, interval: int, anchor: int, rate: float) -> list[Settlement]:
    """Stamps anchor + k * interval in (after, upto] (the UTC grid when anchor = 0), at `rate`."""
    t = anchor + ((after - anchor) // interval + 1) * interval
    out = []
    while t <= upto:
        out.append(Settlement(t, rate, 0.0, True))
        t += interval
    return out
