"""The Prometheus endpoints, scraped over HTTP on loopback while the real processes run on the real broker."""
from __future__ import annotations

import json
import time
import urllib.error
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from harness import Worker, check_alive, load_klines, produce, wait_until
from scenarios import SYMBOLS
from infra import kafka_io
from processors.health import lag, partition_lag
from tests.fakes.ports import free_port_run


def free_port() -> int:
    return free_port_run(1)


def scrape(port: int) -> dict[tuple[str, tuple], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        assert resp.status == 200
        text = resp.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def probe(port: int, path: str) -> tuple[int, dict]:
    """(status, JSON body) of /health or /ready; a 503 is an answer, not an error."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_endpoints_serve_metrics_and_probe_verdicts():
    from infra.metrics import Figure, FiguresCollector, serve
    from infra.probes import Probe
    figures = {"things": 3, "ok": True}

    def ready() -> Probe:
        if figures["ok"]:
            return Probe(True, {"ready": True, "things": figures["things"]})
        return Probe(False, {"ready": False, "reason": "stuck", "things": figures["things"]})

    def broken() -> Probe:
        raise RuntimeError("no figures")

    server = serve(0, FiguresCollector("smc_test", lambda: figures, [Figure("things", "things done")]),
                   probes={"/ready": ready, "/health": broken})
    try:
        assert scrape(server.port)[("smc_test_things_total", ())] == 3
        assert probe(server.port, "/ready") == (200, {"ready": True, "things": 3})
        figures.update(things=4, ok=False)            # read at each request, never cached
        assert probe(server.port, "/ready") == (503, {"ready": False, "reason": "stuck", "things": 4})
        assert scrape(server.port)[("smc_test_things_total", ())] == 4
        status, body = probe(server.port, "/health")  # a probe that fails is not an "ok"
        assert status == 503 and "no figures" in body["reason"]
        status, body = probe(server.port, "/nothing")
        assert status == 404 and set(body["paths"]) == {"/metrics", "/ready", "/health"}
    finally:
        server.close()
    with pytest.raises(OSError):
        probe(server.port, "/ready")


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
def test_worker_ready_while_it_processes_and_caught_up_after(settings):
    """/health and /ready of the real worker: ready (caught up) on an empty topic once assigned, ready while
    it takes the klines, caught up on the broker's end offsets after. Every answer carries its figures."""
    settings = settings.with_(interval="1h")
    port = free_port()
    klines = load_klines("klines_1h.parquet", SYMBOLS[:6], limit_per_symbol=400)
    kafka_io.ensure_topics(settings, ["klines", "signals", "dlq"])
    w = Worker(settings.with_(metrics_port=port))
    try:
        wait_until(lambda: w.stats_file.exists(), "worker up", (w,))
        status, body = probe(port, "/health")
        assert status == 200 and body["alive"] and body["beats"] > 0
        wait_until(lambda: probe(port, "/ready")[0] == 200, "ready on the empty topic", (w,))
        status, body = probe(port, "/ready")
        assert body["state"] == "ok" and body["lag"] == 0 and body["partitions"] == settings.partitions
        produce(settings, klines)
        seen = []
        while True:
            status, body = probe(port, "/ready")
            seen.append((status, body["state"], body["lag"]))
            assert status == 200, body
            if body["lag"] == 0 and w.stats()["klines"] >= len(klines):
                break
            check_alive((w,))
            time.sleep(0.1)
        ends = kafka_io.end_offsets(settings, "klines")
        assert body["state"] == "ok" and body["end_offsets"] == {str(p): hi for p, (lo, hi) in ends.items()}
        assert set(body["partition_lag"].values()) == {0} and sum(hi for lo, hi in ends.values()) == len(klines)
        assert all(status == 200 for status, _, _ in seen), seen
        status, body = probe(port, "/health")
        assert status == 200 and body["beat_age_s"] < 5
    finally:
        w.stop()
    with pytest.raises(OSError):
        probe(port, "/ready")


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


@pytest.mark.kafka
def test_executor_ready_while_its_loop_runs_and_not_halted(settings):
    import threading
    from executor.service import ExecutorService
    port = free_port()
    svc = ExecutorService(settings.with_(metrics_port=port - 1))
    loop = threading.Thread(target=svc.run, kwargs={"max_seconds": 60}, daemon=True)
    try:
        svc.start()
        status, body = probe(port, "/ready")
        assert status == 503 and "not started" in body["reason"]       # started, its loop not running yet
        status, body = probe(port, "/health")
        assert status == 200 and body["beats"] == 0 and "starting" in body["reason"]
        loop.start()
        wait_until(lambda: probe(port, "/ready")[0] == 200, "executor ready")
        status, body = probe(port, "/ready")
        assert body["reason"] == "consuming" and body["halted"] is None and body["beat_age_s"] < 5
        assert probe(port, "/health")[1]["beats"] > 0
        svc.engine.halted = "reconciliation with the exchange failed: test"   # as _reconcile halts it
        status, body = probe(port, "/ready")
        assert status == 503 and body["halted"] == svc.engine.halted and "trading halted" in body["reason"]
        assert probe(port, "/health")[0] == 200                         # halted is not dead
    finally:
        svc.stop()
        if loop.is_alive():
            loop.join(10)
        svc.close()
