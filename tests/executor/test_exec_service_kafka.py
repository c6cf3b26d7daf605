"""The executor service on the real Kafka broker: exactly-once across SIGKILL, DLQ, SIGTERM."""
from __future__ import annotations

import exec_helpers  # noqa: F401  (first: makes `executor` the real package, see its docstring)

import os
import signal
import subprocess
import sys
import time
from collections import Counter

import pytest

from executor.service import ensure_executor_topics, run_executor, send_command
from infra import kafka_io
from schemas.signal import encode_signal
from schemas.trading import decode_order, decode_position
from exec_helpers import EXCHANGE_INFO, ROOT, fake, read_topic, recorded_signals  # noqa: F401  (fake: fixture)

pytestmark = pytest.mark.kafka

OUT = ("decisions", "orders", "fills", "positions", "equity", "dlq")


def produce_signals(settings, signals, bad_at: int | None = None) -> None:
    ensure_executor_topics(settings)
    p = kafka_io.producer(settings)
    t = kafka_io.topic(settings, "signals")
    for i, s in enumerate(signals):
        if i == bad_at:
            p.produce(t, key=b"BTCUSDT", value=b'{"signal_id": "broken", "side": "sideways"}')
        p.produce(t, key=s.symbol.encode(), value=encode_signal(s))
    p.flush(30)


def run_subprocess(settings, crash_after: int = 0, until_idle: bool = True, wait: bool = True):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SMC_", "BINANCE_"))}
    env.update(SMC_KAFKA_BOOTSTRAP=settings.kafka_bootstrap, SMC_NAMESPACE=settings.namespace,
               SMC_PARTITIONS=str(settings.partitions), SMC_EQUITY="10000", SMC_EXEC_EXCHANGE_INFO=str(EXCHANGE_INFO),
               SMC_EXEC_MAX_POSITIONS="2", SMC_EXEC_CRASH_AFTER=str(crash_after))
    args = [sys.executable, "-m", "executor", "run"] + (["--until-idle", "--idle-s", "1.5"] if until_idle else [])
    proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if not wait:
        return proc
    out, err = proc.communicate(timeout=120)
    return proc.returncode, out, err


def strip(rec: dict) -> dict:
    drop = ("wall_ts", "ts", "topic") if "raw_b64" in rec else ("wall_ts",)   # rejects: wall clock, namespace
    return {k: v for k, v in rec.items() if k not in drop}


@pytest.fixture
def single_partition(settings):
    # one partition: a total order of all symbols, so two runs see the same sequence (see service doc)
    s = settings.with_(partitions=1)
    yield s
    kafka_io.delete_namespace(s)


def test_sigkill_between_produce_and_commit_is_exactly_once(single_partition, audit_store):
    signals = recorded_signals(1200, symbols=("BTCUSDT", "ETHUSDT"))      # 2 400 signals, ~100 trades
    ref = single_partition
    crash = ref.with_(namespace=ref.namespace + "k")
    produce_signals(ref, signals, bad_at=1700)
    produce_signals(crash, signals, bad_at=1700)
    try:
        rc, out, err = run_subprocess(ref)
        assert rc == 0, err[-2000:]
        # killed twice mid-transaction (outputs flushed to the log but not committed), then completed
        for crash_after in (1300, 700):
            rc, out, err = run_subprocess(crash, crash_after=crash_after)
            assert rc == -signal.SIGKILL, (rc, err[-2000:])
        rc, out, err = run_subprocess(crash)
        assert rc == 0, err[-2000:]

        ref_out = {b: read_topic(ref, b) for b in OUT}
        crash_out = {b: read_topic(crash, b) for b in OUT}
        # the aborted transactions really did write records (a read_uncommitted consumer sees them)
        dirty = read_topic(crash, "orders", "read_uncommitted")
        assert len(dirty) > len(crash_out["orders"])

        orders = [decode_order(o) for o in crash_out["orders"]]
        counts = Counter((o.client_order_id, o.status) for o in orders)
        assert len(counts) > 100 and max(counts.values()) == 1, counts.most_common(3)
        assert len(crash_out["dlq"]) == 1 and "Signal." in crash_out["dlq"][0]["reason"]
        # the same records, in the same order, as the uninterrupted run (wall clock aside)
        for base in OUT:
            assert [strip(r) for r in crash_out[base]] == [strip(r) for r in ref_out[base]], base
        final_ref = {p["position_id"]: p for p in map(strip, ref_out["positions"])}
        assert sum(1 for p in final_ref.values() if p["status"] == "closed") > 20
        assert strip(crash_out["equity"][-1]) == strip(ref_out["equity"][-1])

        # the audit trail (ClickHouse, FINAL) shows every order status once and the same final positions
        audit_store.insert("orders", orders + orders[:50])           # at-least-once delivery to the sink
        audit_store.insert("positions", [decode_position(p) for p in crash_out["positions"]])
        assert audit_store.count("orders") == len(counts)
        _, rows = audit_store.query(f"SELECT position_id, status, realized_pnl FROM {audit_store.database}.positions FINAL")
        assert {r[0]: (r[1], pytest.approx(r[2])) for r in rows} == \
            {k: (v["status"], v["realized_pnl"]) for k, v in final_ref.items()}
    finally:
        kafka_io.delete_namespace(crash)


