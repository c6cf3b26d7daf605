"""Fail fast: a dead Kafka bootstrap or ClickHouse DSN is one line naming the endpoint and the fix, exit 2,
within 5 s and before any work starts; a live one is logged with its version; an old server is refused."""
from __future__ import annotations

import http.server
import os
import socket
import subprocess
import sys
import threading
import time

import pytest

from infra.clickhouse import MIN_SERVER_VERSION, ClickHouseUnavailable, check_dsn, server_version_refusal
from infra.kafka_io import BrokerUnavailable, require_broker
from infra.settings import REPO_ROOT, load_settings


def _closed_port() -> int:
    """A local port nothing listens on: bound, then closed."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _smc(*argv: str, env: dict[str, str]) -> tuple[subprocess.CompletedProcess, float]:
    full = {k: v for k, v in os.environ.items() if not k.startswith(("SMC_", "BINANCE_"))}
    full.update(PYTHONPATH=str(REPO_ROOT), SMC_CREDIT="0", COLUMNS="400", **env)
    t0 = time.monotonic()
    res = subprocess.run([sys.executable, "-m", "infra.cli", *argv], env=full, capture_output=True, text=True,
                         timeout=120, cwd=REPO_ROOT)
    return res, time.monotonic() - t0


@pytest.mark.parametrize("mode", [["run", "--days", "0.01", "--no-progress"], ["run", "--live-data"]])
def test_a_dead_kafka_bootstrap_is_said_in_under_5_s(mode, tmp_path):
    port = _closed_port()
    res, wall = _smc(*mode, env={"SMC_KAFKA_BOOTSTRAP": f"127.0.0.1:{port}", "SMC_DATA_DIR": str(tmp_path),
                                 "SMC_CLICKHOUSE_DSN": f"chdb://{tmp_path / 'chdb'}"})
    assert wall < 5, wall
    assert res.returncode == 2, res.stdout + res.stderr
    out = res.stdout + res.stderr
    errors = [line for line in out.splitlines() if "error:" in line]
    assert len(errors) == 1, out
    assert f"no Kafka broker answers at 127.0.0.1:{port}" in errors[0] and "Connection refused" in errors[0]
    assert "set SMC_KAFKA_BOOTSTRAP" in errors[0] and "smc broker start" in errors[0]
    assert "Traceback" not in out
    assert not (tmp_path / "runs").exists() and not (tmp_path / "live" / "status.json").exists()   # nothing started


@pytest.mark.parametrize("mode", [["run", "--days", "0.01", "--no-progress"], ["run", "--live-data"]])
def test_a_dead_clickhouse_dsn_is_said_in_under_5_s_before_kafka(mode, tmp_path):
    port = _closed_port()
    res, wall = _smc(*mode, env={"SMC_CLICKHOUSE_DSN": f"http://analyst:s3cr3t-pw@127.0.0.1:{port}",
                                 "SMC_KAFKA_BOOTSTRAP": f"127.0.0.1:{_closed_port()}", "SMC_DATA_DIR": str(tmp_path)})
    assert wall < 5, wall
    assert res.returncode == 2, res.stdout + res.stderr
    out = res.stdout + res.stderr
    errors = [line for line in out.splitlines() if "error:" in line]
    assert len(errors) == 1, out
    assert f"no ClickHouse server at http://analyst:********@127.0.0.1:{port}" in errors[0], errors
    assert "fix SMC_CLICKHOUSE_DSN" in errors[0]
    assert "s3cr3t" not in out                    # the DSN's password is never printed
    assert "Kafka" not in out                     # ClickHouse is checked first: the broker was never tried


def test_require_broker_on_a_closed_port_is_fast_in_process():
    settings = load_settings(env={"SMC_KAFKA_BOOTSTRAP": f"127.0.0.1:{_closed_port()}"})
    t0 = time.monotonic()
    with pytest.raises(BrokerUnavailable, match="Connection refused"):
        require_broker(settings)
    assert time.monotonic() - t0 < 1.0             # the TCP refusal, not librdkafka's retries


@pytest.mark.kafka
def test_a_live_broker_is_described_with_its_version(kafka_bootstrap):
    found = require_broker(load_settings(env={"SMC_KAFKA_BOOTSTRAP": kafka_bootstrap}))
    assert found.startswith("1 broker(s), cluster ")
    assert "inter.broker.protocol.version 3." in found          # the local KRaft launcher runs Kafka 3.9


def test_chdb_is_described_with_its_version(tmp_path):
    from importlib.metadata import version
    assert check_dsn(f"chdb://{tmp_path / 'x'}") == f"chDB {version('chdb')} (embedded) at {tmp_path / 'x'}"


@pytest.mark.parametrize("version, refused", [
    ("18.16.1", True), ("22.8.15.25.altinitystable", True), ("24.8.4.13", True), ("25.2.9.1", True),
    ("25.3.1.2703", False), ("25.8.2.29", False), ("26.3.1.1", False), ("100.1", False)])
def test_server_version_check(version, refused):
    why = server_version_refusal(version)
    assert (why is not None) == refused, why
    if refused:
        assert f"ClickHouse server {version} is older than {MIN_SERVER_VERSION[0]}.{MIN_SERVER_VERSION[1]}" in why


@pytest.mark.parametrize("version", ["", "head", "v25"])
def test_an_unreadable_server_version_is_refused_by_name(version):
    assert f"{version!r} is not major.minor" in server_version_refusal(version)


class _OldClickHouse(http.server.BaseHTTPRequestHandler):
    """The HTTP interface of a ClickHouse 18.16 as the driver meets it: `SELECT version()` answers, the
    driver's connect sequence fails (its error text as measured in issue 19)."""

    def do_GET(self):
        self._answer()

    def do_POST(self):
        self._answer()

    def _answer(self):
        from urllib.parse import parse_qs, urlsplit
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length).decode() if length else ""
        query = (parse_qs(urlsplit(self.path).query).get("query", [""])[0] + body).strip()
        if query == "SELECT version()":
            status, text = 200, "18.16.1\n"
        else:
            status, text = 500, "Code: 47, e.displayText() = DB::Exception: Unknown identifier: readonly\n"
        data = text.encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


