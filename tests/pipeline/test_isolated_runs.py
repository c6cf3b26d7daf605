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


_RUN_SYMBOLS = ("BTCUSDT,ETHUSDT", "SOLUSDT,XRPUSDT")
_PERIOD = ("2025-05-20T00:00", "2025-05-20T06:00")     # 6 hours of real 1m perps: 360 bars per symbol

# run in a fresh process: chDB opens one path per process, and the test process may hold another.
# Per run: klines per symbol, 1m signals, signal rows vs distinct ids (a second copy of a record), and
# the signals whose content differs from the same symbols run alone in process (`smc backtest`)
_RUN_COUNTS = """
import json, sys
from infra.clickhouse import AuditStore, exclusive, run_database
dsn, tag = sys.argv[1], sys.argv[2]
cols = "signal_id, side, confidence, entry, stop, target, atr, features, events"
out = {"klines": [], "signals_1m": [], "signal_copies": [], "signals_differ": [], "signals_missing": []}
with exclusive(dsn):
    for i in range(2):
        store = AuditStore(dsn, database=run_database(f"par{i}-{tag}"))
        ref = run_database(f"ref{i}-{tag}")
        _, rows = store.query(f"SELECT symbol, count() FROM {store.database}.klines FINAL GROUP BY symbol ORDER BY symbol")
        out["klines"].append([list(r) for r in rows])
        out["signals_1m"].append(store.count("signals", "timeframe = '1m'"))
        _, c = store.query(f"SELECT count() - uniqExact(signal_id) FROM {store.database}.signals")
        out["signal_copies"].append(c[0][0])
        _, d = store.query(f"SELECT count() FROM (SELECT {cols} FROM {store.database}.signals FINAL EXCEPT "
                           f"SELECT {cols} FROM {ref}.signals FINAL)")
        out["signals_differ"].append(d[0][0])
        _, m = store.query(f"SELECT count() FROM {ref}.signals FINAL WHERE signal_id NOT IN "
                           f"(SELECT signal_id FROM {store.database}.signals)")
        out["signals_missing"].append(m[0][0])
print(json.dumps(out))
"""
_LATEST = """
import json, sys
from infra.clickhouse import AuditStore, exclusive
with exclusive(sys.argv[1]):
    _, latest = AuditStore(sys.argv[1]).query("SELECT uniqExact(symbol), count() FROM smc_latest.klines")
print(json.dumps(list(latest[0])))
"""


def run_two_at_once(kafka_bootstrap: str, workdir, tag: str) -> dict:
    """Two `smc run` at once on one broker and one chDB path, then each symbol set alone in process
    (`smc backtest`, the reference: byte-identical to `smc run` on the same data), and the counts above.
    Also the fault matrix's row (tests/stress/test_fault_matrix.py)."""
    chdb = workdir / "chdb"
    base = dict(os.environ, SMC_KAFKA_BOOTSTRAP=kafka_bootstrap, SMC_CLICKHOUSE_DSN=f"chdb://{chdb}",
                PYTHONPATH=str(REPO_ROOT))
    period = ["--symbols", "", "--start", _PERIOD[0], "--end", _PERIOD[1], "--scorer", "heuristic"]
    procs = []
    for i, symbols in enumerate(_RUN_SYMBOLS):
        env = dict(base, SMC_DATA_DIR=str(workdir / f"d{i}"), SMC_NAMESPACE=f"par{i}-{tag}")
        period[1] = symbols
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "infra.cli", "run", *period, "--no-progress", "--report-dir", str(workdir / f"r{i}")],
            cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    outs = [p.communicate(timeout=800)[0] for p in procs]
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out[-3000:]
    latest = subprocess.run([sys.executable, "-c", _LATEST, f"chdb://{chdb}"], cwd=REPO_ROOT,
                            capture_output=True, text=True, timeout=120)
    assert latest.returncode == 0, latest.stderr[-2000:]
    for i, symbols in enumerate(_RUN_SYMBOLS):
        env = dict(base, SMC_DATA_DIR=str(workdir / f"b{i}"), SMC_NAMESPACE=f"ref{i}-{tag}")
        period[1] = symbols
        b = subprocess.run([sys.executable, "-m", "infra.cli", "backtest", *period, "--report-dir",
                            str(workdir / f"rb{i}")], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
        assert b.returncode == 0, (b.stdout + b.stderr)[-3000:]
    r = subprocess.run([sys.executable, "-c", _RUN_COUNTS, f"chdb://{chdb}", tag], cwd=REPO_ROOT,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    from infra import kafka_io
    from infra.settings import load_settings
    for i in range(2):
        kafka_io.delete_namespace(load_settings(env={}).with_(kafka_bootstrap=kafka_bootstrap,
                                                             namespace=f"par{i}-{tag}"))
    return dict(json.loads(r.stdout.strip().splitlines()[-1]), latest=json.loads(latest.stdout.strip().splitlines()[-1]))


def lost_doubled_wrong(counts: dict) -> tuple[int, int, int]:
    """Against 360 klines per symbol and the in-process reference's signals."""
    lost = sum(max(0, 360 - n) for rows in counts["klines"] for _, n in rows) + sum(counts["signals_missing"])
    return lost, sum(counts["signal_copies"]), sum(counts["signals_differ"])


@pytest.mark.kafka
@pytest.mark.timeout(900)
def test_two_concurrent_runs_both_succeed_with_their_own_data(kafka_bootstrap, tmp_path):
    tag = uuid.uuid4().hex[:8]     # fresh topics and groups every session (a killed session leaves its own)
    counts = run_two_at_once(kafka_bootstrap, tmp_path, tag)
    for i, symbols in enumerate(_RUN_SYMBOLS):
        rows = counts["klines"][i]
        assert [row[0] for row in rows] == sorted(symbols.split(","))
        assert all(n == 360 for _, n in rows), rows                     # 6 hours of 1m perps bars each
        assert counts["signals_1m"][i] == 720
    assert counts["latest"] == [2, 720]                                 # smc_latest: one of the two runs, whole
    assert lost_doubled_wrong(counts) == (0, 0, 0), counts
