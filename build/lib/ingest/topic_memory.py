"""The `klines` topic is the ingest's memory: on start, the newest bar of every symbol is read back
from the tail of the topic, so a restart after any downtime backfills exactly the bars that are
missing, and never produces again one that is there.

Why the topic and not a side file or a watermark topic: a record is in the topic only once the broker
acknowledged it (idempotent producer, acks=all), so what is read back is exactly what downstream will
see. A watermark kept elsewhere can be ahead of the topic after a crash (a bar lost) or behind it (a
bar doubled); the topic cannot disagree with itself.

How: the producer's partitioner (murmur2, the Java client's, configured in infra.kafka_io) maps each
symbol to one partition, so each partition is read backwards in growing chunks from its end until
every universe symbol of that partition has been seen, the partition's start is reached, or the bars
read are older than the lookback (a symbol with no bar since then is treated as new). A healthy 1m
topic answers from its last few minutes.

`murmur2_partition` and `newest_bars` are pure; `read_last_bars` is the Kafka adapter.
"""
from __future__ import annotations

import logging
import time
from typing import Iterable

from schemas import Kline, SchemaError, decode_kline

log = logging.getLogger("smc.ingest.memory")


def murmur2(data: bytes) -> int:
    """Kafka's murmur2 (seed 0x9747b28c), as the Java client and librdkafka's murmur2 partitioner use."""
    m, r = 0x5BD1E995, 24
    length = len(data)
    h = (0x9747B28C ^ length) & 0xFFFFFFFF
    n4 = length // 4
    for i in range(n4):
        k = int.from_bytes(data[4 * i:4 * i + 4], "little")
        k = (k * m) & 0xFFFFFFFF
        k ^= k >> r
        k = (k * m) & 0xFFFFFFFF
        h = (h * m) & 0xFFFFFFFF
        h ^= k
    tail = data[4 * n4:]
    if len(tail) == 3:
        h ^= tail[2] << 16
    if len(tail) >= 2:
        h ^= tail[1] << 8
    if len(tail) >= 1:
        h ^= tail[0]
        h = (h * m) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * m) & 0xFFFFFFFF
    h ^= h >> 15
    return h


def murmur2_partition(key: bytes, partitions: int) -> int:
    """The partition of a keyed record: (murmur2(key) & 0x7fffffff) % partitions."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


def newest_bars(klines: Iterable[Kline], interval: str) -> dict[str, Kline]:
    """The newest bar per symbol of one interval."""
    out: dict[str, Kline] = {}
    for k in klines:
        if k.interval == interval and (k.symbol not in out or k.open_time > out[k.symbol].open_time):
            out[k.symbol] = k
    return out


def read_last_bars(settings, symbols: Iterable[str], interval: str, not_before_ms: int,
                   first_chunk: int = 2000, timeout: float = 60.0) -> dict[str, Kline]:
    """{symbol: newest bar in the klines topic} for the symbols that have one opening at or after
    not_before_ms. Reads by assignment (no consumer group, nothing committed)."""
    from confluent_kafka import Consumer, TopicPartition

    from infra.kafka_io import end_offsets, topic
    name = topic(settings, "klines")
    bounds = end_offsets(settings, "klines", timeout=timeout)
    if not bounds:
        return {}
    wanted: dict[int, set[str]] = {p: set() for p in bounds}
    for s in symbols:
        wanted[murmur2_partition(s.encode(), len(bounds))].add(s)
    c = Consumer({"bootstrap.servers": settings.kafka_bootstrap, "group.id": "smc-ingest-memory",
                  "enable.auto.commit": False, "isolation.level": "read_committed",
                  "logger": logging.getLogger("smc.kafka.client")})
    found: dict[str, Kline] = {}
    read = 0
    t0 = time.monotonic()
    deadline = t0 + timeout
    try:
        for p, (lo, hi) in sorted(bounds.items()):
            todo = set(wanted[p])
            end, chunk = hi, first_chunk
            while todo and end > lo:
                start = max(lo, end - chunk)
                bars, oldest = _read_range(c, TopicPartition(name, p, start), end, deadline)
                read += end - start
                for sym, k in newest_bars(bars, interval).items():
                    if sym not in found or k.open_time > found[sym].open_time:
                        found[sym] = k
                    todo.discard(sym)
                if oldest is not None and oldest < not_before_ms:
                    break
                end, chunk = start, chunk * 2
    finally:
        c.close()
    out = {s: k for s, k in found.items() if k.open_time >= not_before_ms}
    log.info("klines topic memory: newest bar of %d symbols from %d records in %.2f s", len(out), read,
             time.monotonic() - t0)
    return out


def _read_range(c, tp, end: int, deadline: float) -> tuple[list[Kline], int | None]:
    """Decoded klines of offsets [tp.offset, end) and the oldest open_time among them."""
    c.assign([tp])
    bars: list[Kline] = []
    oldest = None
    while True:
        if time.monotonic() > deadline:
            raise TimeoutError(f"reading the tail of {tp.topic}[{tp.partition}] took too long")
        for m in c.consume(num_messages=10_000, timeout=0.5):
            if m.error() or m.offset() >= end:
                continue
            try:
                k = decode_kline(m.value())
            except SchemaError:
                continue                 # the ingest never produces such a record; nothing to resume from
            bars.append(k)
            oldest = k.open_time if oldest is None else min(oldest, k.open_time)
        pos = c.position([tp])[0].offset
        if pos >= end or pos < 0 and end <= tp.offset:
            return bars, oldest
