"""The processors worker through a broker outage (kill -9), on a broker of its own (the session's stays up).

Shorter than SMC_DELIVERY_TIMEOUT_S: the worker waits it out, loses and doubles nothing, signals and
tables equal the uninterrupted core's. Longer: it stops with a one-line reason and a non-zero exit
(never carrying on over a hole), and a restarted worker completes the run, still equal to the core.
"""
from __future__ import annotations

import os
import signal
import socket
import time
from pathlib import Path

import pytest

from harness import Worker, load_klines, produce, wait_signals, wait_until
from infra import kafka_io, local_broker
from processors.app import FAIL_EXIT
from test_worker import assert_changelogs_equal, expected_run, signals_by_id

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(600)]

SYMBOLS = ["BTCUSDT", "ETHUSDT", "SOLUSDT", "XRPUSDT", "DOGEUSDT", "1000PEPEUSDT", "ADAUSDT", "LINKUSDT"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class OwnBroker:
    def __init__(self, home: Path) -> None:
        self.home, self.port = home, _free_port()
        self.bootstrap = local_broker.start(self.port, home=home)

    def kill(self) -> None:
        os.kill(int((self.home / "broker.pid").read_text()), signal.SIGKILL)
        deadline = time.monotonic() + 30
        while local_broker._port_open(self.port) and time.monotonic() < deadline:
            time.sleep(0.1)

    def restart(self) -> None:
        local_broker.start(self.port, home=self.home)

    def stop(self) -> None:
        local_broker.stop(self.home)


@pytest.fixture(scope="module")
def own_broker(tmp_path_factory):
    b = OwnBroker(tmp_path_factory.mktemp("own-kafka"))
    yield b
    b.stop()


def _setup(own_broker, settings, **changes):
    s = settings.with_(kafka_bootstrap=own_broker.bootstrap, interval="1m", **changes)
    kafka_io.ensure_topics(s, ["klines", "signals", "dlq"])
    klines = load_klines("perps_1m_2025-05.parquet", SYMBOLS, limit_per_symbol=3000, interval="1m")
    expected, tables = expected_run(klines, s)
    produce(s, klines)
    return s, klines, expected, tables


def test_outage_shorter_than_the_delivery_timeout_loses_and_doubles_nothing(own_broker, settings):
    s, klines, expected, tables = _setup(own_broker, settings, delivery_timeout_s=300.0)
    w = Worker(s, "w-outage")
    try:
        wait_until(lambda: w.stats().get("klines", 0) >= 2000, "the worker is processing", (w,))
        own_broker.kill()
        taken = w.stats()["klines"]
        time.sleep(25)
        assert w.alive(), w.tail()
        own_broker.restart()
        wait_signals(s, len(expected), workers=(w,), timeout=300)
        time.sleep(2)
        assert taken < len(klines), "the outage came after the run: the test proved nothing"
    finally:
        assert w.stop() == 0, w.tail(3000)
    got = signals_by_id(s)
    assert set(got) == set(expected), f"missing {len(set(expected) - set(got))}, extra {len(set(got) - set(expected))}"
    assert all(raw == expected[sid] for sid, raws in got.items() for raw in raws)
    assert_changelogs_equal(s, tables)


def test_outage_longer_than_the_delivery_timeout_stops_the_worker_loudly(own_broker, settings):
    s, klines, expected, tables = _setup(own_broker, settings, delivery_timeout_s=5.0)
    w = Worker(s, "w-long")
    try:
        wait_until(lambda: w.stats().get("klines", 0) >= 2000, "the worker is processing", (w,))
        own_broker.kill()
        code = w.proc.wait(120)
    finally:
        w.stop()
    assert code == FAIL_EXIT, w.tail(3000)
    # the agent was delivering (records not acknowledged in time) or starting a partition (log start unread)
    reason = [line for line in w.tail(20000).splitlines() if line.startswith("processors worker stops: ")]
    assert reason and ("DeliveryError" in reason[-1] or "could not be read within 5 s" in reason[-1]), w.tail(3000)
    own_broker.restart()
    w2 = Worker(s, "w-after")
    try:
        wait_signals(s, len(expected), workers=(w2,), timeout=300)
        time.sleep(2)
    finally:
        assert w2.stop() == 0, w2.tail(3000)
    got = signals_by_id(s)
    assert set(got) == set(expected), f"missing {len(set(expected) - set(got))}, extra {len(set(got) - set(expected))}"
    assert all(raw == expected[sid] for sid, raws in got.items() for raw in raws)
    assert_changelogs_equal(s, tables)
