"""Ingest under exchange faults and restarts, against the fake Binance and the REAL local Kafka broker.

Every scenario ends with the same check on the `klines` topic: every (symbol, minute) exactly once,
in order per symbol, with the fake's real numbers, and source=backfill exactly for the bars the
WebSocket never delivered (`_check_topic`). `scenario_*` functions are shared with the stress command
(infra/stress.py), which repeats them and prints lost / duplicated counts.
"""
from __future__ import annotations

import collections
import time

import pytest

from fakes.fake_binance import FakeBinance, build_exchange_info, universe_names
from ingest.service import LiveIngest
from live_helpers import ServiceThread, klines_of, read_topic, rejects_of, wait_for

STEP = 60_000


def _svc(settings, fb, **kw):
    s = settings.with_(binance_rest_url=fb.rest_url, binance_ws_url=fb.ws_url)
    params = dict(clock_ms=lambda: fb.now_ms, start_ms=fb.origin_ms, grace_ms=30_000, tick_s=0.1,
                  connect_interval_s=0.05, backoff_base_s=0.3, backoff_cap_s=1.0, rest_backoff_base_s=0.05)
    params.update(kw)
    return LiveIngest(s, **params)


def _streams(fb) -> set[str]:
    return set().union(*fb.connections()) if fb.connections() else set()


def _subscribed(svc, fb, names) -> bool:
    want = {f"{n.lower()}@kline_1m" for n in names}
    return bool(svc.connections) and all(c.connected.is_set() for c in svc.connections.values()) \
        and _streams(fb) == want


def topic_tally(settings, fb, names, minutes, group):
    """(lost, duplicated, wrong) against what the fake exchange holds, and the records by symbol."""
    recs = read_topic(settings, "klines", group, expect=len(names) * minutes, idle_s=1.5)
    by_symbol = collections.defaultdict(list)
    wrong = 0
    for (key, _v, _p, _o), k in zip(recs, klines_of(recs)):
        by_symbol[k.symbol].append(k)
        o, h, l, c, v = fb.bars.bar(k.symbol, k.open_time)
        if key.decode() != k.symbol or (k.open, k.high, k.low, k.close, k.volume) != (o, h, l, c, v):
            wrong += 1
    expected = {(s, fb.origin_ms + i * STEP) for s in names for i in range(minutes)}
    got = [(k.symbol, k.open_time) for ks in by_symbol.values() for k in ks]
    lost = len(expected - set(got))
    duplicated = len(got) - len(set(got))
    for ks in by_symbol.values():
        times = [k.open_time for k in ks]
        wrong += sum(1 for a, b in zip(times, times[1:]) if b <= a)      # out of order
    return lost, duplicated, wrong, by_symbol


def _check_topic(settings, fb, names, minutes, group="t-check"):
    lost, duplicated, wrong, by_symbol = topic_tally(settings, fb, names, minutes, group)
    assert (lost, duplicated, wrong) == (0, 0, 0), f"lost {lost}, duplicated {duplicated}, wrong {wrong}"
    extra = set(by_symbol) - set(names)
    assert not extra, f"symbols never asked for: {sorted(extra)}"
    for ks in by_symbol.values():
        for k in ks:
            want = "live" if (k.symbol, k.open_time) in fb.sent_closed else "backfill"
            assert k.source == want, (k.symbol, k.open_time, k.source)
    return by_symbol


def _silent_logger():
    import logging
    quiet = logging.getLogger("t-dead-producer")
    quiet.propagate = False
    quiet.addHandler(logging.NullHandler())
    return quiet


def _no_dlq(settings, group):
    rej = rejects_of(read_topic(settings, "dlq", group, idle_s=1.0))
    assert rej == [], [r.reason for r in rej]


