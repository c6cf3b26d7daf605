"""Audit sink: registry topics -> ClickHouse audit tables, at least once.

Each consumed record is decoded with the decoder of its topic (topic base name -> table via
schemas.audit.TOPIC_TABLES -> message type -> decode_*), buffered per table and inserted in batches
(up to `batch_rows` rows or `batch_seconds`), and only after the insert are the Kafka offsets
committed. A crash between insert and commit re-delivers records; the tables are ReplacingMergeTree
on natural ids, so queries with FINAL never show the duplicates.

Undecodable records go to the dlq topic (stage "audit") AND straight into the rejects table.

Modes: `run_to_end(ends)` (the batch main job: consume until every partition's position reaches the
end offsets read when the producers finished, however slow the machine; then `verify_complete()`
compares each table's distinct natural ids with the distinct ids the topic carried),
`run_until_idle()` (tests: caught up with the ends taken at start, or idle) and `run_forever(stop)`.
"""
from __future__ import annotations

import logging
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable

from confluent_kafka import OFFSET_INVALID, KafkaError, TopicPartition

from schemas import (SchemaError, decode_alert, decode_decision, decode_equity, decode_fill, decode_kline, decode_order,
                     decode_position, decode_reject, decode_signal, make_reject)
from schemas.audit import TOPIC_TABLES, AuditTable
from schemas.kline import Kline
from schemas.reject import Reject
from schemas.signal import Signal
from schemas.trading import Alert, Decision, Equity, Fill, Order, Position

log = logging.getLogger("smc.ingest.audit")

DECODERS: dict[type, Callable] = {
    Kline: decode_kline, Signal: decode_signal, Decision: decode_decision, Order: decode_order,
    Fill: decode_fill, Position: decode_position, Equity: decode_equity, Reject: decode_reject,
    Alert: decode_alert,
}


def decoder_for(base: str) -> tuple[AuditTable, Callable]:
    """(table, decoder) of a registry topic base name; KeyError names the known topics."""
    try:
        table = TOPIC_TABLES[base]
    except KeyError:
        raise KeyError(f"no audit table for topic {base!r} (known: {sorted(TOPIC_TABLES)})") from None
    return table, DECODERS[table.message]


class AuditIncomplete(RuntimeError):
    """The audit trail of a finite run does not hold what its topics carried."""


def natural_key_columns(table: AuditTable) -> list[str]:
    """The columns a table's ReplacingMergeTree deduplicates on (a hashed column counts as itself)."""
    cols = []
    for part in table.order_by.split(","):
        part = part.strip()
        m = re.fullmatch(r"\w+\((\w+)\)", part)
        cols.append(m.group(1) if m else part)
    return cols


def completeness_errors(expected: dict[str, int], stored: dict[str, int]) -> list[str]:
    """One line per table whose stored distinct ids differ from the distinct ids its topic carried."""
    return [f"table {t}: {stored.get(t, 0)} distinct rows stored, {n} distinct ids in the topic"
            for t, n in sorted(expected.items()) if stored.get(t, 0) != n]


@dataclass
class SinkStats:
    consumed: int = 0
    inserted: dict[str, int] = field(default_factory=dict)
    rejected: int = 0
    batches: int = 0
    commits: int = 0


