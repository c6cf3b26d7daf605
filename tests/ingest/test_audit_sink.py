"""Replay of the full 140-symbol 1h file -> Kafka -> audit sink -> ClickHouse (chDB), checksums equal."""
from __future__ import annotations

import time

import polars as pl
import pytest

from conftest import RECORDED, SHARED_DATA
from ingest.audit_sink import AuditSink, decoder_for
from ingest.replay import replay
from schemas import Kline, encode_kline, decode_reject

H1 = RECORDED / "klines_1h.parquet"


def test_decoder_for_every_table_topic():
    for base in ("klines", "signals", "orders", "fills", "positions", "equity", "dlq"):
        table, dec = decoder_for(base)
        assert callable(dec) and table.topic == base
    with pytest.raises(KeyError, match="no audit table"):
        decoder_for("nope")


def _expected(df: pl.DataFrame) -> dict:
    return {
        "rows": df.height,
        "sum_open_time": int(df["open_time"].sum()),
        "sum_close": round(float(df["close"].sum()), 4),
        "sum_volume": round(float(df["volume"].sum()), 0),
        "per_symbol": dict(df.group_by("symbol").len().iter_rows()),
    }


@pytest.mark.kafka
@pytest.mark.timeout(240)
def test_replay_all_140_symbols_into_clickhouse(settings, audit_store):
    t0 = time.perf_counter()
    stats = replay(settings, [H1], interval="1h", progress=False)
    t_replay = time.perf_counter() - t0
    raw = pl.read_parquet(H1)
    exp = _expected(raw)
    assert stats.produced == exp["rows"] == 373_596
    assert stats.symbols == 140

    t1 = time.perf_counter()
    sink = AuditSink(settings, audit_store, ["klines"], batch_rows=50_000, batch_seconds=2.0)
    try:
        sstats = sink.run_until_idle(idle_seconds=20)
    finally:
        sink.close()
    t_sink = time.perf_counter() - t1
    print(f"\nreplay {stats.produced} in {t_replay:.1f}s; sink {sstats.consumed} in {t_sink:.1f}s")
    assert sstats.consumed == exp["rows"] and sstats.rejected == 0

    db = audit_store.database
    _, rows = audit_store.query(
        f"SELECT count(), sum(open_time), round(sum(close), 4), round(sum(volume), 0), uniqExact(symbol),"
        f" countIf(source != 'replay'), countIf(received_at != close_time + 1) FROM {db}.klines FINAL")
    n, s_ot, s_close, s_vol, nsym, not_replay, bad_recv = rows[0]
    assert n == exp["rows"]
    assert s_ot == exp["sum_open_time"]
    assert s_close == pytest.approx(exp["sum_close"], abs=1e-3)
    assert s_vol == pytest.approx(exp["sum_volume"], rel=1e-12)
    assert nsym == 140 and not_replay == 0 and bad_recv == 0
    _, per = audit_store.query(f"SELECT symbol, count() FROM {db}.klines FINAL GROUP BY symbol")
    assert dict(per) == exp["per_symbol"]

    # against the original CSVs when the shared data set is beside the repo
    shared = SHARED_DATA / "klines_1h"
    if shared.exists():
        csv = pl.concat([pl.read_csv(p).with_columns(pl.lit(p.name.split("-")[0]).alias("symbol"))
                         for p in sorted(shared.glob("*-1h.csv"))], how="diagonal_relaxed")
        exp_csv = _expected(csv)
        assert exp_csv["rows"] == n and exp_csv["sum_open_time"] == s_ot
        assert exp_csv["per_symbol"] == dict(per)
        assert exp_csv["sum_close"] == pytest.approx(s_close, abs=1e-3)


@pytest.mark.kafka
def test_sink_redelivery_is_invisible_and_bad_records_go_to_dlq_and_rejects(settings, audit_store):
    from infra.kafka_io import consumer, ensure_topics, producer, topic
    ensure_topics(settings, ["klines", "dlq"])
    p = producer(settings)
    good = [Kline("BTCUSDT", "1m", 60_000 * i, 60_000 * i + 59_999, 10.0, 11.0, 9.0, 10.5, 1.0, source="replay")
            for i in range(1, 11)]
    for k in good:
        p.produce(topic(settings, "klines"), key=k.symbol.encode(), value=encode_kline(k))
    p.produce(topic(settings, "klines"), key=b"BTCUSDT", value=b"{not json")
    bad_high = encode_kline(good[0]).replace(b'"high":11.0', b'"high":8.0')
    p.produce(topic(settings, "klines"), key=b"BTCUSDT", value=bad_high)
    p.flush(30)

    sink = AuditSink(settings, audit_store, ["klines"], group_base="a1")
    st = sink.run_until_idle(idle_seconds=10)
    sink.close()
    assert st.consumed == 12 and st.rejected == 2
    assert audit_store.count("klines") == 10
    assert audit_store.count("rejects") == 2
    _, rows = audit_store.query(f"SELECT reason FROM {audit_store.database}.rejects FINAL ORDER BY offset")
    assert "malformed JSON" in rows[0][0] and "Kline.high=8.0" in rows[1][0]

    # same records again through a new group (= a redelivery): still 10 rows with FINAL
    sink2 = AuditSink(settings, audit_store, ["klines"], group_base="a2")
    st2 = sink2.run_until_idle(idle_seconds=10)
    sink2.close()
    assert st2.consumed == 12
    assert audit_store.count("klines") == 10 and audit_store.count("rejects") == 2

    # committed offsets: the first group has nothing left to read
    sink3 = AuditSink(settings, audit_store, ["klines"], group_base="a1")
    st3 = sink3.run_until_idle(idle_seconds=3)
    sink3.close()
    assert st3.consumed == 0

    c = consumer(settings, "t-dlq-read")
    c.subscribe([topic(settings, "dlq")])
    rejects = []
    t0 = time.monotonic()
    while len(rejects) < 4 and time.monotonic() - t0 < 30:
        rejects += [decode_reject(m.value()) for m in c.consume(10, 1.0) if not m.error()]
    c.close()
    assert len(rejects) == 4 and {r.stage for r in rejects} == {"audit"}
    assert {r.offset for r in rejects} == {10, 11}


@pytest.mark.kafka
def test_offsets_are_committed_only_after_the_insert(settings, audit_store):
    from infra.kafka_io import ensure_topics, producer, topic
    ensure_topics(settings, ["klines", "dlq"])
    p = producer(settings)
    for i in range(1, 6):
        k = Kline("ETHUSDT", "1m", 60_000 * i, 60_000 * i + 59_999, 10.0, 11.0, 9.0, 10.5, 1.0, source="replay")
        p.produce(topic(settings, "klines"), key=b"ETHUSDT", value=encode_kline(k))
    p.flush(30)

    class Down:
        database = audit_store.database

        def insert(self, table, rows):
            raise ConnectionError("ClickHouse down")
    sink = AuditSink(settings, Down(), ["klines"], group_base="crash")
    with pytest.raises(ConnectionError):
        sink.run_until_idle(idle_seconds=5)
    sink.consumer.close()
    # nothing was committed: a restarted sink gets every record again and inserts them
    sink2 = AuditSink(settings, audit_store, ["klines"], group_base="crash")
    st = sink2.run_until_idle(idle_seconds=5)
    sink2.close()
    assert st.consumed == 5 and audit_store.count("klines") == 5