def test_sigterm_shuts_down_cleanly_and_restart_resumes(single_partition):
    s = single_partition
    signals = recorded_signals(300, symbols=("BTCUSDT",))
    produce_signals(s, signals[:200])
    proc = run_subprocess(s, until_idle=False, wait=False)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len(read_topic(s, "decisions")) < 200:
            time.sleep(0.3)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err[-2000:]
    assert "200 signals" in out
    produce_signals(s, signals[200:])
    stats = run_executor(s.with_(), idle_s=1.0)
    assert stats.restored and stats.signals == 100          # resumed after the 200 committed ones
    decisions = read_topic(s, "decisions")
    assert len({d["signal_id"] for d in decisions if d["action"] != "exit"}) == 300


def test_flatten_command_and_bad_command(single_partition):
    s = single_partition
    from exec_helpers import T0, bar, MIN
    produce_signals(s, [bar("BTCUSDT", T0, 50_000, 50_000, 50_000, 50_000, "long", 0.9, 50_000, 49_500, 51_000),
                        bar("BTCUSDT", T0 + MIN, 50_000, 50_100, 49_900, 50_100)])
    assert run_executor(s, idle_s=1.0).signals == 2
    send_command(s, {"cmd": "flatten", "symbol": "BTCUSDT"})
    send_command(s, {"cmd": "dance"})
    stats = run_executor(s, idle_s=1.0)
    assert (stats.commands, stats.rejects) == (1, 1)
    produce_signals(s, [bar("BTCUSDT", T0 + 2 * MIN, 50_100, 50_100, 50_100, 50_100),
                        bar("BTCUSDT", T0 + 3 * MIN, 50_200, 50_200, 50_200, 50_200)])
    run_executor(s, idle_s=1.0)
    closed = [p for p in read_topic(s, "positions") if p["status"] == "closed"]
    assert [p["exit_reason"] for p in closed] == ["manual"]
    assert any("dance" in r["reason"] for r in read_topic(s, "dlq"))


def test_exchange_effects_commit_one_signal_at_a_time(single_partition, fake):
    """With a broker that acts on an exchange, a transaction never holds the orders of two signals: a
    restart replays at most the one signal whose orders were in flight (a longer replay meets an exchange
    that later signals already changed and decides differently: the SIGKILL chaos test's seed 8)."""
    from exec_helpers import KEY, SECRET
    from executor.brokers.binance import BinanceBroker, BinanceClient
    from executor.config import ExecutorConfig
    from executor.service import ExecutorService
    from schemas.trading import Order

    signals = recorded_signals(600, symbols=("BTCUSDT", "ETHUSDT", "SOLUSDT"))
    produce_signals(single_partition, signals)          # all there before the executor starts: full batches
    broker = BinanceBroker(BinanceClient(fake.base_url, KEY, SECRET, timeout=2.0, recv_window=1000),
                           unknown_margin_s=0.3, guard_restart=False)
    svc = ExecutorService(single_partition.with_(user_stream=False), ExecutorConfig(exchange_info=str(EXCHANGE_INFO)),
                          broker, batch_max=500)
    svc.start()
    signals_with_orders_per_txn: list[set[str]] = []
    current: set[str] = set()
    process = svc.engine.process

    def watched_process(sig, **kw):      # which bars made orders (the order records name their position's signal)
        recs = process(sig, **kw)
        if any(isinstance(r, Order) for r in recs):
            current.add(sig.signal_id)
        return recs
    svc.engine.process = watched_process

    class SpyProducer:          # the real transactional producer, watched (its methods are read-only)
        def __init__(self, real):
            self.real = real

        def __getattr__(self, name):
            return getattr(self.real, name)

        def commit_transaction(self, *a):
            signals_with_orders_per_txn.append(set(current))
            current.clear()
            return self.real.commit_transaction(*a)
    svc.producer = SpyProducer(svc.producer)
    try:
        stats = svc.run(until_idle=True, idle_s=1.5, max_seconds=120)
    finally:
        svc.close()
    with_orders = [t for t in signals_with_orders_per_txn if t]
    assert stats.signals == len(signals) and stats.orders > 0, stats
    assert len(with_orders) >= 5, signals_with_orders_per_txn       # enough trades for the check to mean something
    assert all(len(t) == 1 for t in with_orders), [t for t in with_orders if len(t) > 1]
    # nothing lost or doubled by ending transactions early: each order record of the log once
    orders = read_topic(single_partition, "orders")
    keys = Counter((o["client_order_id"], o["status"]) for o in orders)
    assert orders and max(keys.values()) == 1, keys.most_common(3)
