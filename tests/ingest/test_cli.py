"""`python -m ingest` end to end: replay CLI, clear errors, and live SIGTERM clean shutdown."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import RECORDED
from fakes.fake_binance import FakeBinance, build_exchange_info, universe_names
from infra.settings import REPO_ROOT
from live_helpers import klines_of, read_topic, wait_for


def _env(settings, **extra):
    env = dict(os.environ, SMC_KAFKA_BOOTSTRAP=settings.kafka_bootstrap, SMC_NAMESPACE=settings.namespace)
    env.update(extra)
    return env


def test_replay_cli_errors_are_clear(settings):
    from ingest.__main__ import main
    assert main(["replay", "--files", str(RECORDED / "missing.parquet"), "--no-progress"]) == 2
    assert main(["replay", "--files", str(RECORDED / "perps_1m_2025-05.parquet"), "--interval", "1m",
                 "--symbols", "NOPEUSDT", "--no-progress"]) == 2


@pytest.mark.kafka
def test_replay_cli_subprocess(settings):
    r = subprocess.run([sys.executable, "-m", "ingest", "replay", "--files", str(RECORDED / "perps_1m_2025-05.parquet"),
                        "--interval", "1m", "--symbols", "BTCUSDT,ETHUSDT", "--start", "2025-05-20T00:00",
                        "--end", "2025-05-20T00:24", "--no-progress"],
                       cwd=REPO_ROOT, env=_env(settings), capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "replayed 48 klines of 2 symbols" in r.stdout
    ks = klines_of(read_topic(settings, "klines", "t-cli", expect=48))
    assert len(ks) == 48 and {k.symbol for k in ks} == {"BTCUSDT", "ETHUSDT"}


@pytest.mark.kafka
@pytest.mark.timeout(120)
def test_live_cli_sigterm_clean_shutdown(settings):
    names = universe_names(6)
    with FakeBinance(build_exchange_info(names)) as fb:
        env = _env(settings, SMC_BINANCE_REST_URL=fb.rest_url, SMC_BINANCE_WS_URL=fb.ws_url,
                   SMC_SYMBOLS_PER_SHARD="3")
        proc = subprocess.Popen([sys.executable, "-m", "ingest", "live", "--symbols", ",".join(names[:4])],
                                cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            wait_for(lambda: sum(len(s) for s in fb.connections()) == 4 or proc.poll() is not None, 60,
                     "live ingest connected")
            assert proc.poll() is None
            assert len(fb.connections()) == 2
            t0 = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            out, _ = proc.communicate(timeout=30)
            assert proc.returncode == 0, out
            assert time.monotonic() - t0 < 15
            assert "stopped:" in out
            wait_for(lambda: len(fb.connections()) == 0, 10, "connections closed")
        finally:
            if proc.poll() is None:
                proc.kill()
