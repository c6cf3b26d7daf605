"""The live ingest service: universe -> shards -> WebSocket connections -> IngestCore -> Kafka,
with gap backfill over REST and a reconcile loop. Thin async shell around the pure parts.

    svc = LiveIngest(settings)                 # or with clock_ms=..., start_ms=..., short intervals in tests
    await svc.run(stop_event)                  # returns after stop_event is set; flushes the producer

Stats: `svc.core.stats` (received, produced, duplicates, rejected, backfilled, ...), `svc.rest.stats`
(requests, weight, bans), per connection `svc.connections[shard].stats`; `svc.snapshot()` has them all.

Start: the universe (retried with backoff until exchangeInfo answers), then the newest bar of each
symbol from the `klines` topic (ingest.topic_memory): every bar after it is backfilled, at most
`max_backfill_s` back (older holes are logged as skipped), so a restart after any downtime gives each
missing bar exactly once. `start_ms` (`--since`) only matters for symbols the topic has no bar of, and
as a floor: bars before it are not wanted.

Fail loud: a kline the broker did not acknowledge (librdkafka gave up after message.timeout.ms, i.e.
an outage longer than that), or records still unsent at shutdown, end `run()` with `IngestFatal`; the
supervisor restarts the process, which resumes from what the topic holds.
"""
from __future__ import annotations

import asyncio
import logging
import time
from typing import Callable, Iterable

from ingest.backfill import RestKlines, WeightBudget, last_closed_open
from ingest.pipeline import BackfillJob, IngestCore
from ingest.rest import MarketRest
from ingest.shards import plan_shards, rebalance, stream_url
from ingest.topic_memory import read_last_bars
from ingest.universe import Universe, UniverseRefused, fetch_exchange_info
from ingest.ws import Backoff, ConnectLimiter, ShardConnection
from infra.probes import Heartbeat
from schemas import Kline, encode_kline, interval_ms

log = logging.getLogger("smc.ingest.service")


def _now_ms() -> int:
    return int(time.time() * 1000)


class IngestFatal(RuntimeError):
    """A fault the ingest cannot handle in-process (klines not acknowledged by the broker)."""


