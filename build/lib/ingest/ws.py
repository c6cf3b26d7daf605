"""Binance combined-stream kline connections: parsing (pure), backoff, connection limiter, dedupe,
and the thin `ShardConnection` adapter over `websockets`.

One ShardConnection = one WebSocket on `{ws_url}/stream?streams=btcusdt@kline_1m/...`.
  * pings are answered by websockets itself;
  * on a drop it reconnects with jittered exponential backoff, and reports `on_connected(shard, True)`
    so the service can backfill what was missed (Binance has no replay);
  * every open goes through one global `ConnectLimiter` (at most one open per second per process);
  * before Binance's 24 h cut (`rotate_after_s`, a parameter) it rotates make-before-break: the new
    connection is opened first, then the old one closed; the overlap is deduped downstream by
    (symbol, interval, open_time);
  * subscription changes (reconcile: listings/delistings) use the same rotation with the new stream
    list instead of SUBSCRIBE/UNSUBSCRIBE messages: no per-connection message-rate budget to manage,
    no window where a symbol is unsubscribed, one connection open per change (limited to 1/s).
"""
from __future__ import annotations

import asyncio
import logging
import random
import time
from dataclasses import dataclass
from typing import Awaitable, Callable

import orjson

from schemas import Kline, SchemaError
from schemas.kline import validate_kline

log = logging.getLogger("smc.ingest.ws")


# ---- parsing (pure) -----------------------------------------------------------------------------
def _num(k: dict, key: str, name: str, cast=float):
    if key not in k:
        raise SchemaError("KlineEvent", f"k.{key} ({name})", None, "missing")
    v = k[key]
    if isinstance(v, bool):
        raise SchemaError("KlineEvent", f"k.{key} ({name})", v, "expected a number")
    try:
        return cast(v)
    except (TypeError, ValueError):
        raise SchemaError("KlineEvent", f"k.{key} ({name})", v, "expected a number") from None


def parse_kline_event(raw: bytes | str | dict, received_at: int, source: str = "live") -> Kline | None:
    """A closed kline from a Binance kline event (combined `{"stream","data"}` or raw), else None.

    None for open updates (x=false), subscription replies and other event types. Raises SchemaError
    (field and value named) for malformed JSON, missing/unreadable fields, or an invalid bar.
    """
    if isinstance(raw, dict):
        obj = raw
    else:
        try:
            obj = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            shown = raw[:60] if raw else raw
            raise SchemaError("KlineEvent", "<payload>", shown, f"malformed JSON ({exc})") from None
    if not isinstance(obj, dict):
        raise SchemaError("KlineEvent", "<payload>", obj, "expected a JSON object")
    if "data" in obj and "stream" in obj:
        obj = obj["data"]
        if not isinstance(obj, dict):
            raise SchemaError("KlineEvent", "data", obj, "expected a JSON object")
    if "id" in obj and ("result" in obj or "error" in obj):
        return None                               # SUBSCRIBE / LIST_SUBSCRIPTIONS reply
    if obj.get("e") != "kline":
        return None
    k = obj.get("k")
    if not isinstance(k, dict):
        raise SchemaError("KlineEvent", "k", k, "expected the kline object")
    x = k.get("x")
    if not isinstance(x, bool):
        raise SchemaError("KlineEvent", "k.x (closed)", x, "expected true/false")
    if not x:
        return None
    sym = k.get("s", obj.get("s"))
    if not isinstance(sym, str):
        raise SchemaError("KlineEvent", "k.s (symbol)", sym, "expected a string")
    interval = k.get("i")
    if not isinstance(interval, str):
        raise SchemaError("KlineEvent", "k.i (interval)", interval, "expected a string")
    kline = Kline(sym, interval, _num(k, "t", "open_time", int), _num(k, "T", "close_time", int),
                  _num(k, "o", "open"), _num(k, "h", "high"), _num(k, "l", "low"), _num(k, "c", "close"),
                  _num(k, "v", "volume"), _num(k, "q", "quote_volume"), _num(k, "n", "trades", int),
                  _num(k, "V", "taker_buy_base"), _num(k, "Q", "taker_buy_quote"), source, received_at)
    validate_kline(kline)
    return kline


