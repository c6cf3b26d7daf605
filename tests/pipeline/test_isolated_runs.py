"""Concurrent runs never touch each other: a shared local broker stays up while any run holds a slot,
and each run's audit trail lives in its own database, with smc_latest showing the last finished one."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid

import pytest

from infra import local_broker
from infra.clickhouse import run_database
from infra.settings import REPO_ROOT


def test_run_database_is_named_after_the_run():
    assert run_database("bt-20261125-093000") == "smc_bt_20261125_093000"
    assert run_database("mj0.r1") == "smc_mj0_r1"


@pytest.mark.kafka
def test_the_last_user_out_stops_a_run_started_broker(kafka_bootstrap, tmp_path):
    # the real broker stands for "up"; a sleeping process stands for the one a run launched here
    port = int(kafka_bootstrap.rsplit(":", 1)[1])
    home = tmp_path / "kafka"
    fake_broker = subprocess.Popen(["sleep", "120"])
    other_run = subprocess.Popen(["sleep", "120"])
    try:
        local_broker.acquire(port, home, start_if_down=False)
        home.joinpath("broker.pid").write_text(str(fake_broker.pid))
        home.joinpath("started-by-run").write_text("1")
        home.joinpath("users", str(other_run.pid)).touch()
        assert local_broker.users(home) == sorted([os.getpid(), other_run.pid])

        assert local_broker.release(home) is False        # the other run still uses it
        assert fake_broker.poll() is None

        other_run.kill()
        other_run.wait(10)                                 # it died without releasing: its slot is stale
        local_broker.acquire(port, home, start_if_down=False)
        assert local_broker.users(home) == [os.getpid()]
        assert local_broker.release(home) is True
        assert fake_broker.wait(10) is not None
        assert not home.joinpath("started-by-run").exists()
    finally:
        for p in (fake_broker, other_run):
            if p.poll() is None:
                p.kill()


@pytest.mark.kafka
def test_a_broker_no_run_started_is_never_stopped(kafka_bootstrap, tmp_path):
    port = int(kafka_bootstrap.rsplit(":", 1)[1])
    home = tmp_path / "kafka"
    local_broker.acquire(port, home, start_if_down=False)
    assert local_broker.release(home) is False
    local_broker.wait_ready(kafka_bootstrap, timeout=5)


_RUN_COUNTS = """
import json, sys
from infra.clickhouse import AuditStore, exclusive, run_database
dsn, tag = sys.argv[1], sys.argv[2]
out = {"klines": [], "signals_1m": []}
with exclusive(dsn):
    for i in range(2):
        store = AuditStore(dsn, database=run_database(f"par{i}-{tag}"))
        _, rows = store.query(f"SELECT symbol, count() FROM {store.database}.klines FINAL GROUP BY symbol ORDER BY symbol")
        out["klines"].append([list(r) for r in rows])
        out["signals_1m"].append(store.count("signals", "timeframe = '1m'"))
    _, latest = store.query("SELECT uniqExact(symbol), count() FROM smc_latest.klines")
    out["latest"] = list(latest[0])
print(json.dumps(out))
"""


@pytest.mark.kafka
@pytest.mark.timeout(900)
def test_two_concurrent_runs_both_succeed_with_their_own_data(kafka_bootstrap, tmp_path):
    chdb = tmp_path / "chdb"
    tag = uuid.uuid4().hex[:8]     # fresh topics and groups every session (a killed session leaves its own)
    procs = []
    for i, symbols in enumerate(("BTCUSDT,ETHUSDT", "SOLUSDT,XRPUSDT")):
        env = dict(os.environ, SMC_KAFKA_BOOTSTRAP=kafka_bootstrap, SMC_DATA_DIR=str(tmp_path / f"d{i}"),
                   SMC_CLICKHOUSE_DSN=f"chdb://{chdb}", SMC_NAMESPACE=f"par{i}-{tag}",
                   PYTHONPATH=str(REPO_ROOT))
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "infra.cli", "run", "--symbols", symbols, "--start", "2025-05-20T00:00", "--end",
             "2025-05-20T06:00", "--scorer", "heuristic", "--no-progress", "--report-dir", str(tmp_path / f"r{i}")],
            cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    outs = [p.communicate(timeout=800)[0] for p in procs]
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out[-3000:]
    # read in a fresh process: chDB opens one path per process, and this test process may hold another
    r = subprocess.run([sys.executable, "-c", _RUN_COUNTS, f"chdb://{chdb}", tag], cwd=REPO_ROOT,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    counts = json.loads(r.stdout.strip().splitlines()[-1])
    for i, symbols in enumerate(("BTCUSDT,ETHUSDT", "SOLUSDT,XRPUSDT")):
        rows = counts["klines"][i]
        assert [row[0] for row in rows] == sorted(symbols.split(","))
        assert all(n == 360 for _, n in rows), rows                     # 6 hours of 1m perps bars each
        assert counts["signals_1m"][i] == 720
    assert counts["latest"] == [2, 720]                                 # smc_latest: one of the two runs, whole
    from infra import kafka_io
    from infra.settings import load_settings
    for i in range(2):
        kafka_io.delete_namespace(load_settings(env={}).with_(kafka_bootstrap=kafka_bootstrap,
                                                             namespace=f"par{i}-{tag}"))
