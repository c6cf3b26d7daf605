"""The Faust worker on the real broker: equal to the pure core, deterministic, recoverable, scalable."""
from __future__ import annotations

import collections
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest

from harness import Worker, load_klines, produce, wait_signals, wait_until
from scenarios import (SYMBOLS, expected_run, scenario_poison, scenario_two_workers_churn, scenario_worker_sigkill,
                       signals_by_id)
from infra import kafka_io
from infra.settings import to_env
from infra.table_view import changelog, htf_bars
from processors.app import HTF_KEEP
from processors.core import MemoryTables
from processors.offsets import is_marker, marker_key
from schemas import decode_signal, encode_kline, interval_ms

pytestmark = pytest.mark.kafka

def expected_signals(klines, settings) -> dict[str, bytes]:
    return expected_run(klines, settings)[0]


def assert_changelogs_equal(settings, tables: MemoryTables) -> None:
    """Both tables' changelogs hold exactly the in-process run's final tables: the engines' state per
    symbol, and per (symbol, window on the UTC grid) the HTF bar (M5 in production) built from its bars."""
    states = changelog(settings, "symbol-state")
    markers = {k: int(v) for k, v in states.items() if is_marker(k)}
    # every partition's marker = the end of its klines partition: the state took every record, once
    ends = kafka_io.end_offsets(settings, "klines")
    assert markers == {marker_key(p): high for p, (low, high) in ends.items() if high > low}
    states = {k: v for k, v in states.items() if not is_marker(k)}
    assert states == {sym.encode(): blob for sym, blob in tables.states.items()}
    period_s = interval_ms(settings.interval) * settings.htf_factor / 1000
    windows = {}
    for key, blob in changelog(settings, "htf-bars").items():
        symbol, (start, end) = orjson.loads(key)           # Faust's windowed key: [key, [start, end]]
        assert end == start + period_s - 0.1 and start % period_s == 0, key
        windows[(symbol, int(start * 1000))] = blob
    # the worker deletes windows older than HTF_KEEP (amortised sweeps): what it kept equals the core's,
    # and it kept at least each symbol's newest HTF_KEEP
    assert all(tables.windows.get(k) == blob for k, blob in windows.items()), "a stored window differs"
    for symbol in {k[0] for k in tables.windows}:
        newest = sorted(k for k in tables.windows if k[0] == symbol)[-HTF_KEEP:]
        assert all(k in windows for k in newest), f"{symbol}: newest windows missing"


def per_symbol_order_ok(settings) -> bool:
    last = {}
    for m in kafka_io.read_topic(settings, "signals"):
        s = decode_signal(m.value())
        key = (s.symbol, s.timeframe)
        if key in last and s.open_time < last[key]:
            return False
        last[key] = max(s.open_time, last.get(key, 0))
    return True


@pytest.fixture
def s1h(settings):
    s = settings.with_(interval="1h")
    kafka_io.ensure_topics(s, ["klines", "signals", "dlq"])
    yield s
    kafka_io.delete_namespace(s)


def test_worker_equals_core_and_rejects_bad_records(s1h):
    klines = load_klines("klines_1h.parquet", SYMBOLS, limit_per_symbol=300)
    expected = expected_signals(klines, s1h)
    bad = [(b"BTCUSDT", b"{not json"),
           (b"ETHUSDT", re.sub(rb'"high":[^,]+', b'"high":-1',
                               encode_kline([k for k in klines if k.symbol == "ETHUSDT"][-1]), count=1)),  # high=-1
           (b"SOLUSDT", encode_kline(next(k for k in klines if k.symbol == "SOLUSDT"))),   # stale bar
           (b"SOLUSDT", encode_kline([k for k in klines if k.symbol == "SOLUSDT"][-1])),  # re-delivered bar
           (b"XRPUSDT", encode_kline(next(k for k in klines if k.symbol == "ADAUSDT"))),   # key is not the symbol
           (None, encode_kline(klines[-1]))]                                                  # no key at all
    produce(s1h, klines, raw_extra=bad)
    w = Worker(s1h)
    try:
        wait_signals(s1h, len(expected), workers=(w,), all_taken=True)
        rejects = []
        deadline = time.monotonic() + 30
        while len(rejects) < 6 and time.monotonic() < deadline:
            rejects = [orjson.loads(m.value()) for m in kafka_io.read_topic(s1h, "dlq")]
            time.sleep(0.2)
    finally:
        assert w.stop() == 0, w.tail(2000)
    got = signals_by_id(s1h)
    assert set(got) == set(expected)
    assert all(len(v) == 1 and v[0] == expected[k] for k, v in got.items())
    assert per_symbol_order_ok(s1h)
    reasons = sorted(r["reason"] for r in rejects)
    assert len(reasons) == 6, reasons
    assert any("malformed JSON" in r for r in reasons)
    assert any("Kline.high" in r for r in reasons)
    assert any("duplicate" in r for r in reasons)
    assert any("out-of-order" in r for r in reasons)
    assert sum("is not the symbol" in r for r in reasons) == 2


