"""Benchmark: what Kafka transactions would cost the processors' group commit, on the real broker.

The processors make a group of batches durable with two acknowledged flushes (processors/app.py): the
group's signals (and windows), then its per-symbol states and offset markers; the klines are acked
after that. The alternative the issue asks to decide by measurement is one Kafka transaction per group
(confluent-kafka's transactional producer: begin, produce the same records, send_offsets_to_transaction
with the consumer's group metadata, commit), as Kafka Streams does for exactly-once v2. Both paths send
the same records: real signal and state bytes from the processors' core on real 1m perps, in the group
shapes the worker sees (a live bar close of 1, 18 and 300 symbols; a backtest group of 3,000 klines).
Per shape: p50 / p99 wall per group commit of each path (and its ratio to the two flushes), each path
committing 5 groups back to back, the paths taking turns, same run, with the load average. Asserts correctness only (every record acknowledged, every transaction committed), never speed.

    .venv/bin/pytest -m bench -s tests/bench/test_bench_transactions.py
"""
from __future__ import annotations

import os
import time
import uuid

import numpy as np
import pytest

from conftest import RECORDED

MIN = 60_000
SHAPES = ((1, 40), (18, 40), (300, 30), (3000, 12))   # (klines per group, groups per path)
PARTITIONS = 8
RUN = 5                                                   # groups per path in a row


def _real_records(n_klines: int) -> tuple[list[tuple[str, bytes]], dict[str, bytes]]:
    """Signals and states the processors' core produces for the last of 400 real 1m bars of 18 perps,
    cycled to n_klines (symbols renamed past 18, as the benches do)."""
    import polars as pl
    from processors.core import KlineProcessor, MemoryTables
    from processors.scoring import HeuristicScorer
    from schemas import Kline, encode_kline
    df = pl.read_parquet(RECORDED / "perps_1m_2025-05.parquet").sort("open_time")
    syms = sorted(df["symbol"].unique().to_list())[:18]
    df = df.filter(pl.col("symbol").is_in(syms)).group_by("symbol", maintain_order=True).head(400).sort("open_time", "symbol")
    proc, tables = KlineProcessor(HeuristicScorer(), "bench", interval="1m", htf_factor=5), MemoryTables()
    last = None
    rows = list(df.iter_rows(named=True))
    for i in range(0, len(rows), 18):
        recs = [(r["symbol"].encode(), encode_kline(Kline(symbol=r["symbol"], interval="1m", open_time=r["open_time"],
                                                           close_time=r["open_time"] + MIN - 1, open=r["open"],
                                                           high=r["high"], low=r["low"], close=r["close"],
                                                           volume=r["volume"], source="replay")))
                for r in rows[i:i + 18]]
        last = proc.process(recs, tables)
        tables.apply(last)
    sig = [v for _, v in last.signals]
    st = list(last.states.values())
    signals = [(f"S{k:04d}", sig[k % len(sig)]) for k in range(int(n_klines * 1.2))]   # 1m + a 5m close per 5
    states = {f"S{k:04d}": st[k % len(st)] for k in range(n_klines)}
    return signals, states


def _pcts(xs: list[float]) -> tuple[float, float]:
    a = np.asarray(xs) * 1000
    return float(np.percentile(a, 50)), float(np.percentile(a, 99))