# ---- scenarios ----------------------------------------------------------------------------------
def scenario_vanishing_universe(settings) -> tuple[int, int, int]:
    """exchangeInfo empty, unparsable and shrunken by two thirds (refused), then one symbol briefly
    leaving TRADING (accepted) and coming back: no bar lost, none doubled."""
    names = universe_names(30)
    with FakeBinance(build_exchange_info(names)) as fb:
        svc = _svc(settings, fb, per_shard=10, reconcile_s=0.3, universe_retry_s=0.1, universe_confirmations=1000)
        with ServiceThread(svc):
            wait_for(lambda: _subscribed(svc, fb, names), 30, "3 shards")
            fb.publish()
            wait_for(lambda: svc.core.stats.produced >= 30, 20, "minute 0")
            refused = svc.universe.refused
            fb.set_exchange_info(build_exchange_info([]))                         # empty
            wait_for(lambda: svc.universe.refused >= refused + 2, 20, "empty answers refused")
            fb.publish()
            wait_for(lambda: svc.core.stats.produced >= 60, 20, "minute 1 while exchangeInfo is empty")
            failures = svc.universe.failures
            fb.set_exchange_info(b'{"symbols": [')                                # unparsable
            wait_for(lambda: svc.universe.failures >= failures + 2, 20, "unparsable answers refused")
            refused = svc.universe.refused
            fb.set_exchange_info(build_exchange_info(names[:10]))                 # two thirds gone
            wait_for(lambda: svc.universe.refused >= refused + 2, 20, "shrunken answers refused")
            assert _subscribed(svc, fb, names), "a refused answer changed the subscriptions"
            fb.publish()
            wait_for(lambda: svc.core.stats.produced >= 90, 20, "minute 2 while exchangeInfo is shrunken")
            fb.set_exchange_info(build_exchange_info(names[1:]))                  # names[0] leaves TRADING
            wait_for(lambda: _subscribed(svc, fb, names[1:]), 20, f"{names[0]} unsubscribed")
            fb.publish()                                                          # names[0]'s bar: not sent
            wait_for(lambda: svc.core.stats.produced >= 119, 20, "minute 3 without names[0]")
            fb.set_exchange_info(build_exchange_info(names))                      # and comes back
            wait_for(lambda: _subscribed(svc, fb, names), 20, f"{names[0]} back")
            wait_for(lambda: svc.core.stats.produced >= 120, 20, f"{names[0]}'s minute 3 backfilled")
            fb.publish()
            wait_for(lambda: svc.core.stats.produced >= 150, 20, "minute 4")
        assert (names[0], fb.origin_ms + 3 * STEP) not in fb.sent_closed
        lost, duplicated, wrong, _ = topic_tally(settings, fb, names, 5, "t-vanish")
        return lost, duplicated, wrong


def scenario_restart_after_downtime(settings, down_minutes: int = 3) -> tuple[int, int, int]:
    """Stopped for `down_minutes`, restarted without --since, then again with --since far in the past:
    every missing bar exactly once, from the klines topic's memory; no dlq record from the overlaps."""
    names = universe_names(20)
    with FakeBinance(build_exchange_info(names)) as fb:
        first = _svc(settings, fb, per_shard=10)
        with ServiceThread(first):
            wait_for(lambda: _subscribed(first, fb, names), 30, "first run connected")
            for m in range(3):
                fb.publish()
                wait_for(lambda m=m: first.core.stats.produced >= 20 * (m + 1), 20, f"minute {m}")
        for _ in range(down_minutes):                                             # down: nobody listens
            fb.publish()
        second = _svc(settings, fb, per_shard=10, start_ms=None)                  # default start
        with ServiceThread(second):
            wait_for(lambda: _subscribed(second, fb, names), 30, "second run connected")
            wait_for(lambda: second.core.stats.backfilled >= 20 * down_minutes, 30, "downtime backfilled")
            fb.publish()
            wait_for(lambda: second.core.stats.produced >= 20 * (down_minutes + 1), 20, "live after restart")
        minutes = 3 + down_minutes + 1
        third = _svc(settings, fb, per_shard=10, start_ms=fb.origin_ms)           # --since the very first bar
        with ServiceThread(third):
            wait_for(lambda: _subscribed(third, fb, names), 30, "third run connected")
            fb.publish()
            wait_for(lambda: third.core.stats.produced >= 20, 20, "live after the --since restart")
        assert third.core.stats.backfilled == 0, "bars already in the topic were fetched again"
        assert first.core.stats.rejected == second.core.stats.rejected == third.core.stats.rejected == 0
        lost, duplicated, wrong, _ = topic_tally(settings, fb, names, minutes + 1, "t-restart")
        return lost, duplicated, wrong