def test_two_runs_are_byte_identical(s1h, kafka_bootstrap, tmp_path):
    klines = load_klines("klines_1h.parquet", SYMBOLS[:4], limit_per_symbol=200)
    runs = []
    for i in range(2):
        s = s1h.with_(namespace=f"{s1h.namespace}-run{i}", data_dir=str(tmp_path / f"run{i}"))
        kafka_io.ensure_topics(s, ["klines", "signals", "dlq"])
        produce(s, klines)
        w = Worker(s)
        try:
            n = len(expected_signals(klines, s))
            wait_signals(s, n, workers=(w,), all_taken=True)
        finally:
            assert w.stop() == 0
        by_symbol = collections.defaultdict(list)
        for m in kafka_io.read_topic(s, "signals"):
            by_symbol[m.key()].append(m.value())
        runs.append(dict(by_symbol))
        kafka_io.delete_namespace(s)
    assert runs[0] == runs[1]
    assert sum(len(v) for v in runs[0].values()) > 800


def test_recovers_after_sigkill(s1h):
    t = scenario_worker_sigkill(s1h)
    assert t.counts == (0, 0, 0), t          # re-sent copies (same bytes, same signal_id) may exist
    tables = t.tables
    assert_changelogs_equal(s1h, tables)
    # what a user sees of the windowed table: `smc htf-bars` reads it back from the changelog
    newest = {sym: orjson.loads(tables.windows[max(k for k in tables.windows if k[0] == sym)]) for sym in ("BTCUSDT", "ETHUSDT")}
    assert {sym: bars[-1] for sym, bars in htf_bars(s1h, {"BTCUSDT", "ETHUSDT"}).items()} == newest
    out = subprocess.run([sys.executable, "-m", "infra.cli", "htf-bars", "--source", s1h.namespace, "--symbols",
                          "BTCUSDT,ETHUSDT", "--last", "2"], env={**os.environ, **to_env(s1h), "COLUMNS": "200"},
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    for sym, bar in newest.items():
        assert any(sym in line and f"{bar['close']:.6g}" in line and f"{bar['bars']}/5" in line
                   for line in out.stdout.splitlines()), out.stdout


def test_two_workers_split_partitions_and_take_over(s1h):
    """a alone -> a and b split the partitions and both process -> a stops, b takes over from the changelog.

    Each step waits for the group to settle; the harsher variant (rebalances back to back) is
    test_take_over_in_the_middle_of_rebalances below.
    """
    klines = load_klines("klines_1h.parquet", SYMBOLS, limit_per_symbol=400)
    expected, tables = expected_run(klines, s1h)
    third = len(klines) // 3
    produce(s1h, klines[:third])
    a = Worker(s1h, "a")
    b = None
    try:
        wait_until(lambda: a.stats()["klines"] > 0, "a processes alone", (a,))
        b = Worker(s1h, "b")
        wait_until(lambda: a.stats()["partitions"] > 0 and b.stats()["partitions"] > 0
                   and a.stats()["partitions"] + b.stats()["partitions"] == s1h.partitions,
                   "a and b split the partitions", (a, b))
        split_a, split_b = a.stats()["klines"], b.stats()["klines"]
        produce(s1h, klines[third:2 * third])
        expected_2_3 = expected_signals(klines[:2 * third], s1h)
        wait_signals(s1h, len(expected_2_3), workers=(a, b))
        wait_until(lambda: a.stats()["klines"] > split_a and b.stats()["klines"] > split_b,
                   "both workers process their share after the split", (a, b))
        assert a.stop() == 0, a.tail(2000)      # b takes over a's partitions, state from the changelog
        wait_until(lambda: b.stats()["partitions"] == s1h.partitions, "b owns every partition", (b,))
        produce(s1h, klines[2 * third:])
        wait_signals(s1h, len(expected), workers=(b,), all_taken=True)
        time.sleep(1.5)   # anything re-delivered would show up now
    finally:
        a.stop()
        if b is not None:
            assert b.stop() == 0, b.tail(2000)
    got = signals_by_id(s1h)
    missing, extra = set(expected) - set(got), set(got) - set(expected)
    assert not missing and not extra, f"missing {len(missing)}, extra {len(extra)}"
    # a clean hand-over (SIGTERM commits first): every (symbol, bar) exactly once, equal to the core's output
    doubled = {sid: len(raws) for sid, raws in got.items() if len(raws) > 1}
    assert not doubled, f"{len(doubled)} signals emitted more than once"
    assert all(raws[0] == expected[sid] for sid, raws in got.items())
    assert per_symbol_order_ok(s1h)
    assert_changelogs_equal(s1h, tables)


def test_take_over_in_the_middle_of_rebalances(s1h):
    """Both workers start at once on a fresh namespace and a stops while the group is still settling:
    records are in flight through three generations. Faust's consumer drops, skips, re-fetches and
    reorders records around each generation change (processors/faust_guards.py); the offset gate
    (processors/offsets.py) makes the state take each record once, in order, whatever it is handed."""
    t = scenario_two_workers_churn(s1h)
    assert t.counts == (0, 0, 0), t
    assert_changelogs_equal(s1h, t.tables)


def test_a_record_withheld_from_the_agent_is_sought_back_not_lost(s1h, tmp_path):
    """The Faust fault the offset gate exists for, made to happen: record X of a partition is taken away
    from the agent once (and acked) while X+1, ... go on (tests/processors/drop_once_worker.py). The
    gate holds the successors back, seeks back to X, and the state takes X then the rest: every signal
    equal to the core's, the tables too."""
    klines = load_klines("klines_1h.parquet", SYMBOLS[:4], limit_per_symbol=300)
    expected, tables = expected_run(klines, s1h)
    produce(s1h, klines)
    ends = kafka_io.end_offsets(s1h, "klines")
    partition = max(ends, key=lambda p: ends[p][1] - ends[p][0])
    target = ends[partition][0] + (ends[partition][1] - ends[partition][0]) // 2
    wdir = tmp_path / "w-drop"
    wdir.mkdir()
    stats_file, log_path = wdir / "stats.json", wdir / "worker.log"
    env = {**os.environ, **to_env(s1h.with_(model_path="", data_dir=str(wdir))), "SMC_STATS_FILE": str(stats_file),
           "SMC_TEST_DROP_ONCE": f"{partition}:{target}"}
    log = open(log_path, "wb")
    proc = subprocess.Popen([sys.executable, str(Path(__file__).parent / "drop_once_worker.py")], env=env,
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 180
        while kafka_io.topic_size(s1h, "signals") < len(expected):
            assert proc.poll() is None, log_path.read_text()[-3000:]
            assert time.monotonic() < deadline, (kafka_io.topic_size(s1h, "signals"), len(expected),
                                                 print("STATS", stats_file.read_text()) if stats_file.exists() else None,
                                                 log_path.read_text()[-3000:])
            time.sleep(0.3)
        time.sleep(1.5)
        stats = orjson.loads(stats_file.read_bytes())
    finally:
        proc.terminate()
        code = proc.wait(60)
        log.close()
    out = log_path.read_text()
    assert code == 0, out[-3000:]
    assert f"withheld klines record ({partition}, {target})" in out, out[-3000:]
    assert stats["held_back"] >= 1 and stats["seeks"] >= 1, stats
    got = signals_by_id(s1h)
    assert set(got) == set(expected), f"missing {len(set(expected) - set(got))}, extra {len(set(got) - set(expected))}"
    assert all(len(raws) == 1 and raws[0] == expected[sid] for sid, raws in got.items())
    assert_changelogs_equal(s1h, tables)


def test_poison_records_are_dead_letters_and_touch_no_state(s1h):
    """900 KB, far-future, unknown-field, NaN, unknown-symbol and broken records among valid ones."""
    t = scenario_poison(s1h)
    assert t.counts == (0, 0, 0), t
    assert t.resent == 0


@pytest.mark.kafka
@pytest.mark.timeout(180)
def test_topics_before_tables_changelogs_exist_and_a_mismatch_refuses_to_start(settings):
    """Every changelog exists, compacted, with the topic's partitions before Faust subscribes (a worker
    that subscribed first recovered nothing: issue 13); one with other partitions stops the worker."""
    from confluent_kafka.admin import ConfigResource
    from infra.kafka_io import admin, ensure_exact_topics
    from processors.app import app_id
    changelogs = [f"{app_id(settings)}-{t}-changelog" for t in ("symbol-state", "htf-bars")]
    w = Worker(settings, "w-topics")
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            md = admin(settings).list_topics(timeout=10).topics
            if all(c in md for c in changelogs):
                break
            assert w.alive(), w.tail()
            time.sleep(0.2)
        md = admin(settings).list_topics(timeout=10).topics
        assert all(len(md[c].partitions) == settings.partitions for c in changelogs)
        adm = admin(settings)          # keep the client alive until its futures resolve
        res = adm.describe_configs([ConfigResource("topic", c) for c in changelogs])
        for fut in res.values():
            assert fut.result(timeout=30)["cleanup.policy"].value == "compact"
    finally:
        w.stop()
    other = settings.with_(namespace=settings.namespace + "x")
    bad = f"{app_id(other)}-htf-bars-changelog"
    ensure_exact_topics(other, {bad: 2}, {"cleanup.policy": "compact"})
    w2 = Worker(other, "w-mismatch")
    assert w2.proc.wait(120) == 2
    w2.stop()
    assert f"topic {bad} has 2 partitions, the app needs {settings.partitions}" in w2.tail()


@pytest.mark.timeout(480)
def test_a_crash_between_the_flushes_of_a_group_commit_loses_and_alters_nothing(settings):
    """Windows acknowledged, states never sent: the window table ahead of the states; the restarted
    worker (sweeping expired windows at once) must still give the core's signals and tables."""
    from scenarios import scenario_crash_between_flushes
    t = scenario_crash_between_flushes(settings)
    assert t.counts == (0, 0, 0), t
    assert t.resent > 0, "the crash came before any signal of its group was acknowledged: it proved nothing"
    assert_changelogs_equal(settings.with_(interval="1m"), t.tables)
