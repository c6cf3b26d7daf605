"""One REST client for every market-data request of the process, under one request-weight budget.

Binance counts request weight per IP: exchangeInfo, klines and anything else the ingest asks for
share the 2,400 weight/minute limit, and a client that keeps sending after a 429 is banned with a 418
(2 minutes, escalating to 3 days), which would also stop the klines backfill from the same IP. So:

  * every request books its weight in the shared `WeightBudget` before it is sent, and the budget
    follows the server's count (X-MBX-USED-WEIGHT-1M) when that is higher (other processes on the IP);
  * a 429 or 418 blocks ALL requests of the process until its Retry-After has passed (418 without a
    Retry-After: 120 s, Binance's shortest ban);
  * 5xx and connection errors back off exponentially (full jitter) and are retried a bounded number
    of times, then `RestError` is raised to the caller, which decides (universe: keep what it has and
    retry later; backfill: retry the job, then give the bars up and count them).
  * other 4xx answers are the request's fault: `RestError` at once, with Binance's code and message.
"""
from __future__ import annotations

import asyncio
import logging
import random
import time
from dataclasses import dataclass
from typing import Callable

import aiohttp
import orjson

from ingest.backfill import WeightBudget

log = logging.getLogger("smc.ingest.rest")

EXCHANGE_INFO_WEIGHT = 1     # GET /fapi/v1/exchangeInfo
BAN_WITHOUT_RETRY_AFTER_S = 120.0


class RestError(Exception):
    """A market-data request that did not succeed; `status` is the HTTP status (0: no answer)."""

    def __init__(self, what: str, status: int, detail: str):
        super().__init__(f"{what}: {detail}")
        self.status = status


@dataclass
class RestStats:
    requests: int = 0
    weight: int = 0
    throttled: int = 0        # times a request waited for the budget (or a ban) before it was sent
    bans: int = 0             # 429 / 418 answers
    server_errors: int = 0    # 5xx answers and connection failures
    bars: int = 0             # klines returned to callers (RestKlines)
    rejected: int = 0         # kline rows that failed validation (RestKlines)


def retry_after_s(status: int, header: str | None) -> float:
    """Seconds to stop every request after a 429/418, from its Retry-After header."""
    try:
        return max(0.0, float(header)) if header not in (None, "") else _default_block(status)
    except ValueError:
        return _default_block(status)


def _default_block(status: int) -> float:
    return BAN_WITHOUT_RETRY_AFTER_S if status == 418 else 1.0


def full_jitter(attempt: int, base: float, cap: float, rng: random.Random) -> float:
    """uniform(0, min(cap, base * 2**attempt)): AWS's "full jitter" backoff."""
    return rng.uniform(0.0, min(cap, base * 2 ** attempt))


class MarketRest:
    """GET JSON from {rest_url}{path} under the process's weight budget (aiohttp session)."""

    def __init__(self, session, rest_url: str, budget: WeightBudget | None = None,
                 clock: Callable[[], float] = time.monotonic, max_attempts: int = 5,
                 backoff_base_s: float = 0.2, backoff_cap_s: float = 10.0, rng: random.Random | None = None):
        self.session = session
        self.rest_url = rest_url.rstrip("/")
        self.budget = budget or WeightBudget()
        self.clock = clock
        self.max_attempts = max_attempts
        self.backoff = (backoff_base_s, backoff_cap_s)
        self.rng = rng or random.Random()
        self.stats = RestStats()
        self._lock = asyncio.Lock()

    async def _acquire(self, weight: int) -> None:
        while True:
            async with self._lock:
                wait = self.budget.reserve(weight, self.clock())
            if wait == 0.0:
                return
            self.stats.throttled += 1
            await asyncio.sleep(min(wait, 5.0))

    async def get_json(self, path: str, params: dict | None = None, weight: int = 1, what: str | None = None):
        what = what or path
        last = "no attempt"
        for attempt in range(self.max_attempts):
            await self._acquire(weight)
            self.stats.requests += 1
            self.stats.weight += weight
            try:
                async with self.session.get(f"{self.rest_url}{path}", params=params) as resp:
                    self.budget.observe_header(resp.headers.get("X-MBX-USED-WEIGHT-1M"), self.clock())
                    body = await resp.read()
                    status = resp.status
                    retry_after = resp.headers.get("Retry-After")
            except asyncio.CancelledError:
                raise
            except (aiohttp.ClientError, OSError, asyncio.TimeoutError) as exc:
                self.stats.server_errors += 1
                last = f"no answer ({type(exc).__name__}: {exc})"
                await self._sleep_backoff(what, attempt, last)
                continue
            if status in (429, 418):
                self.stats.bans += 1
                block = retry_after_s(status, retry_after)
                self.budget.retry_after(block, self.clock())
                log.warning("%s: HTTP %d, every market-data request paused for %.1f s (Retry-After %s)",
                            what, status, block, retry_after)
                last = f"HTTP {status}"
                continue
            if status >= 500:
                self.stats.server_errors += 1
                last = f"HTTP {status} {_binance_msg(body)}"
                await self._sleep_backoff(what, attempt, last)
                continue
            if status >= 400:
                raise RestError(what, status, f"HTTP {status} {_binance_msg(body)}")
            try:
                return orjson.loads(body)
            except orjson.JSONDecodeError as exc:
                raise RestError(what, status, f"unparsable JSON body ({exc}): {body[:80]!r}") from None
        raise RestError(what, 0, f"gave up after {self.max_attempts} attempts (last: {last})")

    async def _sleep_backoff(self, what: str, attempt: int, reason: str) -> None:
        if attempt + 1 >= self.max_attempts:
            return
        delay = full_jitter(attempt, *self.backoff, self.rng)
        log.warning("%s: %s; retry in %.2f s", what, reason, delay)
        await asyncio.sleep(delay)


def _binance_msg(body: bytes) -> str:
    try:
        obj = orjson.loads(body)
        return f"code {obj.get('code')}: {obj.get('msg')}"
    except Exception:
        return repr(body[:80])
