"""Live mode end to end: `run_live` against the fake Binance and the REAL local Kafka broker.

Five real symbol names, 30 one-minute bars pushed over the fake's WebSocket as fast as the test can:
the live ingest, the Faust worker, the executor (paper) and the audit sink run as child processes of
run_live (in a thread here, stopped with stop_event). Then: every (symbol, minute) is in `klines` once,
one 1m signal per kline plus the 5m ones, the executor consumed every signal, the audit sink wrote the
klines and signals into ClickHouse, run_live returned 0 and none of its children is left.

The fake's clock is the test's; the child ingest's clock is the wall clock. The fake's bars are put on
a grid two hours AHEAD of the wall clock and the ingest is told `--since <first bar>`: then no bar is
ever "due" by the wall clock (no REST backfill of bars the fake has not closed yet) and every bar
comes live over the WebSocket, in order.
"""
from __future__ import annotations

import collections
import io
import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
from rich.console import Console

from fakes.fake_binance import FakeBinance, build_exchange_info
from infra import kafka_io
from infra.live import LiveError, check_trading, group_lag, run_live
from infra.settings import REPO_ROOT
from schemas import decode_kline, decode_reject, decode_signal

STEP = 60_000
NAMES = ["BTCUSDT", "ETHUSDT", "SOLUSDT", "BNBUSDT", "XRPUSDT"]
BARS = 30


def wait_for(cond, timeout: float, what: str, interval: float = 0.25):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if cond():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


_QUERY = """
import json, sys
from infra.clickhouse import AuditStore
s = AuditStore(sys.argv[1], database="smc")
out = {t: s.count(t) for t in ("klines", "signals", "decisions")}
out["kline_keys"] = s.scalar("SELECT uniqExact(symbol, open_time) FROM smc.klines FINAL")
out["signals_1m"] = s.count("signals", "timeframe = '1m'")
print(json.dumps(out))
"""


