"""The Faust worker on the real broker: equal to the pure core, deterministic, recoverable, scalable."""
from __future__ import annotations

import collections
import time

import orjson
import pytest

from harness import Worker, load_klines, produce, wait_signals
from infra import kafka_io
from processors.core import KlineProcessor
from processors.scoring import HeuristicScorer
from schemas import decode_signal, encode_kline

pytestmark = pytest.mark.kafka

SYMBOLS = ["BTCUSDT", "ETHUSDT", "SOLUSDT", "XRPUSDT", "DOGEUSDT", "1000PEPEUSDT", "ADAUSDT", "LINKUSDT"]


def expected_signals(klines, settings) -> dict[str, bytes]:
    """The uninterrupted, in-process run of the same core: signal_id -> bytes."""
    proc = KlineProcessor(HeuristicScorer(), settings.strategy_version, settings.interval, settings.htf_factor)
    states: dict[str, bytes] = {}
    out = {}
    for k in klines:
        r = proc.process([(k.symbol.encode(), encode_kline(k))], states.get)
        states.update(r.states)
        for _, raw in r.signals:
            out[decode_signal(raw).signal_id] = raw
    return out


def signals_by_id(settings) -> dict[str, list[bytes]]:
    got = collections.defaultdict(list)
    for m in kafka_io.read_topic(settings, "signals"):
        got[decode_signal(m.value()).signal_id].append(m.value())
    return got


def per_symbol_order_ok(settings) -> bool:
    last = {}
    for m in kafka_io.read_topic(settings, "signals"):
        s = decode_signal(m.value())
        key = (s.symbol, s.timeframe)
        if key in last and s.open_time < last[key]:
            return False
        last[key] = max(s.open_time, last.get(key, 0))
    return True


@pytest.fixture
def s1h(settings):
    s = settings.with_(interval="1h")
    kafka_io.ensure_topics(s, ["klines", "signals", "dlq"])
    yield s
    kafka_io.delete_namespace(s)


def test_worker_equals_core_and_rejects_bad_records(s1h):
    klines = load_klines("klines_1h.parquet", SYMBOLS, limit_per_symbol=300)
    expected = expected_signals(klines, s1h)
    bad = [(b"BTCUSDT", b"{not json"),
           (b"ETHUSDT", encode_kline([k for k in klines if k.symbol == "ETHUSDT"][-1]).replace(b'"high":', b'"high":-1,"x":')),  # duplicate key: high=-1
           (b"SOLUSDT", encode_kline(next(k for k in klines if k.symbol == "SOLUSDT"))),   # stale bar
           (b"SOLUSDT", encode_kline([k for k in klines if k.symbol == "SOLUSDT"][-1])),  # re-delivered bar
           (b"XRPUSDT", encode_kline(next(k for k in klines if k.symbol == "ADAUSDT")))]   # key is not the symbol
    produce(s1h, klines, raw_extra=bad)
    w = Worker(s1h)
    try:
        wait_signals(s1h, len(expected), workers=(w,))
        rejects = []
        deadline = time.monotonic() + 30
        while len(rejects) < 5 and time.monotonic() < deadline:
            rejects = [orjson.loads(m.value()) for m in kafka_io.read_topic(s1h, "dlq")]
            time.sleep(0.2)
    finally:
        assert w.stop() == 0, w.logs()[-2000:]
    got = signals_by_id(s1h)
    assert set(got) == set(expected)
    assert all(len(v) == 1 and v[0] == expected[k] for k, v in got.items())
    assert per_symbol_order_ok(s1h)
    reasons = sorted(r["reason"] for r in rejects)
    assert len(reasons) == 5, reasons
    assert any("malformed JSON" in r for r in reasons)
    assert any("Kline.high" in r for r in reasons)
    assert any("duplicate" in r for r in reasons)
    assert any("out-of-order" in r for r in reasons)
    assert any("is not the symbol" in r for r in reasons)


def test_two_runs_are_byte_identical(s1h, kafka_bootstrap, tmp_path):
    klines = load_klines("klines_1h.parquet", SYMBOLS[:4], limit_per_symbol=200)
    runs = []
    for i in range(2):
        s = s1h.with_(namespace=f"{s1h.namespace}-run{i}", data_dir=str(tmp_path / f"run{i}"))
        kafka_io.ensure_topics(s, ["klines", "signals", "dlq"])
        produce(s, klines)
        w = Worker(s)
        try:
            n = len(expected_signals(klines, s))
            wait_signals(s, n, workers=(w,))
        finally:
            assert w.stop() == 0
        by_symbol = collections.defaultdict(list)
        for m in kafka_io.read_topic(s, "signals"):
            by_symbol[m.key()].append(m.value())
        runs.append(dict(by_symbol))
        kafka_io.delete_namespace(s)
    assert runs[0] == runs[1]
    assert sum(len(v) for v in runs[0].values()) > 800


def test_recovers_after_sigkill(s1h):
    klines = load_klines("klines_1h.parquet", SYMBOLS, limit_per_symbol=400)
    expected = expected_signals(klines, s1h)
    half = len(klines) // 2
    produce(s1h, klines[:half])
    w = Worker(s1h, "w1")
    try:
        wait_signals(s1h, len(expected) // 4, workers=(w,))   # mid-stream
    finally:
        w.kill()
    produce(s1h, klines[half:])
    w2 = Worker(s1h, "w2")
    try:
        wait_signals(s1h, len(expected), workers=(w2,))
        time.sleep(2)  # let any re-delivered tail settle
    finally:
        assert w2.stop() == 0, w2.logs()[-2000:]
    got = signals_by_id(s1h)
    assert set(got) == set(expected), f"missing {len(set(expected) - set(got))}, extra {len(set(got) - set(expected))}"
    # re-delivery after the kill may repeat a record, but never with different content
    assert all(raw == expected[sid] for sid, raws in got.items() for raw in raws)


@pytest.mark.xfail(strict=False, reason="faust-streaming can stall after a take-over rebalance (consumed, never "
                   "committed); seen in about 1 of 8 runs here, more under load. README: Status and known limits")
def test_two_workers_split_partitions_and_take_over(s1h):
    klines = load_klines("klines_1h.parquet", SYMBOLS, limit_per_symbol=400)
    expected = expected_signals(klines, s1h)
    third = len(klines) // 3
    produce(s1h, klines[:third])
    a, b = Worker(s1h, "a"), Worker(s1h, "b")
    try:
        wait_signals(s1h, len(expected) // 4, workers=(a, b))
        produce(s1h, klines[third:2 * third])
        wait_signals(s1h, len(expected) // 2, workers=(a, b))
        assert a.stop() == 0                      # b takes over a's partitions from the changelog
        produce(s1h, klines[2 * third:])
        wait_signals(s1h, len(expected), workers=(b,))
        stats_a = orjson.loads(a.stats_file.read_bytes())
        deadline = time.monotonic() + 10   # stats files are refreshed every 0.5 s
        while True:
            stats_b = orjson.loads(b.stats_file.read_bytes())
            if stats_b["klines"] > 0 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
    finally:
        a.stop()
        assert b.stop() == 0, b.logs()[-2000:]
    got = signals_by_id(s1h)
    assert set(got) == set(expected)
    assert all(raw == expected[sid] for sid, raws in got.items() for raw in raws)
    assert stats_a["klines"] > 0 and stats_b["klines"] > 0
