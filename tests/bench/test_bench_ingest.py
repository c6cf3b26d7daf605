"""Benchmark: the live ingest path (WS payload -> parse -> validate -> dedupe/gap -> encode -> produce)
against raw confluent-kafka produce of the same output bytes, in the same run, on the real broker.
Prints klines/s and the ratio; asserts only correctness (every message delivered), never speed.

    .venv/bin/pytest -m bench -s tests/bench/test_bench_ingest.py
"""
from __future__ import annotations

import time

import orjson
import polars as pl
import pytest

from conftest import RECORDED

STEP = 60_000
N_SYMBOLS = 100
N_MINUTES = 500


def _payloads() -> list[bytes]:
    df = pl.read_parquet(RECORDED / "klines_1h.parquet")
    syms = sorted(df["symbol"].unique().to_list())[:N_SYMBOLS]
    rows = {s: df.filter(pl.col("symbol") == s).head(N_MINUTES).iter_rows(named=True) for s in syms}
    rows = {s: list(r) for s, r in rows.items()}
    t0 = 1_780_000_000_000 // STEP * STEP
    out = []
    for i in range(N_MINUTES):
        ot = t0 + i * STEP
        for s in syms:
            r = rows[s][i % len(rows[s])]
            k = {"t": ot, "T": ot + STEP - 1, "s": s, "i": "1m", "f": 1, "L": 2, "o": repr(r["open"]),
                 "c": repr(r["close"]), "h": repr(r["high"]), "l": repr(r["low"]), "v": repr(r["volume"]),
                 "n": 10, "x": True, "q": repr(r["volume"] * r["close"]), "V": "0", "Q": "0", "B": "0"}
            out.append(orjson.dumps({"stream": f"{s.lower()}@kline_1m", "data": {"e": "kline", "E": ot + STEP,
                                                                                  "s": s, "k": k}}))
    return out, syms, t0


@pytest.mark.bench
@pytest.mark.kafka
@pytest.mark.timeout(300)
def test_bench_ingest_path_vs_raw_produce(settings):
    from infra.kafka_io import ensure_topics, producer, topic
    from ingest.pipeline import IngestCore
    from schemas import encode_kline

    payloads, syms, t0 = _payloads()
    n = len(payloads)
    ensure_topics(settings, ["klines", "dlq"])
    name = topic(settings, "klines")
    delivered = {"ingest": 0, "raw": 0}
    produced_bytes: list[tuple[bytes, bytes]] = []

    def run_ingest():
        p = producer(settings)

        def cb(err, _m):
            if err is None:
                delivered["ingest"] += 1

        def emit(k):
            v = encode_kline(k)
            produced_bytes.append((k.symbol.encode(), v))
            while True:
                try:
                    p.produce(name, key=k.symbol.encode(), value=v, on_delivery=cb)
                    return
                except BufferError:
                    p.poll(0.01)
        core = IngestCore("1m", emit, lambda *a: None, lambda: t0 + N_MINUTES * STEP + 1)
        core.add_symbols(syms, t0)
        t = time.perf_counter()
        for i, raw in enumerate(payloads):
            core.on_raw(raw)
            if i % 5000 == 0:
                p.poll(0)
        p.flush(60)
        dt = time.perf_counter() - t
        assert core.stats.produced == n and core.stats.rejected == 0
        return dt

    def run_raw():
        p = producer(settings)

        def cb(err, _m):
            if err is None:
                delivered["raw"] += 1
        t = time.perf_counter()
        for i, (key, value) in enumerate(produced_bytes):
            while True:
                try:
                    p.produce(name, key=key, value=value, on_delivery=cb)
                    break
                except BufferError:
                    p.poll(0.01)
            if i % 5000 == 0:
                p.poll(0)
        p.flush(60)
        return time.perf_counter() - t

    def parse_only():
        from ingest.ws import parse_kline_event
        t = time.perf_counter()
        for raw in payloads:
            parse_kline_event(raw, 0)
        return time.perf_counter() - t

    t_ingest = run_ingest()
    t_raw = run_raw()
    t_parse = parse_only()
    assert delivered == {"ingest": n, "raw": n}
    print(f"\n[bench ingest] {n} closed klines, {N_SYMBOLS} symbols, real broker {settings.kafka_bootstrap}")
    print(f"  ingest path (parse+validate+dedupe+encode+produce): {n / t_ingest:>10,.0f} klines/s  ({t_ingest:.2f} s)")
    print(f"  raw confluent-kafka produce of the same bytes:      {n / t_raw:>10,.0f} msgs/s    ({t_raw:.2f} s)")
    print(f"  parse+validate only:                                {n / t_parse:>10,.0f} klines/s  ({t_parse:.2f} s)")
    print(f"  ratio ingest / raw throughput: {t_raw / t_ingest:.2f}")