def _audit_counts(dsn: str) -> dict:
    """Counts from the chDB store in a fresh process (chDB: one engine, one path per process)."""
    r = subprocess.run([sys.executable, "-c", _QUERY, dsn], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.mark.kafka
@pytest.mark.timeout(240)
def test_live_mode_end_to_end(settings, tmp_path):
    htf = 5 * STEP
    origin = (int(time.time() * 1000) // htf + 24) * htf          # 2 h ahead of the wall clock, on the 5m grid
    out = io.StringIO()
    with FakeBinance(build_exchange_info(NAMES), start_ms=origin) as fb:
        # the fake market runs 2 h ahead of the wall clock (so ingest's wall-clock gap checks never see its
        # future bars as missing): declare its range, or the processors reject its bars as from the future
        metrics_port = _free_ports()
        s = settings.with_(binance_rest_url=fb.rest_url, binance_ws_url=fb.ws_url,
                           clickhouse_dsn=f"chdb://{tmp_path / 'chdb'}", replay_end=origin + 24 * htf,
                           metrics_port=metrics_port)
        stop = threading.Event()
        result: dict = {}

        def main():
            try:
                result["rc"] = run_live(s, Console(file=out, width=140), symbols=NAMES, stop_event=stop,
                                        ingest_args=["--since", str(origin)], status_every=1.0,
                                        explicit_broker=True, stop_timeout=20, drain_s=15,
                                        backoff_s=0.5)
            except BaseException as exc:      # surfaced below
                result["error"] = exc
        t0 = time.monotonic()
        th = threading.Thread(target=main, name="run-live", daemon=True)
        th.start()
        status_path = tmp_path / "live" / "status.json"
        try:
            wait_for(lambda: sum(len(c) for c in fb.connections()) == len(NAMES) or not th.is_alive(), 60,
                     "the live ingest subscribed to the 5 streams")
            assert th.is_alive(), out.getvalue()
            t_up = time.monotonic() - t0
            sent = sum(fb.publish() for _ in range(BARS))
            assert sent == BARS * len(NAMES)
            n_klines = BARS * len(NAMES)
            n_signals = n_klines + (BARS // 5) * len(NAMES)       # one 1m signal per kline + the 5m bars
            wait_for(lambda: kafka_io.topic_size(s, "klines") >= n_klines, 30, "klines produced")
            wait_for(lambda: kafka_io.topic_size(s, "signals") >= n_signals, 60, "signals produced")
            wait_for(lambda: group_lag(s, kafka_io.group(s, "executor"), ["signals"]) == 0, 60,
                     "the executor consumed every signal")
            wait_for(lambda: kafka_io.topic_size(s, "decisions") > 0, 30, "decisions")
            # the Prometheus endpoints moved with the work: every signal counted by both, no lag left
            wait_for(lambda: _scrape(metrics_port).get("smc_processors_signals_total") == n_signals, 10,
                     "the worker's signals counter")
            scraped = _scrape_all(metrics_port)
            assert scraped["smc_processors_klines_total"][0] >= n_klines
            assert scraped["smc_processors_partition_lag"] and set(scraped["smc_processors_partition_lag"]) == {0.0}
            wait_for(lambda: _scrape(metrics_port + 1).get("smc_executor_signals_total") == n_signals, 10,
                     "the executor's signals counter")
            # /health and /ready: all alive; the worker caught up on every partition, the executor consuming,
            # the ingest's shard connected
            for port in (metrics_port, metrics_port + 1, metrics_port + 2):
                assert _probe(port, "/health")[0] == 200
            status_code, ready = _probe(metrics_port, "/ready")
            assert status_code == 200 and ready["state"] == "ok" and ready["lag"] == 0, ready
            status_code, ready = _probe(metrics_port + 1, "/ready")
            assert status_code == 200 and ready["signals"] == n_signals and ready["halted"] is None, ready
            status_code, ingest = _probe(metrics_port + 2, "/ready")
            assert status_code == 200 and ingest["symbols"] == len(NAMES), ingest
            assert ingest["shards"] and all(sh["connected"] for sh in ingest["shards"].values()), ingest
            assert _scrape(metrics_port + 2)["smc_ingest_closed_total"] == n_klines
            status = json.loads(status_path.read_text())
            assert set(status["children"]) == {"audit", "executor", "processors", "ingest"}
            assert all(c["state"] == "running" and c["restarts"] == 0 for c in status["children"].values()), status
            t_flow = time.monotonic() - t0
            # supervision: a child killed hard is restarted (backoff), the others keep running
            killed = status["children"]["executor"]["pid"]
            os.kill(killed, signal.SIGKILL)

            def restarted():
                c = json.loads(status_path.read_text())["children"]["executor"]
                return c["restarts"] == 1 and c["state"] == "running" and c["pid"] != killed
            wait_for(restarted, 30, "the executor restarted")
            status = json.loads(status_path.read_text())
            assert status["children"]["executor"]["exit_codes"] == [-signal.SIGKILL]
            pids = [p for c in status["children"].values() for p in c["pids"]]
            assert killed in pids and len(pids) == 5
        finally:
            stop.set()
            th.join(120)
        t_stop = time.monotonic() - t0
        assert not th.is_alive(), "run_live did not return"
        assert "error" not in result, result.get("error")
        assert result["rc"] == 0, out.getvalue()[-3000:]

    # no orphans: every child run_live started is gone (and reaped)
    assert pids and all(_gone(p) for p in pids), pids
    final = json.loads(status_path.read_text())
    assert all(c["state"] == "stopped" for c in final["children"].values()), final
    # the children log JSON lines (SMC_LOG_FORMAT=json from the supervisor), without terminal codes; only
    # what a child prints itself (its final summary) is plain text
    process_of = {"ingest": "ingest", "processors": "worker", "executor": "executor", "audit": "sink"}
    for name, process in process_of.items():
        text = (tmp_path / "live" / f"{name}.log").read_text()
        assert "\x1b" not in text, name
        records = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
        processes = {r["process"] for r in records}
        assert "supervisor" in processes and processes <= {"supervisor", process}, (name, processes)
        if name in ("ingest", "executor"):        # both log at INFO (the worker runs at warning, the sink is quiet)
            assert process in processes, name
        assert {r["run"] for r in records} == {s.namespace}, name

    # klines: every (symbol, minute) exactly once, all live
    ks = [decode_kline(m.value()) for m in kafka_io.read_topic(s, "klines")]
    keys = [(k.symbol, k.open_time) for k in ks]
    assert len(keys) == len(set(keys)) == n_klines
    assert set(keys) == {(n, origin + i * STEP) for n in NAMES for i in range(BARS)}
    assert {k.source for k in ks} == {"live"}
    # nothing in the dlq: no stage (ingest, processors, executor) saw a bar twice or a bad record
    dlq = [decode_reject(m.value()) for m in kafka_io.read_topic(s, "dlq")]
    assert dlq == [], [(r.stage, r.reason) for r in dlq[:5]]
    assert "ClickHouse chDB" in out.getvalue() and "inter.broker.protocol.version" in out.getvalue()

    # signals: one 1m signal per kline, plus one per closed 5m bar
    sigs = [decode_signal(m.value()) for m in kafka_io.read_topic(s, "signals")]
    by_tf = collections.Counter(x.timeframe for x in sigs)
    assert by_tf["1m"] == n_klines, by_tf
    assert {(x.symbol, x.open_time) for x in sigs if x.timeframe == "1m"} == set(keys)
    assert by_tf["5m"] == (BARS // 5) * len(NAMES), by_tf
    assert len({x.signal_id for x in sigs}) == len(sigs)

    # the executor's decisions and the audit trail (read after the audit child stopped, in a subprocess)
    assert kafka_io.topic_size(s, "decisions") > 0
    counts = _audit_counts(s.clickhouse_dsn)
    assert counts["klines"] == counts["kline_keys"] == n_klines, counts
    assert counts["signals"] == len(sigs) and counts["signals_1m"] == n_klines, counts
    assert counts["decisions"] > 0, counts
    print(f"\nlive mode: up {t_up:.1f}s, flowed {t_flow:.1f}s, stopped at {t_stop:.1f}s; signals {dict(by_tf)}; "
          f"audit {counts}")


@pytest.mark.parametrize("broker, trade_live, live_trading, keys, expect", [
    ("paper", False, False, False, ["--broker", "paper"]),
    ("paper", True, True, False, "needs SMC_BROKER=binance"),
    ("binance", True, False, True, "SMC_LIVE_TRADING=1"),
    ("binance", False, False, False, "BINANCE_API_KEY"),
    ("binance", False, False, True, ["--broker", "binance"]),              # testnet
    ("binance", True, True, True, ["--broker", "binance", "--live"]),
    ("bitmex", False, False, True, "unknown broker"),
])
def test_trading_guard(broker, trade_live, live_trading, keys, expect):
    from infra.settings import load_settings
    st = load_settings(env={}).with_(broker=broker, live_trading=live_trading,
                                     api_key="k" if keys else "", api_secret="s" if keys else "")
    if isinstance(expect, list):
        assert check_trading(st, trade_live) == expect
    else:
        with pytest.raises(LiveError, match=expect):
            check_trading(st, trade_live)


def test_refusal_starts_nothing(tmp_path):
    from infra.settings import load_settings
    st = load_settings(env={}).with_(broker="binance", data_dir=str(tmp_path), kafka_bootstrap="127.0.0.1:1",
                                     api_key="k", api_secret="s")
    out = io.StringIO()
    assert run_live(st, Console(file=out), trade_live=True) == 2
    assert "SMC_LIVE_TRADING=1" in out.getvalue()
    assert not (tmp_path / "live" / "status.json").exists()


@pytest.mark.kafka
@pytest.mark.timeout(120)
def test_smc_run_live_data_stops_on_ctrl_c(settings, tmp_path):
    """The real command in its own process: `smc run --live-data`, then SIGINT: exit 0, no child left."""
    from infra.settings import to_env
    with FakeBinance(build_exchange_info(NAMES)) as fb:
        metrics_port = _free_ports()
        s = settings.with_(binance_rest_url=fb.rest_url, binance_ws_url=fb.ws_url,
                           clickhouse_dsn=f"chdb://{tmp_path / 'chdb'}", metrics_port=metrics_port)
        env = dict(os.environ, **to_env(s))
        proc = subprocess.Popen([sys.executable, "-m", "infra.cli", "run", "--live-data"], cwd=REPO_ROOT, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        status_path = tmp_path / "live" / "status.json"
        try:
            def all_running():
                if not status_path.exists():
                    return proc.poll() is not None
                ch = json.loads(status_path.read_text())["children"]
                return all(c["state"] == "running" for c in ch.values())
            wait_for(all_running, 60, "four running children")
            # the Faust worker is up once it dumps its stats (a SIGTERM before that ends it with -15)
            wait_for(lambda: (tmp_path / "live" / "worker.stats.json").exists() or proc.poll() is not None, 60,
                     "the processors worker up")
            wait_for(lambda: sum(len(c) for c in fb.connections()) == len(NAMES) or proc.poll() is not None, 30,
                     "the ingest subscribed")
            assert proc.poll() is None, proc.stdout.read().decode(errors="replace")[-3000:]
            # what an operator's tools see of the live run: `smc health` and both Prometheus endpoints
            health = subprocess.run([sys.executable, "-m", "infra.cli", "health"], cwd=REPO_ROOT, env=env,
                                    capture_output=True, text=True, timeout=60)
            assert health.returncode == 0 and health.stdout.startswith("ok: 4 parts running"), health.stdout
            wait_for(lambda: "smc_processors_klines_total" in _scrape(metrics_port), 30, "the worker's metrics")
            assert "smc_executor_signals_total" in _scrape(metrics_port + 1)
            pids = [c["pid"] for c in json.loads(status_path.read_text())["children"].values()]
            proc.send_signal(signal.SIGINT)
            text = proc.communicate(timeout=90)[0].decode(errors="replace")
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
    assert proc.returncode == 0, text[-3000:]
    assert "stopped: ingest exit 0, processors exit 0, executor exit 0, audit exit 0" in text, text[-3000:]
    assert all(_gone(p) for p in pids), pids
    after = subprocess.run([sys.executable, "-m", "infra.cli", "health"], cwd=REPO_ROOT, env=env,
                           capture_output=True, text=True, timeout=60)
    assert after.returncode == 1 and after.stdout.startswith("not running: "), after.stdout


def _free_ports(n: int = 3) -> int:
    """A port with the next n - 1 free too: the worker's endpoints, the executor's (+ 1), the ingest's (+ 2)."""
    from tests.fakes.ports import free_port_run
    return free_port_run(n)


def _scrape_all(port: int) -> dict[str, list[float]]:
    import urllib.request
    from prometheus_client.parser import text_string_to_metric_families
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    out: dict[str, list[float]] = {}
    for fam in text_string_to_metric_families(text):
        for sample in fam.samples:
            out.setdefault(sample.name, []).append(sample.value)
    return out


def _probe(port: int, path: str) -> tuple[int, dict]:
    import urllib.error
    import urllib.request
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def _scrape(port: int) -> dict[str, float]:
    """name -> value of the first sample of each family (labelled families: any sample)."""
    import urllib.request
    from prometheus_client.parser import text_string_to_metric_families
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            text = resp.read().decode()
    except OSError:
        return {}
    out = {}
    for fam in text_string_to_metric_families(text):
        for sample in fam.samples:
            out.setdefault(sample.name, sample.value)
        out.setdefault(fam.name, 0.0)
    return out
