"""The Prometheus endpoints, scraped over HTTP on loopback while the real processes run on the real broker."""
from __future__ import annotations

import socket
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from harness import Worker, load_klines, produce, wait_until
from scenarios import SYMBOLS
from infra import kafka_io
from processors.health import lag, partition_lag


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scrape(port: int) -> dict[tuple[str, tuple], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        assert resp.status == 200
        text = resp.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def test_partition_lag_is_the_sum_that_lag_reports():
    stats = {"positions": {"0": 10, "1": None, "2": 7}, "end_offsets": {"0": 15, "1": 4, "2": 7}}
    assert partition_lag(stats) == {"0": 5, "1": 4, "2": 0}
    assert lag(stats) == 9
    assert partition_lag({"positions": {}, "end_offsets": {"0": None}}) == {"0": None} and lag(
        {"end_offsets": {"0": None}}) is None


@pytest.mark.kafka
def test_worker_metrics_endpoint_moves_with_the_work(settings):
    settings = settings.with_(interval="1h")
    port = free_port()
    klines = load_klines("klines_1h.parquet", SYMBOLS[:3], limit_per_symbol=150)
    kafka_io.ensure_topics(settings, ["klines", "signals", "dlq"])
    w = Worker(settings.with_(metrics_port=port))
    try:
        wait_until(lambda: w.stats_file.exists(), "worker up", (w,))
        first = scrape(port)
        assert first[("smc_processors_klines_total", ())] == 0
        produce(settings, klines)
        wait_until(lambda: w.stats()["klines"] >= len(klines) and lag(w.stats()) == 0, "klines taken", (w,))
        wait_until(lambda: scrape(port)[("smc_processors_klines_total", ())] >= len(klines), "scrape moved", (w,))
        m = scrape(port)
        st = w.stats()
        assert m[("smc_processors_klines_total", ())] == st["klines"] == len(klines)
        assert m[("smc_processors_signals_total", ())] == st["signals"] > 0
        assert m[("smc_processors_rejects_total", ())] == st["rejects"]
        for name in ("redelivered", "held_back", "seeks"):
            assert (f"smc_processors_{name}_total", ()) in m
        ends = kafka_io.end_offsets(settings, "klines")
        lags = {dict(k[1])["partition"]: v for k, v in m.items() if k[0] == "smc_processors_partition_lag"}
        assert set(lags) == {str(p) for p in ends} and all(v == 0 for v in lags.values())
        assert {dict(k[1])["partition"]: v for k, v in m.items() if k[0] == "smc_processors_partition_end_offset"} \
            == {str(p): float(hi) for p, (lo, hi) in ends.items()}
    finally:
        w.stop()
    with pytest.raises(OSError):       # the endpoint goes with the process
        scrape(port)


@pytest.mark.kafka
def test_executor_metrics_endpoint_counts_its_work(settings):
    from executor.service import ExecutorService
    port = free_port()
    svc = ExecutorService(settings.with_(metrics_port=port - 1))
    try:
        svc.start()
        m = scrape(port)
        for name in ("signals", "orders", "fills", "alerts", "rejects"):
            assert m[(f"smc_executor_{name}_total", ())] == 0
        svc.stats.signals, svc.stats.fills = 3, 2      # read at each scrape: the counts the service keeps
        m = scrape(port)
        assert m[("smc_executor_signals_total", ())] == 3 and m[("smc_executor_fills_total", ())] == 2
    finally:
        svc.close()
    with pytest.raises(OSError):
        scrape(port)