def test_an_old_clickhouse_server_is_refused_by_name_and_version():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _OldClickHouse)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        dsn = f"http://127.0.0.1:{server.server_address[1]}"
        t0 = time.monotonic()
        with pytest.raises(ClickHouseUnavailable) as exc:
            check_dsn(dsn)
        assert time.monotonic() - t0 < 5
        assert f"{dsn}: ClickHouse server 18.16.1 is older than 25.3" in str(exc.value)
        assert "upgrade the server" in str(exc.value)
    finally:
        server.shutdown()
        server.server_close()


def test_ensure_topics_without_a_broker_is_broker_unavailable():
    from infra.kafka_io import ensure_topics
    port = _closed_port()
    settings = load_settings(env={"SMC_KAFKA_BOOTSTRAP": f"127.0.0.1:{port}"})
    with pytest.raises(BrokerUnavailable, match=rf"no Kafka broker answers at 127.0.0.1:{port} within 1 s"):
        ensure_topics(settings, timeout=1.0)


def test_standalone_processes_without_a_broker_say_so_in_one_line(tmp_path):
    """`smc executor run` and `smc ingest audit` (the live supervisor's children, which wait out a broker
    blip for 30 s) end with one line and exit 2, not a traceback."""
    port = _closed_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SMC_", "BINANCE_"))}
    env.update(PYTHONPATH=str(REPO_ROOT), SMC_CREDIT="0", SMC_KAFKA_BOOTSTRAP=f"127.0.0.1:{port}",
               SMC_DATA_DIR=str(tmp_path), SMC_CLICKHOUSE_DSN=f"chdb://{tmp_path / 'chdb'}")
    procs = {name: subprocess.Popen([sys.executable, "-m", "infra.cli", *argv], env=env, cwd=REPO_ROOT, text=True,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for name, argv in (("executor run", ["executor", "run"]), ("ingest audit", ["ingest", "audit"]))}
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=90)
        assert proc.returncode == 2, (name, out, err)
        assert err.strip().splitlines() == [err.strip()] and "Traceback" not in err, err
        assert err.startswith(f"{name}: no Kafka broker answers at 127.0.0.1:{port} within 30 s"), err
        assert "set SMC_KAFKA_BOOTSTRAP" in err
