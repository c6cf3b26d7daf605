"""The live ingest service: universe -> shards -> WebSocket connections -> IngestCore -> Kafka,
with gap backfill over REST and a reconcile loop. Thin async shell around the pure parts.

    svc = LiveIngest(settings)                 # or with clock_ms=..., start_ms=..., short intervals in tests
    await svc.run(stop_event)                  # returns after stop_event is set; flushes the producer

Stats: `svc.core.stats` (received, produced, duplicates, rejected, backfilled, ...), `svc.rest.stats`
(requests, weight), per connection `svc.connections[shard].stats`; `svc.snapshot()` has them all.
"""
from __future__ import annotations

import asyncio
import logging
import time
from typing import Callable, Iterable

from ingest.backfill import RestKlines, WeightBudget, last_closed_open
from ingest.pipeline import BackfillJob, IngestCore
from ingest.shards import plan_shards, rebalance, stream_url
from ingest.universe import Universe, fetch_exchange_info
from ingest.ws import Backoff, ConnectLimiter, ShardConnection
from schemas import Kline, encode_kline, interval_ms

log = logging.getLogger("smc.ingest.service")


def _now_ms() -> int:
    return int(time.time() * 1000)


class LiveIngest:
    def __init__(self, settings, *, interval: str | None = None, clock_ms: Callable[[], int] = _now_ms,
                 start_ms: int | None = None, symbols: Iterable[str] | None = None, per_shard: int | None = None,
                 grace_ms: int = 10_000, tick_s: float = 1.0, rotate_after_s: float = 23.5 * 3600,
                 connect_interval_s: float = 1.0, refresh_s: float = 3600.0, reconcile_s: float = 900.0,
                 backoff_base_s: float = 0.5, backoff_cap_s: float = 30.0, weight_limit: int = 2400,
                 backfill_concurrency: int = 8, backfill_attempts: int = 5, producer=None):
        self.settings = settings
        self.interval = interval or settings.interval
        self.step = interval_ms(self.interval)
        self.clock_ms = clock_ms
        self.start_ms = start_ms
        self.only = set(symbols) if symbols is not None else None
        self.per_shard = per_shard or settings.symbols_per_shard
        self.grace_ms = grace_ms
        self.tick_s = tick_s
        self.rotate_after_s = rotate_after_s
        self.limiter = ConnectLimiter(connect_interval_s)
        self.refresh_s, self.reconcile_s = refresh_s, reconcile_s
        self.backoff = (backoff_base_s, backoff_cap_s)
        self.budget = WeightBudget(weight_limit)
        self.backfill_attempts = backfill_attempts
        self._sem_n = backfill_concurrency
        self._producer = producer
        self.core: IngestCore | None = None
        self.rest: RestKlines | None = None
        self.universe: Universe | None = None
        self.plan: dict[int, frozenset[str]] = {}
        self.connections: dict[int, ShardConnection] = {}
        self._conn_tasks: dict[int, asyncio.Task] = {}
        self._jobs: set[asyncio.Task] = set()
        self.delivery_errors = 0
        self.stop_event: asyncio.Event | None = None

    # ---- Kafka --------------------------------------------------------------------------------------
    def _emit(self, k: Kline) -> None:
        value = encode_kline(k)
        while True:
            try:
                self.producer.produce(self._topic, key=k.symbol.encode(), value=value, on_delivery=self._delivered)
                return
            except BufferError:
                self.producer.poll(0.05)

    def _delivered(self, err, _msg) -> None:
        if err is not None:
            self.delivery_errors += 1
            log.error("klines delivery failed: %s", err)

    def _reject(self, stage: str, reason: str, raw, key) -> None:
        from infra.kafka_io import send_reject
        try:
            send_reject(self.producer, self.settings, stage, reason, raw, key)
        except BufferError:
            self.producer.poll(0.1)
            send_reject(self.producer, self.settings, stage, reason, raw, key)

    # ---- backfill jobs ------------------------------------------------------------------------------
    def _schedule(self, jobs: list[BackfillJob]) -> None:
        for job in jobs:
            t = asyncio.ensure_future(self._run_job(job))
            self._jobs.add(t)
            t.add_done_callback(self._jobs.discard)

    async def _run_job(self, job: BackfillJob) -> None:
        for attempt in range(self.backfill_attempts):
            try:
                async with self._sem:
                    klines = await self.rest.fetch(job.symbol, self.interval, job.first, job.last, self.clock_ms())
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                give_up = attempt + 1 >= self.backfill_attempts
                log.warning("backfill %s %d..%d failed (%s)%s", job.symbol, job.first, job.last, exc,
                            "; giving up" if give_up else "; retrying")
                again = self.core.backfill_failed(job, give_up)
                self._schedule([j for j in again if j != job])
                if give_up:
                    return
                await asyncio.sleep(min(0.2 * 2 ** attempt, 5.0))
                continue
            self._schedule(self.core.backfill_done(job, klines))
            return

    # ---- connections ----------------------------------------------------------------------------------
    def _url_for(self, symbols: frozenset) -> str:
        return stream_url(self.settings.binance_ws_url, symbols, self.interval)

    def _on_message(self, raw, shard_id: int) -> None:
        self._schedule(self.core.on_raw(raw))

    def _on_connected(self, shard_id: int, reconnected: bool) -> None:
        conn = self.connections.get(shard_id)
        if conn is not None:
            self._schedule(self.core.on_reconnect(conn.symbols))

    def _open_shard(self, sid: int, symbols: frozenset) -> None:
        conn = ShardConnection(sid, symbols, self._url_for, self._on_message, self._on_connected, self.limiter,
                               self.rotate_after_s, Backoff(*self.backoff))
        self.connections[sid] = conn
        self._conn_tasks[sid] = asyncio.ensure_future(conn.run())

    async def _reconcile(self) -> None:
        diff = await self.universe.reconcile()
        symbols = self._filter(self.universe.symbols)
        if not diff and set(symbols) == set().union(*self.plan.values()):
            return
        gone = set().union(*self.plan.values()) - set(symbols)
        self.core.remove_symbols(gone)
        new_syms = set(symbols) - set().union(*self.plan.values())
        self.core.add_symbols(new_syms, last_closed_open(self.clock_ms(), self.step) + self.step)
        self.plan, sdiff = rebalance(self.plan, symbols, self.per_shard)
        log.info("reconcile: +%d -%d symbols; shards opened %s closed %s changed %s", len(new_syms), len(gone),
                 sdiff.opened, sdiff.closed, sdiff.changed)
        for sid in sdiff.closed:
            self.connections.pop(sid).stop()
        for sid in sdiff.changed:
            self.connections[sid].set_symbols(self.plan[sid])
        for sid in sdiff.opened:
            self._open_shard(sid, self.plan[sid])

    def _filter(self, symbols) -> list[str]:
        return sorted(s for s in symbols if self.only is None or s in self.only)

    # ---- main ----------------------------------------------------------------------------------------
    async def run(self, stop: asyncio.Event | None = None) -> None:
        import aiohttp
        from infra.kafka_io import ensure_topics, producer as make_producer, topic
        self.stop_event = stop = stop or asyncio.Event()
        self._sem = asyncio.Semaphore(self._sem_n)
        ensure_topics(self.settings, ["klines", "dlq"])
        self._topic = topic(self.settings, "klines")
        self.producer = self._producer or make_producer(self.settings)
        self.core = IngestCore(self.interval, self._emit, self._reject, self.clock_ms, self.grace_ms)
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
            rest_url = self.settings.binance_rest_url
            self.universe = Universe(lambda: fetch_exchange_info(session, rest_url), self.refresh_s, self.reconcile_s)
            self.rest = RestKlines(session, rest_url, self.budget,
                                   on_reject=lambda reason, raw, key: self._reject("ingest.backfill", reason, raw, key))
            symbols = self._filter((await self.universe.get()).keys())
            start = self.start_ms if self.start_ms is not None else last_closed_open(self.clock_ms(), self.step)
            self.core.add_symbols(symbols, start)
            self.plan = plan_shards(symbols, self.per_shard)
            log.info("live ingest: %d symbols on %d shards (%s)", len(symbols), len(self.plan), self.interval)
            for sid, syms in self.plan.items():
                self._open_shard(sid, syms)
            try:
                while not stop.is_set():
                    try:
                        await asyncio.wait_for(stop.wait(), self.tick_s)
                    except asyncio.TimeoutError:
                        pass
                    self.producer.poll(0)
                    self._schedule(self.core.on_tick())
                    if self.universe.reconcile_due():
                        try:
                            await self._reconcile()
                        except Exception as exc:
                            log.warning("reconcile failed: %s", exc)
            finally:
                for conn in self.connections.values():
                    conn.stop()
                await asyncio.gather(*self._conn_tasks.values(), return_exceptions=True)
                for t in list(self._jobs):
                    t.cancel()
                await asyncio.gather(*self._jobs, return_exceptions=True)
                self.producer.flush(30)

    def snapshot(self) -> dict:
        s = self.core.stats if self.core else None
        return {
            "ingest": None if s is None else dict(s.__dict__),
            "rest": None if self.rest is None else dict(self.rest.stats.__dict__),
            "connections": {sid: dict(c.stats.__dict__) for sid, c in self.connections.items()},
            "delivery_errors": self.delivery_errors,
        }