class AuditSink:
    def __init__(self, settings, store, topics: Iterable[str] = ("klines",), group_base: str = "audit-sink",
                 batch_rows: int = 5000, batch_seconds: float = 1.0, fetch_messages: int = 5000,
                 consumer=None, producer=None) -> None:
        from infra.kafka_io import producer as make_producer, consumer as make_consumer, topic
        self.settings = settings
        self.store = store
        self.bases = list(topics)
        self.tables = {}
        for base in self.bases:
            self.tables[topic(settings, base)] = (base,) + decoder_for(base)
        self.batch_rows = batch_rows
        self.batch_seconds = batch_seconds
        self.fetch_messages = fetch_messages
        self.consumer = consumer or make_consumer(
            settings, group_base, **{"fetch.max.bytes": 52_428_800, "max.partition.fetch.bytes": 10_485_760,
                                     "queued.min.messages": 200_000})
        self.producer = producer or make_producer(settings)
        self.stats = SinkStats()
        self._assigned: set[tuple[str, int]] = set()
        self._buffers: dict[str, list] = {}
        self._pending_offsets: dict[tuple[str, int], int] = {}
        self._buffered = 0
        self._batch_started = 0.0
        self._subscribed = False
        # distinct natural ids per table as the topics carried them: what verify_complete() expects
        self._seen_ids: dict[str, set] = {}
        self._key_cols = {t.name: natural_key_columns(t) for _base, t, _d in self.tables.values()}
        self._key_cols.setdefault("rejects", natural_key_columns(TOPIC_TABLES["dlq"]))

    # ---- Kafka plumbing -------------------------------------------------------------------------
    def _subscribe(self) -> None:
        if self._subscribed:
            return

        def on_assign(c, parts):
            self._assigned.update((p.topic, p.partition) for p in parts)

        def on_revoke(c, parts):
            try:
                self.flush()     # insert + commit before losing the partitions
            except Exception as exc:
                # not inserted -> not committed: the next owner re-reads them (at least once)
                log.error("audit sink: flush on revoke failed (%s); records will be re-delivered", exc)
                self._buffers, self._buffered, self._pending_offsets = {}, 0, {}
            self._assigned.difference_update((p.topic, p.partition) for p in parts)

        self.consumer.subscribe(list(self.tables), on_assign=on_assign, on_revoke=on_revoke)
        self._subscribed = True

    def end_offsets(self) -> dict[tuple[str, int], int]:
        """High watermarks of every partition of the sink's topics, now."""
        from infra.kafka_io import watermarks
        ends = {}
        md = self.consumer.list_topics(timeout=10)
        for name in self.tables:
            t = md.topics.get(name)
            if t is None or t.error:
                continue
            for p in t.partitions:
                _low, high = watermarks(self.consumer, name, p, timeout=10)
                ends[(name, p)] = high
        return ends

    # ---- core ---------------------------------------------------------------------------------
    def _handle(self, msg) -> None:
        name, part, off = msg.topic(), msg.partition(), msg.offset()
        base, table, decode = self.tables[name]
        raw = msg.value()
        self.stats.consumed += 1
        try:
            if raw is None:
                raise SchemaError(table.message.__name__, "<payload>", None, "empty record (tombstone)")
            row = decode(raw)
        except SchemaError as exc:
            self._reject(str(exc), raw, msg.key(), name, part, off)
        except Exception as exc:  # a decoder bug must not stop the audit trail
            self._reject(f"{type(exc).__name__}: {exc}", raw, msg.key(), name, part, off)
        else:
            self._buffer(table.name, row)
        self._pending_offsets[(name, part)] = off + 1

    def _reject(self, reason: str, raw, key, name: str, part: int, off: int) -> None:
        from infra.kafka_io import send_reject
        self.stats.rejected += 1
        send_reject(self.producer, self.settings, "audit", reason, raw, key, name, part, off)
        rej = make_reject("audit", reason, raw, key, int(time.time() * 1000), name, part, off)
        self._buffer("rejects", rej)

    def _buffer(self, table: str, row) -> None:
        self._buffers.setdefault(table, []).append(row)
        self._buffered += 1
        self._seen_ids.setdefault(table, set()).add(tuple(getattr(row, c) for c in self._key_cols[table]))

    def flush(self) -> int:
        """Insert every buffered row, then commit the consumed offsets (never before the insert)."""
        n = 0
        for table, rows in self._buffers.items():
            if rows:
                self.store.insert(table, rows)
                self.stats.inserted[table] = self.stats.inserted.get(table, 0) + len(rows)
                n += len(rows)
        self._buffers = {}
        self._buffered = 0
        if n:
            self.stats.batches += 1
        if self._pending_offsets:
            self.producer.flush(30)   # dlq copies of the rejects are durable before we move on
            offsets = [TopicPartition(t, p, o) for (t, p), o in self._pending_offsets.items()]
            self.consumer.commit(offsets=offsets, asynchronous=False)
            self.stats.commits += 1
            self._pending_offsets = {}
        return n

    def poll_once(self, timeout: float = 0.5) -> int:
        self._subscribe()
        msgs = self.consumer.consume(num_messages=self.fetch_messages, timeout=timeout)
        got = 0
        for msg in msgs:
            err = msg.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    continue
                if err.fatal():
                    raise RuntimeError(f"audit sink consumer: {err}")
                log.warning("audit sink consumer: %s", err)
                continue
            if self._buffered == 0:
                self._batch_started = time.monotonic()
            self._handle(msg)
            got += 1
        if self._buffered >= self.batch_rows or (
                self._buffered and time.monotonic() - self._batch_started >= self.batch_seconds) or (
                not self._buffered and self._pending_offsets):
            self.flush()
        return got

    def _caught_up(self, ends: dict[tuple[str, int], int]) -> bool:
        if not self._assigned:
            return False
        parts = [TopicPartition(t, p) for (t, p) in ends if (t, p) in self._assigned]
        if len(parts) < len(ends):
            return False      # another group member owns some: rely on idleness
        for tp in self.consumer.position(parts):
            end = ends[(tp.topic, tp.partition)]
            if end == 0:
                continue
            if tp.offset == OFFSET_INVALID or tp.offset < end:
                # never consumed here: caught up if the committed offset is already at the end
                if tp.offset == OFFSET_INVALID:
                    c = self.consumer.committed([TopicPartition(tp.topic, tp.partition)], timeout=10)[0]
                    if c.offset >= end:
                        continue
                return False
        return True

    def run_until_idle(self, idle_seconds: float = 5.0, max_seconds: float | None = None,
                       until_end: bool = True) -> SinkStats:
        """Consume until caught up with the end offsets captured now (or idle for idle_seconds)."""
        self._subscribe()
        ends = self.end_offsets() if until_end else {}
        t0 = last_data = time.monotonic()
        while True:
            got = self.poll_once(timeout=0.2)
            now = time.monotonic()
            if got:
                last_data = now
                continue
            if until_end and ends is not None and self._caught_up(ends):
                break
            if now - last_data >= idle_seconds:
                break
            if max_seconds is not None and now - t0 >= max_seconds:
                break
        self.flush()
        return self.stats

    drain = run_until_idle

    def run_to_end(self, ends: dict[tuple[str, int], int], max_seconds: float = 3600.0) -> SinkStats:
        """Consume until every partition's position reaches `ends` (no idle cut-off: a slow fetch or a
        late group join only makes it take longer); TimeoutError names the partitions still behind."""
        self._subscribe()
        deadline = time.monotonic() + max_seconds
        behind = dict(ends)
        while True:
            got = self.poll_once(timeout=0.2)
            if not got and self._assigned:
                behind = self._behind({k: ends[k] for k in behind})
                if not behind:
                    break
            if time.monotonic() > deadline:
                lag = ", ".join(f"{t}[{p}] at {o} of {ends[(t, p)]}" for (t, p), o in sorted(behind.items()))
                raise TimeoutError(f"audit sink did not reach the end offsets in {max_seconds:.0f}s: {lag}")
        self.flush()
        return self.stats

    def _behind(self, ends: dict[tuple[str, int], int]) -> dict[tuple[str, int], int]:
        """{partition: position} of the partitions whose consumed position (or committed offset) is short of the end."""
        out = {}
        todo = [TopicPartition(t, p) for (t, p), end in ends.items() if end > 0]
        if not todo:
            return out
        mine = [tp for tp in todo if (tp.topic, tp.partition) in self._assigned]
        positions = {(tp.topic, tp.partition): tp.offset for tp in self.consumer.position(mine)} if mine else {}
        committed = {(tp.topic, tp.partition): tp.offset
                     for tp in self.consumer.committed(todo, timeout=10)}
        for tp in todo:
            k = (tp.topic, tp.partition)
            at = max(positions.get(k, OFFSET_INVALID), committed.get(k, OFFSET_INVALID))
            if at < ends[k]:
                out[k] = at
        return out

    def verify_complete(self) -> dict[str, int]:
        """Distinct stored rows per table (FINAL) equal the distinct natural ids the topics carried, or
        AuditIncomplete naming each table and both counts. Returns the stored counts."""
        self.flush()
        expected = {t: len(ids) for t, ids in self._seen_ids.items()}
        stored = {t: self.store.count(t) for t in expected}
        errors = completeness_errors(expected, stored)
        if errors:
            raise AuditIncomplete("audit trail incomplete: " + "; ".join(errors))
        return stored

    def run_forever(self, stop: threading.Event | None = None) -> SinkStats:
        stop = stop or threading.Event()
        self._subscribe()
        while not stop.is_set():
            self.poll_once(timeout=0.5)
        self.flush()
        return self.stats

    def close(self) -> None:
        try:
            self.flush()
        finally:
            self.consumer.close()
            self.producer.flush(10)


def run(settings, topics: Iterable[str] = ("klines",), until_idle: bool = True, idle_seconds: float = 5.0,
        store=None, stop: threading.Event | None = None) -> SinkStats:
    """Main-job / service entry point: open the store from settings.clickhouse_dsn and sink."""
    from infra.clickhouse import AuditStore
    from infra.kafka_io import ensure_topics
    store = store or AuditStore(settings.clickhouse_dsn)
    store.ensure_schema()
    ensure_topics(settings, list(topics) + ["dlq"])
    sink = AuditSink(settings, store, topics)
    try:
        return sink.run_until_idle(idle_seconds) if until_idle else sink.run_forever(stop)
    finally:
        sink.close()
