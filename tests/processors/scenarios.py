"""Fault scenarios of the processors on the real broker, each returning what went wrong against the
uninterrupted in-process core: the default tests run each once (tests/processors/test_worker*.py), the
fault matrix many times (tests/stress/test_fault_matrix.py, `bash infra/bootstrap.sh stress`).

Counts (a Tally): lost = signal ids the core emits that are missing; wrong = ids with other bytes
than the core's, or ids the core never emits; doubled = bars the state took twice (the processors'
`duplicate` / `out-of-order` dead letters of a run that produced none); resent = extra copies of a
signal with the same bytes (a crash re-sends what the state had not stored yet; consumers keep one
per signal_id, so these are not duplicates to anybody downstream).
"""
from __future__ import annotations

import collections
import random
import re
import time
from dataclasses import dataclass

import orjson

from harness import Worker, load_klines, produce, wait_signals, wait_until
from infra import kafka_io
from processors.core import KlineProcessor, MemoryTables
from processors.scoring import HeuristicScorer
from schemas import Kline, decode_signal, encode_kline
from tests.fakes.ports import free_port_run

SYMBOLS = ["BTCUSDT", "ETHUSDT", "SOLUSDT", "XRPUSDT", "DOGEUSDT", "1000PEPEUSDT", "ADAUSDT", "LINKUSDT"]


@dataclass
class Tally:
    lost: int
    doubled: int
    wrong: int
    resent: int = 0
    tables: MemoryTables | None = None

    @property
    def counts(self) -> tuple[int, int, int]:
        return self.lost, self.doubled, self.wrong


def expected_run(klines, settings) -> tuple[dict[str, bytes], MemoryTables]:
    """The uninterrupted, in-process run of the same core: signal_id -> bytes, and the final tables."""
    proc = KlineProcessor(HeuristicScorer(), settings.strategy_version, settings.interval, settings.htf_factor)
    tables = MemoryTables()
    out: dict[str, bytes] = {}
    for i in range(0, len(klines), 500):
        res = proc.process([(k.symbol.encode(), encode_kline(k)) for k in klines[i:i + 500]], tables)
        tables.apply(res)
        for _, raw in res.signals:
            out[decode_signal(raw).signal_id] = raw
    return out, tables


def signals_by_id(settings) -> dict[str, list[bytes]]:
    got = collections.defaultdict(list)
    for m in kafka_io.read_topic(settings, "signals"):
        got[decode_signal(m.value()).signal_id].append(m.value())
    return got


def dead_letters(settings) -> list[dict]:
    return [orjson.loads(m.value()) for m in kafka_io.read_topic(settings, "dlq")]


def tally(settings, expected: dict[str, bytes], tables: MemoryTables | None = None,
          allowed_rejects: int = 0) -> Tally:
    got = signals_by_id(settings)
    lost = len(set(expected) - set(got))
    wrong = sum(1 for sid, raws in got.items() if sid not in expected or any(r != expected[sid] for r in raws))
    resent = sum(len(raws) - 1 for raws in got.values())
    taken_twice = [r for r in dead_letters(settings) if "duplicate" in r["reason"] or "out-of-order" in r["reason"]]
    return Tally(lost, max(0, len(taken_twice) - allowed_rejects), wrong, resent, tables)


def hourly(symbols=SYMBOLS, bars: int = 400):
    return load_klines("klines_1h.parquet", symbols, limit_per_symbol=bars)


def scenario_worker_sigkill(settings, at: float = 0.25) -> Tally:
    """Half the klines in, a worker SIGKILLed once `at` of the run's signals are out, the rest in, a new
    worker finishes."""
    klines = hourly()
    expected, tables = expected_run(klines, settings)
    half = len(klines) // 2
    produce(settings, klines[:half])
    w = Worker(settings, "w1")
    try:
        wait_signals(settings, max(1, int(len(expected) * at)), workers=(w,))
    finally:
        w.kill()
    produce(settings, klines[half:])
    w2 = Worker(settings, "w2")
    try:
        wait_signals(settings, len(expected), workers=(w2,), all_taken=True)
        time.sleep(2)  # let any re-delivered tail settle
    finally:
        assert w2.stop() == 0, w2.tail(2000)
    return tally(settings, expected, tables)


