"""Concurrent runs never touch each other: a shared local broker stays up while any run holds a slot,
and each run's audit trail lives in its own database, with smc_latest showing the last finished one."""
from __future__ import annotations

import os
import subprocess
import sys
import uuid

import pytest

from infra import local_broker
from infra.clickhouse import AuditStore, exclusive, run_database
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
            [sys.executable, "-m", "infra.cli", "run", "--symbols", symbols, "--start", "2026-05-10", "--end",
             "2026-05-13", "--scorer", "heuristic", "--no-progress", "--report-dir", str(tmp_path / f"r{i}")],
            cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    outs = [p.communicate(timeout=800)[0] for p in procs]
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out[-3000:]
    dsn = f"chdb://{chdb}"
    with exclusive(dsn):
        for i, symbols in enumerate(("BTCUSDT,ETHUSDT", "SOLUSDT,XRPUSDT")):
            store = AuditStore(dsn, database=run_database(f"par{i}-{tag}"))
            _, rows = store.query(f"SELECT symbol, count() FROM {store.database}.klines FINAL GROUP BY symbol ORDER BY symbol")
            assert [r[0] for r in rows] == sorted(symbols.split(","))
            assert all(n == 72 for _, n in rows), rows                  # 3 days of 1h bars each
            assert store.count("signals", "timeframe = '1h'") == 144
        # smc_latest shows one of the two finished runs, whole
        _, latest = store.query("SELECT uniqExact(symbol), count() FROM smc_latest.klines")
        assert latest[0] == (2, 144)
    from infra import kafka_io
    from infra.settings import load_settings
    for i in range(2):
        kafka_io.delete_namespace(load_settings(env={}).with_(kafka_bootstrap=kafka_bootstrap,
                                                             namespace=f"par{i}-{tag}"))
