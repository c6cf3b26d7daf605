"""A finite run's audit sink reads to the end offsets however slow the machine, and the run checks each
table against what its topic carried (real broker, real chDB)."""
from __future__ import annotations

import time

import pytest

from ingest.audit_sink import AuditIncomplete, AuditSink, completeness_errors, natural_key_columns
from schemas import Kline, encode_kline
from schemas.audit import TABLES


def test_natural_keys_and_error_lines():
    assert natural_key_columns(TABLES["klines"]) == ["symbol", "interval", "open_time"]
    assert natural_key_columns(TABLES["rejects"])[-1] == "raw_b64"   # cityHash64(raw_b64) dedups on raw_b64
    assert completeness_errors({"klines": 5, "signals": 3}, {"klines": 5, "signals": 3}) == []
    assert completeness_errors({"klines": 5, "signals": 3}, {"klines": 4}) == [
        "table klines: 4 distinct rows stored, 5 distinct ids in the topic",
        "table signals: 0 distinct rows stored, 3 distinct ids in the topic"]


class SlowConsumer:
    """A real consumer whose fetches return nothing for the first `stall_s` seconds (a loaded machine,
    a slow group join): what made the 1.5 s idle cut-off store zero rows."""

    def __init__(self, inner, stall_s: float) -> None:
        self._inner, self._until = inner, time.monotonic() + stall_s

    def consume(self, num_messages=1, timeout=-1):
        if time.monotonic() < self._until:
            time.sleep(min(timeout, 0.2) if timeout > 0 else 0.2)
            return []
        return self._inner.consume(num_messages=num_messages, timeout=timeout)

    def __getattr__(self, name):
        return getattr(self._inner, name)


class SlowStore:
    """The real store with a delay per insert, optionally losing one batch without a word."""

    def __init__(self, inner, delay_s: float, lose_batch: int | None = None) -> None:
        self._inner, self.delay_s, self.lose_batch, self.batches = inner, delay_s, lose_batch, 0
        self.database = inner.database

    def insert(self, table, rows):
        time.sleep(self.delay_s)
        self.batches += 1
        if self.batches == self.lose_batch:
            return len(rows)
        return self._inner.insert(table, rows)

    def count(self, table, where="1"):
        return self._inner.count(table, where)


def _produce_klines(settings, n_per_symbol: int, symbols=("BTCUSDT", "ETHUSDT"), repeat_first: int = 0) -> int:
    from infra.kafka_io import ensure_topics, producer, topic
    ensure_topics(settings, ["klines", "dlq"])
    p = producer(settings)
    sent = 0
    for sym in symbols:
        ks = [Kline(sym, "1m", 60_000 * i, 60_000 * i + 59_999, 10.0, 11.0, 9.0, 10.5, 1.0, source="replay")
              for i in range(1, n_per_symbol + 1)]
        for k in ks + ks[:repeat_first]:          # re-sent records (at-least-once producer) are not new ids
            p.produce(topic(settings, "klines"), key=sym.encode(), value=encode_kline(k))
            sent += 1
    p.flush(30)
    return sent


def _sink(settings, store, group: str, stall_s: float, batch_rows: int = 50) -> AuditSink:
    from infra.kafka_io import consumer
    inner = consumer(settings, group)
    return AuditSink(settings, store, ["klines"], group_base=group, batch_rows=batch_rows, fetch_messages=batch_rows,
                     consumer=SlowConsumer(inner, stall_s))


@pytest.mark.kafka
@pytest.mark.timeout(120)
def test_a_stalled_sink_still_reaches_the_end_offsets(settings, audit_store):
    _produce_klines(settings, 150, repeat_first=20)

    # the old cut-off: 1.5 s without data while the fetch stalls -> nothing stored, no error
    idle = _sink(settings, SlowStore(audit_store, 0.0), "idle", stall_s=4.0)
    idle.run_until_idle(idle_seconds=1.5, until_end=False)
    idle.close()
    assert audit_store.count("klines") == 0

    # to the end offsets: the stall and slow inserts only make it take longer
    sink = _sink(settings, SlowStore(audit_store, 0.3), "ends", stall_s=4.0)
    try:
        st = sink.run_to_end(sink.end_offsets(), max_seconds=90)
        stored = sink.verify_complete()
    finally:
        sink.close()
    assert st.consumed == 340 and st.rejected == 0
    assert stored == {"klines": 300} and audit_store.count("klines") == 300


@pytest.mark.kafka
@pytest.mark.timeout(120)
def test_a_lost_batch_fails_the_check_naming_table_and_counts(settings, audit_store):
    _produce_klines(settings, 100)
    sink = _sink(settings, SlowStore(audit_store, 0.0, lose_batch=2), "lossy", stall_s=0.0, batch_rows=50)
    try:
        sink.run_to_end(sink.end_offsets(), max_seconds=60)
        with pytest.raises(AuditIncomplete) as err:
            sink.verify_complete()
    finally:
        sink.close()
    stored = audit_store.count("klines")
    assert 0 < stored < 200
    assert f"table klines: {stored} distinct rows stored, 200 distinct ids in the topic" in str(err.value)


@pytest.mark.kafka
@pytest.mark.timeout(60)
def test_run_to_end_names_the_partitions_behind_on_timeout(settings, audit_store):
    _produce_klines(settings, 20)
    sink = _sink(settings, audit_store, "late", stall_s=30.0)
    try:
        with pytest.raises(TimeoutError, match=r"did not reach the end offsets in 3s: .*klines\[\d\] at -?\d+ of \d+"):
            sink.run_to_end(sink.end_offsets(), max_seconds=3)
    finally:
        sink.consumer._inner.close()