# ---- dedupe (pure) ------------------------------------------------------------------------------
def bar_fingerprint(k: Kline) -> tuple:
    """What the exchange says about a bar: equal fingerprints = the same bar delivered twice (WS and
    REST carry the same numbers; source and received_at are ours and differ)."""
    return (k.close_time, k.open, k.high, k.low, k.close, k.volume, k.quote_volume, k.trades,
            k.taker_buy_base, k.taker_buy_quote)


class Deduper:
    """Per symbol: the newest produced open_time and a window of recent bars' fingerprints.

    check() -> "new" (newer than anything produced), "duplicate" (already produced with the same
    numbers: rotation overlap, a live bar after its backfill, a re-sent bar after a restart),
    "conflict" (already produced with other numbers) or "stale" (older than the newest, never produced).
    """

    def __init__(self, window: int = 256):
        self.window = window
        self.newest: dict[tuple[str, str], int] = {}
        self.recent: dict[tuple[str, str], dict[int, tuple]] = {}

    def check(self, symbol: str, interval: str, open_time: int, fingerprint: tuple | None = None) -> str:
        key = (symbol, interval)
        newest = self.newest.get(key)
        if newest is None or open_time > newest:
            return "new"
        seen = self.recent[key].get(open_time, _MISSING)
        if seen is _MISSING:
            return "stale"
        return "duplicate" if fingerprint is None or seen is None or seen == fingerprint else "conflict"

    def add(self, symbol: str, interval: str, open_time: int, fingerprint: tuple | None = None) -> None:
        key = (symbol, interval)
        recent = self.recent.get(key)
        if recent is None:
            recent = self.recent[key] = {}
        recent[open_time] = fingerprint
        if len(recent) > self.window:
            del recent[next(iter(recent))]          # insertion order = production order: drop the oldest
        if open_time > self.newest.get(key, -1):
            self.newest[key] = open_time


_MISSING = object()


# ---- backoff and the global open limiter ----------------------------------------------------------
class Backoff:
    """Jittered exponential backoff ("full jitter"): uniform(0, min(cap, base * 2**n)); the process-wide
    ConnectLimiter keeps even a zero draw from opening more than one connection per interval."""

    def __init__(self, base: float = 0.5, cap: float = 30.0, rng: random.Random | None = None):
        self.base, self.cap, self.rng, self.n = base, cap, rng or random.Random(), 0

    def next(self) -> float:
        ceiling = min(self.cap, self.base * (2 ** self.n))
        self.n += 1
        return self.rng.uniform(0.0, ceiling)

    def reset(self) -> None:
        self.n = 0


class ConnectLimiter:
    """At most one connection open per `interval_s` across every shard of the process."""

    def __init__(self, interval_s: float = 1.0, clock: Callable[[], float] = time.monotonic):
        self.interval = interval_s
        self.clock = clock
        self._next = 0.0
        self._lock: asyncio.Lock | None = None
        self.opens = 0

    async def acquire(self) -> None:
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            now = self.clock()
            if now < self._next:
                await asyncio.sleep(self._next - now)
            self._next = self.clock() + self.interval
            self.opens += 1


def describe_close(ws, reader: asyncio.Task) -> str:
    """Close code and reason of a finished connection, and the reader's error if it had one."""
    code, reason = getattr(ws, "close_code", None), getattr(ws, "close_reason", None)
    text = f"close code {code}, reason {reason!r}" if code is not None else "no close frame"
    exc = None if reader.cancelled() else reader.exception()
    return text if exc is None else f"{text}; {type(exc).__name__}: {exc}"


# ---- the connection adapter ----------------------------------------------------------------------
@dataclass
class ConnStats:
    connects: int = 0
    disconnects: int = 0
    rotations: int = 0
    messages: int = 0
    failures: int = 0


