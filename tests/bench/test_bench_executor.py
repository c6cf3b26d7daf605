"""Executor benchmark (prints; asserts only that the work was done).

* decision latency: signal consumed -> entry order handed to the broker (p50 / p99), in-process
  (engine only) and through the Kafka service (from the poll that returned the signal's batch);
* throughput: signals/s through the engine with the paper broker, and through the Kafka service
  (transactions of <= 500 signals, state snapshot per transaction).
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

_HELPERS = str(Path(__file__).resolve().parents[1] / "executor")
if _HELPERS not in sys.path:
    sys.path.insert(0, _HELPERS)
import exec_helpers  # noqa: E402,F401  (first: fixes tests/executor shadowing the executor package)

import pytest  # noqa: E402

from exec_helpers import EXCHANGE_INFO, recorded_signals  # noqa: E402
from executor.brokers.paper import PaperBroker  # noqa: E402
from executor.config import ExecutorConfig  # noqa: E402
from executor.engine import Engine  # noqa: E402
from executor.instruments import InstrumentBook, load_exchange_info  # noqa: E402

N_BARS = 10_000          # x 2 symbols


def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else float("nan")


@pytest.fixture(scope="module")
def signals():
    return recorded_signals(N_BARS, symbols=("BTCUSDT", "ETHUSDT"), setup_every=5)


@pytest.mark.bench
def test_bench_engine_in_process(signals):
    cfg = ExecutorConfig()
    broker = PaperBroker(cfg.paper)
    lat: list[float] = []
    t_sig = [0]
    orig = broker.submit

    def timed(order, ts, *a, **kw):
        if order.leg == "entry":
            lat.append((time.perf_counter_ns() - t_sig[0]) / 1000.0)
        return orig(order, ts, *a, **kw)
    broker.submit = timed
    eng = Engine(cfg, broker, InstrumentBook(load_exchange_info(EXCHANGE_INFO)))
    records = 0
    t0 = time.perf_counter()
    for s in signals:
        t_sig[0] = time.perf_counter_ns()
        records += len(eng.process(s))
    dt = time.perf_counter() - t0
    print(f"\n[bench executor/engine] {len(signals)} signals in {dt:.2f} s = {len(signals) / dt:,.0f} signals/s; "
          f"{records} records; {len(lat)} entries; decision latency p50 {pct(lat, .5):.1f} us, p99 {pct(lat, .99):.1f} us")
    assert eng.stats.signals == len(signals) and lat


@pytest.mark.bench
@pytest.mark.kafka
def test_bench_service_kafka(settings, signals):
    from executor.service import ensure_executor_topics, run_executor
    from infra import kafka_io
    from schemas.signal import encode_signal
    s = settings.with_(partitions=1)
    try:
        ensure_executor_topics(s)
        p = kafka_io.producer(s)
        t = kafka_io.topic(s, "signals")
        for x in signals:
            p.produce(t, key=x.symbol.encode(), value=encode_signal(x))
            p.poll(0)
        p.flush(60)
        cfg = ExecutorConfig(exchange_info=str(EXCHANGE_INFO))
        stats = run_executor(s, until_idle=True, idle_s=1.0, cfg=cfg)
        busy = stats.elapsed_s - 1.0
        lat = stats.decision_us
        print(f"\n[bench executor/kafka] {stats.signals} signals, {stats.records} records, {stats.batches} transactions "
              f"in {busy:.2f} s (idle wait excluded) = {stats.signals / busy:,.0f} signals/s; "
              f"decision latency (batch polled -> entry order to broker) p50 {pct(lat, .5) / 1000:.2f} ms, "
              f"p99 {pct(lat, .99) / 1000:.2f} ms over {len(lat)} entries")
        assert stats.signals == len(signals)
    finally:
        kafka_io.delete_namespace(s)