# ---- the tests ----------------------------------------------------------------------------------
@pytest.mark.kafka
@pytest.mark.timeout(180)
def test_empty_unparsable_and_shrunken_exchange_info_lose_no_bar(settings):
    assert scenario_vanishing_universe(settings) == (0, 0, 0)


@pytest.mark.kafka
@pytest.mark.timeout(180)
def test_restart_after_downtime_with_and_without_since_gives_every_bar_once(settings):
    assert scenario_restart_after_downtime(settings) == (0, 0, 0)
    _no_dlq(settings, "t-restart-dlq")


@pytest.mark.kafka
@pytest.mark.timeout(180)
def test_restart_checks_sources_and_order(settings):
    """The same restart, checked bar by bar: the downtime's bars are source=backfill, in order."""
    names = universe_names(8)
    with FakeBinance(build_exchange_info(names)) as fb:
        svc = _svc(settings, fb, per_shard=8)
        with ServiceThread(svc):
            wait_for(lambda: _subscribed(svc, fb, names), 30, "connected")
            fb.publish()
            wait_for(lambda: svc.core.stats.produced >= 8, 20, "minute 0")
        fb.publish()
        fb.publish()
        again = _svc(settings, fb, per_shard=8, start_ms=None)
        with ServiceThread(again):
            wait_for(lambda: again.core is not None and again.core.stats.produced >= 16, 30, "minutes 1, 2 backfilled")
            wait_for(lambda: _subscribed(again, fb, names), 30, "connected again")
            fb.publish()
            wait_for(lambda: again.core.stats.produced >= 24, 20, "minute 3 live")
        by_symbol = _check_topic(settings, fb, names, 4, "t-restart-src")
        assert all([k.source for k in ks] == ["live", "backfill", "backfill", "live"] for ks in by_symbol.values())


def scenario_rest_bans(settings) -> tuple[int, int, int]:
    """429s at start-up, a 418 ban and a long run of 429s on exchangeInfo: requests bounded by
    Retry-After, no market-data request during the ban, and still every bar once."""
    names = universe_names(6)
    with FakeBinance(build_exchange_info(names)) as fb:
        fb.fail_exchange_info(2, status=429, retry_after=1)          # start-up meets two 429s
        svc = _svc(settings, fb, per_shard=6, reconcile_s=0.2, universe_retry_s=0.05)
        with ServiceThread(svc):
            wait_for(lambda: _subscribed(svc, fb, names), 30, "connected after the 429s")
            infos = fb.exchange_info_requests()
            gaps = [b["at"] - a["at"] for a, b in zip(infos, infos[1:3])]
            assert len(infos) >= 3 and all(g >= 0.9 for g in gaps), gaps     # Retry-After 1 s, each time
            fb.publish()
            wait_for(lambda: svc.core.stats.produced >= 6, 20, "minute 0")
            # a 418 ban on exchangeInfo: no market-data request at all until it ends, klines included
            n_before = len(fb.requests)
            fb.fail_exchange_info(1, status=418, retry_after=3)
            wait_for(lambda: svc.market.stats.bans >= 3, 10, "the ban seen")
            banned_at = time.monotonic()
            fb.drop(names[0], fb.next_open)                           # a bar only REST can give
            fb.publish()
            fb.advance(STEP)                                          # past the grace: a backfill is due
            wait_for(lambda: svc.core.stats.backfilled >= 1, 20, "backfill after the ban")
            during = [r for r in fb.requests[n_before:] if banned_at < r["at"] < banned_at + 2.5]
            assert during == [], during
            # 429s with Retry-After 2 on every exchangeInfo for 5 s: at most one request per Retry-After
            fb.fail_exchange_info(1000, status=429, retry_after=2)
            n0 = len(fb.exchange_info_requests())
            time.sleep(5.0)
            sent = len(fb.exchange_info_requests()) - n0
            assert 1 <= sent <= 3, f"{sent} exchangeInfo requests in 5 s under Retry-After 2"
            fb.call(lambda: fb._fail_info.clear())
            wait_for(lambda: svc.universe.failures == 0, 20, "exchangeInfo answers again")
            fb.publish()
            wait_for(lambda: svc.core.stats.produced >= 18, 20, "minute 2")
        assert len(svc.universe.specs) == 6
        lost, duplicated, wrong, _ = topic_tally(settings, fb, names, 3, "t-ban")
        return lost, duplicated, wrong


