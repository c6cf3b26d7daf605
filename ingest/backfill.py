"""Gap detection (pure) and REST backfill under Binance's request-weight budget.

Pure parts:
  * `last_closed_open(now, step)`: open_time of the newest bar that is closed at `now` (close_time < now).
  * `missing_range(last_open, upto_open, step)`: the bars strictly after `last_open` up to `upto_open`.
  * `GapTracker`: last produced open_time per symbol; says what is missing when a bar arrives with a
    jump, after a reconnect, on start (`start_ms`), or when a symbol is silent past a grace period.
  * `kline_weight(limit)` / `plan_requests(...)`: weight 1 (<100), 2 (<500), 5 (<=1000), 10 (>1000);
    each request asks for exactly the bars it needs (limit <= 1500), so a 1-bar gap costs weight 1.
  * `WeightBudget`: token bucket of 2400 weight / 60 s that also follows the server's view
    (X-MBX-USED-WEIGHT-1M) and 429/418 Retry-After bans.
Shell: `RestKlines(MarketRest).fetch(symbol, interval, start, end, now)` -> closed Klines marked source="backfill"
(the HTTP, budget, ban and retry rules are ingest.rest's, shared with exchangeInfo).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import orjson

from schemas import Kline, SchemaError, interval_ms
from schemas.kline import validate_kline

MAX_LIMIT = 1500
WEIGHT_PER_MINUTE = 2400


def last_closed_open(now_ms: int, step: int) -> int:
    """open_time of the most recent bar with close_time < now (close_time = open_time + step - 1)."""
    return ((now_ms - step) // step) * step


def missing_range(last_open: int | None, upto_open: int, step: int) -> tuple[int, int] | None:
    """(first, last) open_times strictly after last_open up to upto_open inclusive, or None."""
    if last_open is None:
        return None
    first = last_open + step
    if upto_open < first:
        return None
    return (first, upto_open)


def range_len(r: tuple[int, int] | None, step: int) -> int:
    return 0 if r is None else (r[1] - r[0]) // step + 1


@dataclass
class GapTracker:
    """Last produced bar per symbol -> what is missing. Pure state machine (no I/O, no clock)."""
    step: int
    grace_ms: int = 10_000
    last: dict[str, int] = field(default_factory=dict)

    def last_of(self, symbol: str) -> int | None:
        return self.last.get(symbol)

    def continue_after(self, symbol: str, open_time: int) -> None:
        """Guarantee every bar after the one opening at open_time (set, not maxed: the caller decides)."""
        self.last[symbol] = open_time

    def retire(self, symbol: str) -> int | None:
        """Stop tracking the symbol; its last produced bar, for when it returns."""
        return self.last.pop(symbol, None)

    def on_bar(self, symbol: str, open_time: int) -> tuple[int, int] | None:
        """The gap before this arriving bar (None if contiguous or symbol not yet tracked)."""
        return missing_range(self.last.get(symbol), open_time - self.step, self.step)

    def produced(self, symbol: str, open_time: int) -> None:
        if open_time > self.last.get(symbol, -1):
            self.last[symbol] = open_time

    def due(self, symbols, now_ms: int, grace_ms: int | None = None) -> dict[str, tuple[int, int]]:
        """Bars closed more than grace ago and still missing (reconnect: grace 0; silence: grace_ms)."""
        g = self.grace_ms if grace_ms is None else grace_ms
        upto = last_closed_open(now_ms - g, self.step)
        out = {}
        for s in symbols:
            r = missing_range(self.last.get(s), upto, self.step)
            if r is not None:
                out[s] = r
        return out


def kline_weight(limit: int) -> int:
    if limit < 1 or limit > MAX_LIMIT:
        raise ValueError(f"klines limit must be in 1..{MAX_LIMIT}, got {limit}")
    if limit < 100:
        return 1
    if limit < 500:
        return 2
    if limit <= 1000:
        return 5
    return 10


def plan_requests(first_open: int, last_open: int, step: int, max_limit: int = MAX_LIMIT) -> list[tuple[int, int, int]]:
    """(startTime, endTime, limit) requests covering [first_open, last_open], each limit = bars needed."""
    out = []
    t = first_open
    while t <= last_open:
        n = min(max_limit, (last_open - t) // step + 1)
        end = t + (n - 1) * step
        out.append((t, end + step - 1, n))
        t = end + step
    return out


class WeightBudget:
    """Token bucket over a sliding minute; `reserve(w, now)` returns how long to wait before sending.

    The server's count (X-MBX-USED-WEIGHT-1M) wins when it is higher than ours (other processes on
    the same IP); a 429/418 Retry-After blocks everything until it expires.
    """

    def __init__(self, limit: int = WEIGHT_PER_MINUTE, window_s: float = 60.0, safety: float = 0.9):
        self.limit = limit
        self.window = window_s
        self.cap = max(1, int(limit * safety))
        self.used: list[tuple[float, int]] = []
        self.server_used = 0
        self.server_at = -1e18
        self.blocked_until = 0.0

    def _used(self, now: float) -> int:
        cut = now - self.window
        while self.used and self.used[0][0] <= cut:
            self.used.pop(0)
        ours = sum(w for _, w in self.used)
        server = self.server_used if now - self.server_at < self.window else 0
        return max(ours, server)

    def delay(self, weight: int, now: float) -> float:
        if now < self.blocked_until:
            return self.blocked_until - now
        if weight > self.cap:
            raise ValueError(f"weight {weight} above the budget {self.cap}")
        if self._used(now) + weight <= self.cap:
            return 0.0
        # wait until enough of our own reservations leave the window (or the server window rolls)
        need = self._used(now) + weight - self.cap
        freed = 0
        for ts, w in self.used:
            freed += w
            if freed >= need:
                return max(0.001, ts + self.window - now)
        return max(0.001, self.server_at + self.window - now) if self.server_used else self.window

    def reserve(self, weight: int, now: float) -> float:
        """0.0 and the weight is booked, or the seconds to wait (nothing booked)."""
        d = self.delay(weight, now)
        if d == 0.0:
            self.used.append((now, weight))
        return d

    def observe_header(self, used_weight: int | str | None, now: float) -> None:
        if used_weight is None:
            return
        self.server_used = int(used_weight)
        self.server_at = now

    def retry_after(self, seconds: float, now: float) -> None:
        self.blocked_until = max(self.blocked_until, now + max(0.0, float(seconds)))


def parse_rest_kline(row: list, symbol: str, interval: str, received_at: int) -> Kline:
    """One row of GET /fapi/v1/klines (12-element array, numbers as strings) -> validated Kline."""
    if not isinstance(row, list) or len(row) < 11:
        raise SchemaError("Kline", "<payload>", row, "expected a 12-element kline array")
    try:
        k = Kline(symbol, interval, int(row[0]), int(row[6]), float(row[1]), float(row[2]), float(row[3]),
                  float(row[4]), float(row[5]), float(row[7]), int(row[8]), float(row[9]), float(row[10]),
                  "backfill", received_at)
    except (TypeError, ValueError) as exc:
        raise SchemaError("Kline", "<payload>", row, f"unreadable kline array ({exc})") from None
    validate_kline(k)
    return k


class RestKlines:
    """GET /fapi/v1/klines through the process's `MarketRest`; returns only closed bars (close_time < now)."""

    def __init__(self, rest, on_reject: Callable[[str, bytes, str], None] | None = None):
        self.rest = rest
        self.stats = rest.stats
        self.on_reject = on_reject

    async def fetch(self, symbol: str, interval: str, first_open: int, last_open: int, now_ms: int) -> list[Kline]:
        step = interval_ms(interval)
        out: list[Kline] = []
        for start, end, limit in plan_requests(first_open, last_open, step):
            params = {"symbol": symbol, "interval": interval, "startTime": str(start), "endTime": str(end),
                      "limit": str(limit)}
            rows = await self.rest.get_json("/fapi/v1/klines", params, kline_weight(limit),
                                            what=f"klines {symbol} {start}..{end}")
            for row in rows:
                try:
                    k = parse_rest_kline(row, symbol, interval, now_ms)
                except SchemaError as exc:
                    self.stats.rejected += 1
                    if self.on_reject:
                        self.on_reject(str(exc), orjson.dumps(row), symbol)
                    continue
                if k.close_time < now_ms and first_open <= k.open_time <= last_open:
                    out.append(k)
        self.stats.bars += len(out)
        return out