class ShardConnection:
    def __init__(self, shard_id: int, symbols, url_for: Callable[[frozenset], str],
                 on_message: Callable[[str | bytes, int], None],
                 on_connected: Callable[[int, bool], Awaitable[None] | None] | None = None,
                 limiter: ConnectLimiter | None = None, rotate_after_s: float = 23.5 * 3600,
                 backoff: Backoff | None = None, open_timeout: float = 10.0):
        self.shard_id = shard_id
        self.symbols = frozenset(symbols)
        self.url_for = url_for
        self.on_message = on_message
        self.on_connected = on_connected
        self.limiter = limiter or ConnectLimiter()
        self.rotate_after_s = rotate_after_s
        self.backoff = backoff or Backoff()
        self.open_timeout = open_timeout
        self.stats = ConnStats()
        self._rotate = asyncio.Event()
        self._stop = asyncio.Event()
        self._ws = None
        self.connected = asyncio.Event()

    def set_symbols(self, symbols) -> None:
        """Change the stream list: applied by a make-before-break rotation."""
        self.symbols = frozenset(symbols)
        self._rotate.set()

    def rotate(self) -> None:
        self._rotate.set()

    def stop(self) -> None:
        self._stop.set()

    async def _open(self):
        from websockets.asyncio.client import connect
        await self.limiter.acquire()
        ws = await connect(self.url_for(self.symbols), open_timeout=self.open_timeout, max_size=2 ** 22,
                           compression=None, ping_interval=60, ping_timeout=60)
        self.stats.connects += 1
        return ws

    async def _read(self, ws) -> None:
        got_first = False
        async for msg in ws:
            self.stats.messages += 1
            if not got_first:
                got_first = True
                self.backoff.reset()
            try:
                self.on_message(msg, self.shard_id)
            except Exception:       # the handler must never kill the shard
                log.exception("shard %d: message handler failed", self.shard_id)

    async def _notify(self, reconnected: bool) -> None:
        if self.on_connected is not None:
            r = self.on_connected(self.shard_id, reconnected)
            if asyncio.iscoroutine(r):
                await r

    async def run(self) -> None:
        cur = reader = None
        opened_at = 0.0
        first = True
        stop_task = asyncio.ensure_future(self._stop.wait())
        try:
            while not self._stop.is_set():
                if cur is None:
                    try:
                        cur = await self._open()
                    except Exception as exc:
                        self.stats.failures += 1
                        delay = self.backoff.next()
                        log.warning("shard %d: connect failed (%s), retry in %.2fs", self.shard_id, exc, delay)
                        await asyncio.wait([stop_task], timeout=delay)
                        continue
                    opened_at = time.monotonic()
                    self._ws = cur
                    reader = asyncio.ensure_future(self._read(cur))
                    self.connected.set()
                    await self._notify(not first)
                    first = False
                rot_task = asyncio.ensure_future(self._rotate.wait())
                timeout = max(0.0, opened_at + self.rotate_after_s - time.monotonic())
                await asyncio.wait([reader, rot_task, stop_task], timeout=timeout,
                                   return_when=asyncio.FIRST_COMPLETED)
                rot_task.cancel()
                if self._stop.is_set():
                    break
                if reader.done():
                    self.stats.disconnects += 1
                    self.connected.clear()
                    why = describe_close(cur, reader)
                    cur, reader = None, None
                    delay = self.backoff.next()
                    log.warning("shard %d: disconnected (%s), reconnect in %.2fs", self.shard_id, why, delay)
                    await asyncio.wait([stop_task], timeout=delay)
                    continue
                # rotation (age or new stream list): open the new connection first, then close the old
                self._rotate.clear()
                try:
                    new = await self._open()
                except Exception as exc:
                    self.stats.failures += 1
                    log.warning("shard %d: rotation open failed (%s); keeping the old connection", self.shard_id, exc)
                    self._rotate.set() if not reader.done() else None
                    await asyncio.wait([stop_task], timeout=self.backoff.next())
                    continue
                new_reader = asyncio.ensure_future(self._read(new))
                old, old_reader = cur, reader
                cur, reader, opened_at = new, new_reader, time.monotonic()
                self._ws = cur
                self.stats.rotations += 1
                await old.close()
                try:
                    await asyncio.wait_for(old_reader, 5)
                except (Exception, asyncio.TimeoutError):
                    old_reader.cancel()
        finally:
            stop_task.cancel()
            if cur is not None:
                await cur.close()
            if reader is not None:
                reader.cancel()
            self.connected.clear()