@pytest.mark.bench
@pytest.mark.kafka
@pytest.mark.timeout(600)
def test_bench_group_commit_two_flushes_vs_transaction(settings):
    from confluent_kafka import Consumer, TopicPartition
    from infra.kafka_io import ensure_topics, producer, topic
    ensure_topics(settings, ["klines", "signals"])
    t_in, t_sig = topic(settings, "klines"), topic(settings, "signals")
    t_state = f"{settings.namespace}.bench-states-changelog"
    from confluent_kafka.admin import AdminClient, NewTopic
    admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap})
    for f in admin.create_topics([NewTopic(t_state, PARTITIONS, 1)]).values():
        f.result()
    # the input the offsets refer to (send_offsets_to_transaction commits them for the consumer group)
    n_in = len(admin.list_topics(t_in, timeout=30).topics[t_in].partitions)
    p0 = producer(settings)
    for k in range(n_in * 20):
        p0.produce(t_in, key=f"S{k:04d}".encode(), value=b"x")
    assert p0.flush(30) == 0
    group_id = f"{settings.namespace}-bench-txn"
    cons = Consumer({"bootstrap.servers": settings.kafka_bootstrap, "group.id": group_id,
                     "enable.auto.commit": False, "auto.offset.reset": "earliest"})
    cons.subscribe([t_in])
    t_end = time.monotonic() + 30
    while not cons.assignment() and time.monotonic() < t_end:
        cons.poll(0.2)
    assert cons.assignment(), "the bench consumer got no partitions"

    errors: list = []

    def on_delivery(err, _msg):
        if err is not None:
            errors.append(err)

    # the processors' producer (processors/delivery.py: idempotent, acks=all, linger 1 ms)
    plain = producer(settings, **{"linger.ms": 1, "client.id": "bench-two-flushes"})
    # a transactional producer as shipped, and one with a 5 ms retry backoff: the next transaction's
    # AddPartitionsToTxn meets CONCURRENT_TRANSACTIONS while the broker still writes the last one's commit
    # markers, and librdkafka retries after retry.backoff.ms (100 ms by default)
    txns = {}
    for name, extra in (("transaction", {}), ("transaction, 5 ms backoff", {"retry.backoff.ms": 5})):
        txns[name] = producer(settings, **{"linger.ms": 1, "client.id": "bench-txn", **extra,
                                           "transactional.id": f"{settings.namespace}-bench-{uuid.uuid4().hex[:6]}"})
        txns[name].init_transactions(30)
    offset = [0]

    def two_flushes(signals, states):
        for key, value in signals:
            plain.produce(t_sig, key=key.encode(), value=value, on_delivery=on_delivery)
        assert plain.flush(30) == 0
        for key, value in states.items():
            plain.produce(t_state, key=key.encode(), value=value, on_delivery=on_delivery)
        for p in range(PARTITIONS):       # the offset markers, one per input partition
            plain.produce(t_state, key=f"__offset__/{p}".encode(), value=b"%d" % offset[0], partition=p,
                          on_delivery=on_delivery)
        assert plain.flush(30) == 0

    def transaction(signals, states, txn):
        txn.begin_transaction()
        for key, value in signals:
            txn.produce(t_sig, key=key.encode(), value=value, on_delivery=on_delivery)
        for key, value in states.items():
            txn.produce(t_state, key=key.encode(), value=value, on_delivery=on_delivery)
        offset[0] += 1
        txn.send_offsets_to_transaction([TopicPartition(t_in, p, offset[0] % 10) for p in range(n_in)],
                                        cons.consumer_group_metadata(), 30)
        txn.commit_transaction(30)

    load0 = os.getloadavg()
    print(f"\n[bench transactions] load average before: {load0}  ({os.cpu_count()} cores); group commit of "
          f"the same real signal + state records, p50 / p99 ms per group")
    for n_klines, groups in SHAPES:
        signals, states = _real_records(n_klines)
        nbytes = sum(len(v) for _, v in signals) + sum(len(v) for v in states.values())
        paths = [("two flushes", two_flushes)] + [(n, lambda s, t, p=p: transaction(s, t, p)) for n, p in txns.items()]
        wall = {name: [] for name, _ in paths}
        # each path commits RUN groups back to back (as a worker does, one group after the other on the same
        # producer), the paths taking turns run by run (load drift hits all alike); the first run is warm-up
        for run in range(groups // RUN + 1):
            for name, fn in paths:
                for _ in range(RUN):
                    t0 = time.perf_counter()
                    fn(signals, states)
                    if run:
                        wall[name].append(time.perf_counter() - t0)
        a = _pcts(wall["two flushes"])
        line = (f"[bench transactions] {n_klines:5d} klines/group ({len(signals)} signals + {len(states)} states, "
                f"{nbytes / 1e3:,.0f} kB): two flushes {a[0]:.2f} / {a[1]:.2f} ms")
        for name in txns:
            b = _pcts(wall[name])
            line += f"; {name} {b[0]:.2f} / {b[1]:.2f} ms ({b[0] / a[0]:.2f}x / {b[1] / a[1]:.2f}x)"
        print(line)
    print(f"[bench transactions] load average after: {os.getloadavg()}")
    assert not errors, errors[:3]
    # every transaction committed, and with it the consumer group's offsets (the last group's)
    assert offset[0] == len(txns) * RUN * sum(groups // RUN + 1 for _, groups in SHAPES)
    got = cons.committed([TopicPartition(t_in, p) for p in range(n_in)], 30)
    assert [tp.offset for tp in got] == [offset[0] % 10] * n_in
    cons.close()
    for f in admin.delete_topics([t_state]).values():
        f.result()