class LiveIngest:
    def __init__(self, settings, *, interval: str | None = None, clock_ms: Callable[[], int] = _now_ms,
                 start_ms: int | None = None, symbols: Iterable[str] | None = None, per_shard: int | None = None,
                 grace_ms: int = 10_000, tick_s: float = 1.0, rotate_after_s: float = 23.5 * 3600,
                 connect_interval_s: float = 1.0, refresh_s: float = 3600.0, reconcile_s: float = 900.0,
                 backoff_base_s: float = 0.5, backoff_cap_s: float = 30.0, weight_limit: int = 2400,
                 backfill_concurrency: int = 8, backfill_attempts: int = 5, producer=None,
                 max_backfill_s: float = 3 * 24 * 3600.0, universe_max_drop_share: float = 0.2,
                 universe_retry_s: float = 5.0, universe_confirmations: int = 3, rest_backoff_base_s: float = 0.2):
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
        self.max_backfill_ms = int(max_backfill_s * 1000)
        self.universe_max_drop_share = universe_max_drop_share
        self.universe_retry_s = universe_retry_s
        self.universe_confirmations = universe_confirmations
        self.rest_backoff_base_s = rest_backoff_base_s
        self.market: MarketRest | None = None
        self.fatal: str | None = None
        self.skipped_on_start: dict[str, int] = {}
        self._reconcile_task: asyncio.Task | None = None
        self.core: IngestCore | None = None
        self.rest: RestKlines | None = None
        self.universe: Universe | None = None
        self.plan: dict[int, frozenset[str]] = {}
        self.connections: dict[int, ShardConnection] = {}
        self._conn_tasks: dict[int, asyncio.Task] = {}
        self._jobs: set[asyncio.Task] = set()
        self.delivery_errors = 0
        self.stop_event: asyncio.Event | None = None
        self.heartbeat = Heartbeat()     # beaten by the tick loop: /health and /ready (ingest.metrics)

    # ---- Kafka --------------------------------------------------------------------------------------
    def _emit(self, k: Kline) -> None:
        value = encode_kline(k)
        self._send_waiting(lambda: self.producer.produce(self._topic, key=k.symbol.encode(), value=value,
                                                         on_delivery=self._delivered))

    def _send_waiting(self, send: Callable[[], None]) -> None:
        """send(); while the producer's local queue is full (the broker is slow or away), wait and say so:
        nothing is dropped."""
        stalled_at = None
        while True:
            try:
                send()
                if stalled_at is not None:
                    log.info("producer queue has room again after %.1f s", time.monotonic() - stalled_at)
                return
            except BufferError:
                if stalled_at is None:
                    stalled_at = time.monotonic()
                    log.warning("producer queue full (%d records waiting for the broker); holding klines",
                                len(self.producer))
                self.producer.poll(0.05)

    def _delivered(self, err, msg) -> None:
        if err is not None:
            self.delivery_errors += 1
            if self.fatal is None:
                self.fatal = f"a kline was not acknowledged by the broker ({err}); key {msg.key()!r}"
                log.error("%s: stopping, a restart resumes from the klines topic", self.fatal)
                if self.stop_event is not None:
                    self.stop_event.set()

    def _reject(self, stage: str, reason: str, raw, key) -> None:
        from infra.kafka_io import send_reject
        self._send_waiting(lambda: send_reject(self.producer, self.settings, stage, reason, raw, key))

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
        try:
            await self.universe.reconcile()
        except UniverseRefused as exc:
            log.warning("%s; next try in %.0f s", exc, self.universe.next_attempt_at - self.universe.clock())
            return
        except Exception as exc:
            log.warning("exchangeInfo failed (%s); keeping %d symbols, next try in %.0f s", exc,
                        len(self.universe.specs), self.universe.next_attempt_at - self.universe.clock())
            return
        symbols = self._filter(self.universe.symbols)
        if set(symbols) == set().union(*self.plan.values()):
            return
        gone = set().union(*self.plan.values()) - set(symbols)
        self.core.remove_symbols(gone)
        new_syms = set(symbols) - set().union(*self.plan.values())
        # a new listing starts at the next bar; a symbol that comes back resumes from its last bar
        now = self.clock_ms()
        skipped = self.core.add_symbols(new_syms, last_closed_open(now, self.step) + self.step,
                                        not_before_ms=now - self.max_backfill_ms)
        if skipped:
            log.warning("returning symbols: %d bars older than the backfill limit skipped (%s)",
                        sum(skipped.values()), ", ".join(sorted(skipped)))
        self._schedule(self.core.on_reconnect(new_syms))
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
    async def _first_universe(self, stop: asyncio.Event) -> bool:
        """The universe at start-up: a transient error (or a refused answer) is retried with backoff."""
        while not stop.is_set():
            try:
                await self.universe.get()
                return True
            except Exception as exc:
                wait = max(0.0, self.universe.next_attempt_at - self.universe.clock())
                log.warning("start-up exchangeInfo failed (%s); retry in %.1f s", exc, wait)
                try:
                    await asyncio.wait_for(stop.wait(), wait)
                except asyncio.TimeoutError:
                    pass
        return False

    def _resume(self, symbols: list[str]) -> None:
        """Continue each symbol after its newest bar in the klines topic (see the module docstring)."""
        now = self.clock_ms()
        not_before = self.start_ms if self.start_ms is not None else now - self.max_backfill_ms
        self.core.resume(read_last_bars(self.settings, symbols, self.interval, not_before).values())
        start = self.start_ms if self.start_ms is not None else last_closed_open(now, self.step)
        self.skipped_on_start = self.core.add_symbols(symbols, start, not_before_ms=not_before)
        if self.skipped_on_start:
            log.warning("%d bars of %d symbols are older than the backfill limit (%.1f h) and are not backfilled",
                        sum(self.skipped_on_start.values()), len(self.skipped_on_start), self.max_backfill_ms / 3.6e6)

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
            self.market = MarketRest(session, self.settings.binance_rest_url, self.budget,
                                     backoff_base_s=self.rest_backoff_base_s)
            self.universe = Universe(lambda: fetch_exchange_info(self.market), self.refresh_s, self.reconcile_s,
                                     max_drop_share=self.universe_max_drop_share, retry_base_s=self.universe_retry_s,
                                     confirmations=self.universe_confirmations)
            self.rest = RestKlines(self.market,
                                   on_reject=lambda reason, raw, key: self._reject("ingest.backfill", reason, raw, key))
            if not await self._first_universe(stop):
                return
            symbols = self._filter(self.universe.specs.keys())
            self._resume(symbols)
            self._schedule(self.core.on_start(symbols))    # the downtime's bars, without waiting for a connection
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
                    self.heartbeat.beat()
                    self.producer.poll(0)
                    self._schedule(self.core.on_tick())
                    # in the background: a paused REST budget (Retry-After) must not stall the tick loop
                    if (self._reconcile_task is None or self._reconcile_task.done()) and self.universe.reconcile_due():
                        self._reconcile_task = asyncio.ensure_future(self._reconcile())
            finally:
                if self._reconcile_task is not None:
                    self._reconcile_task.cancel()
                    await asyncio.gather(self._reconcile_task, return_exceptions=True)
                for conn in self.connections.values():
                    conn.stop()
                await asyncio.gather(*self._conn_tasks.values(), return_exceptions=True)
                for t in list(self._jobs):
                    t.cancel()
                await asyncio.gather(*self._jobs, return_exceptions=True)
                unsent = self.producer.flush(30)
                if unsent and self.fatal is None:
                    self.fatal = f"{unsent} records not acknowledged by the broker at shutdown"
        if self.fatal is not None:
            raise IngestFatal(self.fatal)

    def snapshot(self) -> dict:
        s = self.core.stats if self.core else None
        return {
            "ingest": None if s is None else dict(s.__dict__),
            "rest": None if self.market is None else dict(self.market.stats.__dict__),
            "universe": None if self.universe is None else {"symbols": len(self.universe.specs),
                                                              "refused": self.universe.refused,
                                                              "failures": self.universe.failures},
            "connections": {sid: dict(c.stats.__dict__) for sid, c in self.connections.items()},
            "delivery_errors": self.delivery_errors,
        }

    def figures(self) -> dict:
        """Flat figures for the endpoints (ingest.metrics), read from another thread: copies only."""
        s = self.core.stats if self.core else None
        rest = self.market.stats if self.market else None
        conns = list(self.connections.items())
        detail = {sid: {"connected": c.connected.is_set(), "messages": c.stats.messages, "symbols": len(c.symbols)}
                  for sid, c in conns}
        out = {k: getattr(s, k, 0) for k in ("received", "closed", "produced", "backfilled", "duplicates", "conflicts",
                                            "rejected", "gaps", "unfilled")}
        out.update(delivery_errors=self.delivery_errors, fatal=self.fatal,
                   rest_requests=rest.requests if rest else 0, rest_bans=rest.bans if rest else 0,
                   ws_connects=sum(c.stats.connects for _, c in conns),
                   ws_disconnects=sum(c.stats.disconnects for _, c in conns),
                   symbols=sum(len(v) for v in list(self.plan.values())) if self.plan else 0,
                   shards=len(conns), shards_connected=sum(d["connected"] for d in detail.values()),
                   shard_detail=detail)
        return out