def scenario_unacknowledged_klines(settings) -> tuple[int, int, int]:
    """A broker that never acknowledges (an outage longer than message.timeout.ms): the service stops
    with IngestFatal naming the fault instead of carrying on over a hole; a restart resumes from the topic."""
    from confluent_kafka import Producer
    from ingest.service import IngestFatal
    names = universe_names(4)
    with FakeBinance(build_exchange_info(names)) as fb:
        dead = Producer({"bootstrap.servers": "127.0.0.1:9", "message.timeout.ms": 1500, "enable.idempotence": True,
                         "acks": "all", "logger": _silent_logger()})
        svc = _svc(settings, fb, per_shard=4, producer=dead)
        th = ServiceThread(svc).__enter__()
        wait_for(lambda: _subscribed(svc, fb, names), 30, "connected")
        fb.publish()
        th.thread.join(30)
        assert not th.thread.is_alive(), "the service kept running over unacknowledged klines"
        assert isinstance(th.error, IngestFatal) and "not acknowledged by the broker" in str(th.error)
        assert svc.delivery_errors >= 1
        # the restart (a working producer) finds nothing in the topic and backfills minute 0
        again = _svc(settings, fb, per_shard=4)
        with ServiceThread(again):
            wait_for(lambda: again.core is not None and again.core.stats.produced >= 4, 30, "minute 0 again")
        lost, duplicated, wrong, by_symbol = topic_tally(settings, fb, names, 1, "t-fatal")
        assert {k.source for ks in by_symbol.values() for k in ks} == {"backfill"}   # the live ones never landed
        return lost, duplicated, wrong


@pytest.mark.kafka
@pytest.mark.timeout(180)
def test_429_and_418_on_exchange_info_pause_every_request(settings):
    assert scenario_rest_bans(settings) == (0, 0, 0)


@pytest.mark.kafka
@pytest.mark.timeout(120)
def test_topic_memory_partition_matches_the_brokers(settings):
    """The murmur2 partition the memory reads for a symbol is the one the producer wrote it to."""
    from infra.kafka_io import ensure_topics, producer, read_topic as read_all, topic
    from ingest.topic_memory import murmur2_partition, read_last_bars
    from schemas import Kline, encode_kline
    ensure_topics(settings, ["klines"])
    names = universe_names(60)
    p = producer(settings)
    for i in range(3):
        for n in names:
            k = Kline(n, "1m", i * STEP, i * STEP + STEP - 1, 1.0, 2.0, 0.5, 1.5, 3.0 + i)
            p.produce(topic(settings, "klines"), key=n.encode(), value=encode_kline(k))
    assert p.flush(30) == 0
    msgs = read_all(settings, "klines")
    parts = {m.partition() for m in msgs}
    assert len(parts) == settings.partitions
    for m in msgs:
        assert m.partition() == murmur2_partition(m.key(), settings.partitions), m.key()
    last = read_last_bars(settings, names, "1m", not_before_ms=0, first_chunk=7)   # tiny chunks: many reads
    assert {s: (k.open_time, k.volume) for s, k in last.items()} == {n: (2 * STEP, 5.0) for n in names}
    assert read_last_bars(settings, names, "1m", not_before_ms=3 * STEP) == {}


@pytest.mark.kafka
@pytest.mark.timeout(120)
def test_unacknowledged_klines_stop_the_service_loudly(settings):
    assert scenario_unacknowledged_klines(settings) == (0, 0, 0)