def scenario_two_workers_churn(settings) -> Tally:
    """Two workers start at once on a fresh namespace; one stops while the group is still settling:
    records in flight through three generations."""
    klines = hourly()
    expected, tables = expected_run(klines, settings)
    third = len(klines) // 3
    produce(settings, klines[:third])
    a, b = Worker(settings, "a"), Worker(settings, "b")
    try:
        wait_signals(settings, len(expected) // 4, workers=(a, b))
        produce(settings, klines[third:2 * third])
        wait_signals(settings, len(expected) // 2, workers=(a, b))
        assert a.stop() == 0, a.tail(2000)
        produce(settings, klines[2 * third:])
        wait_signals(settings, len(expected), workers=(b,), timeout=180, all_taken=True)
        time.sleep(1.5)
    finally:
        a.stop()
        assert b.stop() == 0, b.tail(2000)
    return tally(settings, expected, tables)


def poison_records(klines: list[Kline], rng: random.Random) -> list[tuple[bytes, bytes]]:
    """Bad records a real topic can carry, one of each: each must be rejected naming its field, none
    may touch a symbol's state."""
    k = klines[len(klines) // 2]
    good = encode_kline(k)
    y2100 = 4_102_444_800_000
    far = Kline(k.symbol, k.interval, y2100, y2100 + 3_599_999, k.open, k.high, k.low, k.close, k.volume, source="replay")
    stranger = Kline("NOTLISTEDUSDT", k.interval, k.open_time, k.close_time, k.open, k.high, k.low, k.close, k.volume,
                     source="replay")
    obj = orjson.loads(good)
    obj["leverage"] = 100
    return [
        (k.symbol.encode(), b'{"symbol":"' + bytes(rng.choice(b"ABCDEFGH") for _ in range(900_000)) + b'"}'),  # 900 KB
        (far.symbol.encode(), encode_kline(far)),                                                    # far future
        (k.symbol.encode(), orjson.dumps(obj)),                                                      # unknown field
        (k.symbol.encode(), re.sub(rb'"close":[^,]+', b'"close":NaN', good, count=1)),              # non-finite
        (stranger.symbol.encode(), encode_kline(stranger)),                                         # not in universe
        (k.symbol.encode(), b"{not json"),
    ]


def scenario_poison(settings, seed: int = 0) -> Tally:
    """Valid klines with the poison records mixed in at random places: every valid signal equal to the
    core's, each bad record one dead letter (bounded in size), naming what is wrong."""
    rng = random.Random(seed)
    klines = hourly(SYMBOLS[:4], 300)
    expected, tables = expected_run(klines, settings)
    s = settings.with_(universe=",".join(SYMBOLS[:4]), replay_end=max(k.open_time for k in klines) + 3_600_000)
    bad = poison_records(klines, rng)
    cut = sorted(rng.sample(range(1, len(klines)), len(bad)))
    produce(s, klines[:cut[0]])
    for i, (record, nxt) in enumerate(zip(bad, cut[1:] + [len(klines)])):
        produce(s, klines[cut[i]:nxt], raw_extra=[record])
    w = Worker(s, "w-poison")
    try:
        wait_signals(s, len(expected), workers=(w,), all_taken=True)
        wait_until(lambda: len(dead_letters(s)) >= len(bad), "every poison record in dlq", (w,), timeout=60)
        time.sleep(1)
    finally:
        assert w.stop() == 0, w.tail(2000)
    rejects = dead_letters(s)
    reasons = [r["reason"] for r in rejects]
    raw_sizes = [len(m.value()) for m in kafka_io.read_topic(s, "dlq")]
    assert len(rejects) == len(bad), reasons
    assert max(raw_sizes) < 100_000, raw_sizes                     # under the broker's 1 MB limit, far
    for needle in ("beyond the replay's declared range", "Kline.leverage=100", "Kline.close=", "not in the run's universe",
                   "malformed JSON"):
        assert any(needle in r for r in reasons), (needle, reasons)
    assert any(r["raw_len"] > 900_000 and r["raw_sha256"] for r in rejects)
    return tally(s, expected, tables)


class OwnBroker:
    """A KRaft broker of the scenario's own, to kill -9 and restart (the session's broker stays up)."""

    def __init__(self, home) -> None:
        from infra import local_broker
        self.port = free_port_run(2)      # the broker listens on port, its KRaft controller on port + 1
        self.home = home
        self.bootstrap = local_broker.start(self.port, home=home)

    def kill(self) -> None:
        import os
        import signal
        from infra import local_broker
        os.kill(int((self.home / "broker.pid").read_text()), signal.SIGKILL)
        deadline = time.monotonic() + 30
        while local_broker._port_open(self.port) and time.monotonic() < deadline:
            time.sleep(0.1)

    def restart(self) -> None:
        from infra import local_broker
        local_broker.start(self.port, home=self.home)

    def stop(self) -> None:
        from infra import local_broker
        local_broker.stop(self.home)


def _outage_setup(broker: OwnBroker, settings, delivery_timeout_s: float):
    s = settings.with_(kafka_bootstrap=broker.bootstrap, interval="1m", delivery_timeout_s=delivery_timeout_s)
    kafka_io.ensure_topics(s, ["klines", "signals", "dlq"])
    klines = load_klines("perps_1m_2025-05.parquet", SYMBOLS, limit_per_symbol=3000, interval="1m")
    expected, tables = expected_run(klines, s)
    produce(s, klines)
    return s, klines, expected, tables


def scenario_broker_outage(broker: OwnBroker, settings, down_s: float = 25.0) -> Tally:
    """The broker killed -9 while the worker processes a backlog, back after down_s (< the delivery
    timeout): the worker waits it out and finishes; nothing lost, doubled or different."""
    s, klines, expected, tables = _outage_setup(broker, settings, 300.0)
    w = Worker(s, "w-outage")
    try:
        wait_until(lambda: w.stats().get("klines", 0) >= 2000, "the worker is processing", (w,))
        broker.kill()
        try:
            taken = w.stats()["klines"]
            time.sleep(down_s)
            assert w.alive(), w.tail()
        finally:
            broker.restart()     # also after a failed repetition: the next one needs the broker
        wait_signals(s, len(expected), workers=(w,), timeout=300, all_taken=True)
        time.sleep(2)
        assert taken < len(klines), "the outage came after the run: it proved nothing"
    finally:
        assert w.stop() == 0, w.tail(3000)
    return tally(s, expected, tables)


def scenario_broker_outage_past_timeout(broker: OwnBroker, settings) -> Tally:
    """An outage longer than SMC_DELIVERY_TIMEOUT_S (5 s here): the worker stops, exit 70, one line
    naming the fault; a new worker after the broker is back finishes the run."""
    from processors.app import FAIL_EXIT
    s, klines, expected, tables = _outage_setup(broker, settings, 5.0)
    w = Worker(s, "w-long")
    try:
        wait_until(lambda: w.stats().get("klines", 0) >= 2000, "the worker is processing", (w,))
        broker.kill()
        code = w.proc.wait(150)
    finally:
        w.stop()
    assert code == FAIL_EXIT, w.tail(3000)
    # the agent was delivering (records not acknowledged in time) or starting a partition (log start unread)
    reason = [line for line in w.tail(20000).splitlines() if line.startswith("processors worker stops: ")]
    assert reason and ("DeliveryError" in reason[-1] or "could not be read within 5 s" in reason[-1]), w.tail(3000)
    broker.restart()
    w2 = Worker(s, "w-after")
    try:
        wait_signals(s, len(expected), workers=(w2,), timeout=300, all_taken=True)
        time.sleep(2)
    finally:
        assert w2.stop() == 0, w2.tail(3000)
    return tally(s, expected, tables)


def scenario_crash_between_flushes(settings, total: float = 0.5, group: int = 1200, sweep_min: int = 64) -> Tally:
    """A worker dies between the two flushes of a large group commit (tests/processors/
    crash_between_flushes_worker.py): its signals and windows are acknowledged, its states and markers
    never sent, so the window table runs ahead of the states by more than HTF_KEEP windows. A new
    worker, sweeping expired windows from its first commits on, finishes: nothing lost, doubled or
    different (a sweep measured from the windows instead of the states deleted the open window of a
    state it had not loaded yet: its next HTF bar was built from part of its bars)."""
    import sys
    from pathlib import Path
    s = settings.with_(interval="1m")
    kafka_io.ensure_topics(s, ["klines", "signals", "dlq"])
    klines = load_klines("perps_1m_2025-05.parquet", SYMBOLS, limit_per_symbol=3000, interval="1m")
    expected, tables = expected_run(klines, s)
    produce(s, klines)
    command = [sys.executable, str(Path(__file__).parent / "crash_between_flushes_worker.py")]
    w = Worker(s, "w-crash", extra_env={"SMC_TEST_CRASH_AT": f"{int(len(expected) * total)}:{group}",
                                        "SMC_TEST_SWEEP_MIN": str(sweep_min)}, command=command)
    try:
        code = w.proc.wait(180)
    finally:
        w.stop()
    assert code == 71 and "dying before the states of a group" in w.tail(20000), (code, w.tail(3000))
    w2 = Worker(s, "w-after-crash", extra_env={"SMC_TEST_SWEEP_MIN": str(sweep_min), "SMC_TEST_GROUP_MAX": "100"},
                command=command)
    try:
        wait_signals(s, len(expected), workers=(w2,), timeout=300, all_taken=True)
        time.sleep(2)
    finally:
        assert w2.stop() == 0, w2.tail(3000)
    return tally(s, expected, tables)
