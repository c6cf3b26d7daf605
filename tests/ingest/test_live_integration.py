"""Live ingest against the fake Binance and the REAL local Kafka broker.

320 symbols (154 real names + generated) on 7 shards, 5 minutes of bars, bars dropped, a forced
disconnect in the middle: the `klines` topic holds every (symbol, minute) exactly once, in order
per symbol, and exactly the bars the WebSocket never delivered are source=backfill.
"""
from __future__ import annotations

import collections

import pytest

from fakes.fake_binance import FakeBinance, build_exchange_info, universe_names
from fakes.ports import free_port_run
from ingest.service import LiveIngest
from live_helpers import ServiceThread, klines_of, read_topic, rejects_of, wait_for

STEP = 60_000


def _svc(settings, fb, **kw):
    s = settings.with_(binance_rest_url=fb.rest_url, binance_ws_url=fb.ws_url)
    params = dict(clock_ms=lambda: fb.now_ms, start_ms=fb.origin_ms, grace_ms=30_000, tick_s=0.1,
                  connect_interval_s=0.05, backoff_base_s=0.3, backoff_cap_s=1.0)
    params.update(kw)
    return LiveIngest(s, **params)


def _all_connected(svc, fb, n_streams):
    return (svc.connections and all(c.connected.is_set() for c in svc.connections.values())
            and sum(len(s) for s in fb.connections()) == n_streams)


def _check_topic(settings, fb, names, minutes):
    recs = read_topic(settings, "klines", "t-check", expect=len(names) * minutes)
    by_symbol = collections.defaultdict(list)
    for (key, _v, _p, _o), k in zip(recs, klines_of(recs)):
        assert key.decode() == k.symbol
        by_symbol[k.symbol].append(k)
    expected = {(s, fb.origin_ms + i * STEP) for s in names for i in range(minutes)}
    got = [(k.symbol, k.open_time) for ks in by_symbol.values() for k in ks]
    assert len(got) == len(set(got)), "duplicates in the klines topic"
    assert set(got) == expected
    for sym, ks in by_symbol.items():
        times = [k.open_time for k in ks]
        assert times == sorted(times), f"{sym} out of order"
    for ks in by_symbol.values():
        for k in ks:
            want = "live" if (k.symbol, k.open_time) in fb.sent_closed else "backfill"
            assert k.source == want, (k.symbol, k.open_time, k.source)
            o, h, l, c, v = fb.bars.bar(k.symbol, k.open_time)
            assert (k.open, k.high, k.low, k.close, k.volume) == (o, h, l, c, v)
    return by_symbol


@pytest.mark.kafka
@pytest.mark.timeout(180)
def test_320_symbols_disconnect_and_drops_exactly_once(settings):
    names = universe_names(320)
    with FakeBinance(build_exchange_info(names)) as fb:
        svc = _svc(settings, fb)
        t0 = fb.origin_ms
        dropped = {(names[i], t0 + (i % 3) * STEP) for i in range(0, 320, 17)}   # minutes 0, 1, 2
        dropped |= {(names[5], t0 + 4 * STEP), (names[300], t0 + 4 * STEP)}       # the last minute
        for d in dropped:
            fb.drop(*d)
        with ServiceThread(svc):
            wait_for(lambda: _all_connected(svc, fb, 320), 30, "7 shards connected")
            assert len(svc.connections) == 7
            assert all(len(c) <= 50 for c in fb.connections())
            closed = 0
            for minute in range(3):
                closed += fb.publish()
                wait_for(lambda closed=closed: svc.core.stats.closed >= closed, 20, f"minute {minute} received")
            # forced disconnect: minute 3 is published while every connection is down
            assert fb.disconnect_all() == 7
            fb.publish()
            wait_for(lambda: _all_connected(svc, fb, 320), 30, "reconnect")
            closed = svc.core.stats.closed
            closed += fb.publish()                   # minute 4, two of its bars dropped
            wait_for(lambda: svc.core.stats.closed >= closed, 20, "minute 4 received")
            fb.advance(STEP)                         # silence: the dropped minute-4 bars become due
            wait_for(lambda: svc.core.stats.produced >= 320 * 5, 30, "every bar produced")
        st = svc.core.stats
        print("\n320-symbol run:", svc.snapshot()["ingest"], svc.snapshot()["rest"])
        assert sum(c.stats.disconnects for c in svc.connections.values()) == 7
        assert st.produced == 1600 and st.duplicates == 0 and st.rejected == 0, st
        missed = {(s, t0 + i * STEP) for s in names for i in range(5)} - fb.sent_closed
        assert len(missed) > 320                      # minute 3 entirely + the dropped ones
        assert dropped <= missed
        assert st.backfilled == len(missed)
        # REST costs: every request asked for just its bars (weight 1 each, limit < 100)
        reqs = fb.kline_requests()
        assert reqs and all(r["weight"] == 1 and int(r["params"]["limit"]) <= 5 for r in reqs)
        _check_topic(settings, fb, names, 5)


@pytest.mark.kafka
@pytest.mark.timeout(120)
def test_rotation_overlap_and_reconcile_listing_delisting(settings):
    names = universe_names(30)
    with FakeBinance(build_exchange_info(names)) as fb:
        svc = _svc(settings, fb, per_shard=10, reconcile_s=0.5, rotate_after_s=3600)
        with ServiceThread(svc) as th:
            wait_for(lambda: _all_connected(svc, fb, 30), 30, "3 shards")
            fb.publish()
            wait_for(lambda: svc.core.stats.produced >= 30, 20, "minute 0")
            # make-before-break rotation of every shard: old and new overlap, then the old closes
            before = fb.ws_connects
            for c in svc.connections.values():
                th.loop.call_soon_threadsafe(c.rotate)   # asyncio objects live in the service loop
            wait_for(lambda: fb.ws_connects >= before + 3 and _all_connected(svc, fb, 30)
                     and len(fb.connections()) == 3, 20, "rotation")
            assert sum(c.stats.rotations for c in svc.connections.values()) == 3
            assert sum(c.stats.disconnects for c in svc.connections.values()) == 0
            fb.publish()
            wait_for(lambda: svc.core.stats.produced >= 60, 20, "minute 1")
            # listing + delisting: the reconcile loop picks them up and shards change streams
            new_names = names[1:] + ["NEWLISTUSDT"]
            fb.set_exchange_info(build_exchange_info(new_names))
            wait_for(lambda: any("newlistusdt@kline_1m" in s for s in fb.connections())
                     and not any(f"{names[0].lower()}@kline_1m" in s for s in fb.connections()), 20,
                     "reconcile applied")
            wait_for(lambda: _all_connected(svc, fb, 30), 20, "stable after reconcile")
            fb.publish()
            wait_for(lambda: svc.core.stats.produced >= 90, 20, "minute 2")
        recs = klines_of(read_topic(settings, "klines", "t-rot", expect=90))
        keys = [(k.symbol, k.open_time) for k in recs]
        assert len(keys) == len(set(keys)) == 90
        t2 = fb.origin_ms + 2 * STEP
        assert ("NEWLISTUSDT", t2) in keys and (names[0], t2) not in keys
        assert svc.core.stats.rejected == 0                           # overlap duplicates are not errors
        assert rejects_of(read_topic(settings, "dlq", "t-rot-dlq", idle_s=1.0)) == []


@pytest.mark.kafka
@pytest.mark.timeout(120)
def test_bad_inputs_go_to_dlq_and_good_klines_keep_flowing(settings):
    import orjson
    names = universe_names(12)
    with FakeBinance(build_exchange_info(names)) as fb:
        svc = _svc(settings, fb, per_shard=6)
        a, b = names[0], names[7]
        with ServiceThread(svc):
            wait_for(lambda: _all_connected(svc, fb, 12), 30, "2 shards")
            fb.publish()
            wait_for(lambda: svc.core.stats.produced >= 12, 20, "minute 0")
            t0 = fb.origin_ms
            good = orjson.loads(fb.event(a, t0 + STEP, True))

            def variant(**k):
                ev = orjson.loads(orjson.dumps(good))
                ev["data"]["k"].update(k)
                return orjson.dumps(ev).decode()
            bad = [
                ('{"stream":"x@kline_1m","data":{"e":"kline",', a),                     # malformed JSON
                (variant(h="0.0000001"), a),                                             # high < low
                (variant(c="NaN"), a),                                                   # NaN
                (variant(v="-5"), a),                                                    # negative volume
                (variant(s="NOPEUSDT"), a),                                              # unknown symbol
                (fb.event(b, t0, True).decode(), b),                        # identical duplicate: no reject
            ]
            for raw, sym in bad:
                fb.inject(raw, symbol=sym)
            wait_for(lambda: svc.core.stats.rejected >= 5 and svc.core.stats.duplicates >= 1, 20, "5 rejects")
            fb.publish()
            fb.publish()
            wait_for(lambda: svc.core.stats.produced >= 36, 20, "minutes 1, 2 flow")
            fb.inject(fb.event(a, t0, True).decode(), symbol=a)                 # identical duplicate: no reject
            conflicting = orjson.loads(fb.event(a, t0, True))
            conflicting["data"]["k"]["v"] = "123.5"                              # same bar, other numbers
            fb.inject(orjson.dumps(conflicting).decode(), symbol=a)
            fb.inject(variant(t=t0 - 5 * STEP, T=t0 - 4 * STEP - 1), symbol=a)  # stale: older, never produced
            wait_for(lambda: svc.core.stats.rejected >= 7, 20, "7 rejects")
        st = svc.core.stats
        assert st.produced == 36 and st.rejected == 7 and st.duplicates == 2 and st.stale == 1, st
        assert st.conflicts == 1
        assert st.reasons == {"malformed": 1, "invalid": 3, "unknown_symbol": 1, "conflict": 1, "stale": 1}
        rej = rejects_of(read_topic(settings, "dlq", "t-dlq", expect=7))
        assert len(rej) == 7 and {r.stage for r in rej} == {"ingest.ws"}
        reasons = " | ".join(r.reason for r in rej)
        for needle in ("malformed JSON", "Kline.high=", "not finite", "Kline.volume=-5.0",
                       "Kline.symbol='NOPEUSDT'", "conflicting duplicate bar", "stale bar"):
            assert needle in reasons, needle
        assert any(r.raw.startswith(b'{"stream":"x@kline_1m"') for r in rej)
        _check_topic(settings, fb, names, 3)


@pytest.mark.kafka
@pytest.mark.timeout(120)
def test_endpoints_ready_while_streams_flow_not_when_silent(settings):
    """/metrics, /health and /ready of the live ingest (the endpoints `python -m ingest live` serves on
    SMC_METRICS_PORT + 2) against the fake Binance and the real broker."""
    import json
    import time
    import urllib.error
    import urllib.request

    from infra.metrics import serve
    from ingest.metrics import collector, probes

    def probe(port, path):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())

    names = universe_names(12)
    with FakeBinance(build_exchange_info(names)) as fb:
        svc = _svc(settings, fb, per_shard=5)
        port = free_port_run(1)
        server = serve(port, collector(svc.figures), probes=probes(svc.figures, svc.heartbeat, quiet_s=1.5))
        try:
            status, body = probe(port, "/ready")
            assert status == 503 and "starting" in body["reason"]
            assert probe(port, "/health")[0] == 200                   # within the start-up grace
            with ServiceThread(svc):
                wait_for(lambda: _all_connected(svc, fb, 12), 30, "3 shards connected")
                closed = fb.publish()
                wait_for(lambda: svc.core.stats.closed >= closed, 20, "a minute received")
                status, body = probe(port, "/ready")
                assert status == 200 and body["reason"] == "streaming" and body["symbols"] == 12, body
                assert set(body["shards"]) == {"0", "1", "2"} and all(s["connected"] for s in body["shards"].values())
                status, body = probe(port, "/health")
                assert status == 200 and body["beats"] > 0
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
                    text = resp.read().decode()
                assert f"smc_ingest_closed_total {float(svc.core.stats.closed)}" in text
                assert "smc_ingest_shards_connected 3.0" in text
                time.sleep(2.0)                                        # nothing published: the streams go quiet
                status, body = probe(port, "/ready")
                assert status == 503 and "no message for" in body["reason"], body
                closed += fb.publish()
                wait_for(lambda: svc.core.stats.closed >= closed, 20, "the next minute received")
                assert probe(port, "/ready")[0] == 200
        finally:
            server.close()


@pytest.mark.kafka
@pytest.mark.timeout(120)
def test_startup_backfill_then_the_same_bars_on_the_websocket_are_dropped_not_dlq(settings):
    """Issue 19: at start-up each symbol's closed bars come from REST, then the WebSocket delivers the same
    bars again. Identical re-deliveries are dropped and counted (smc_ingest_duplicates_total), never a dlq
    record; the same open time with other numbers still is one."""
    import orjson
    from prometheus_client.core import CollectorRegistry
    from ingest import metrics
    names = universe_names(4)
    with FakeBinance(build_exchange_info(names)) as fb:
        t0 = fb.origin_ms
        fb.advance(2 * STEP)                 # bars 0 and 1 closed before the ingest starts: REST has them
        svc = _svc(settings, fb)
        with ServiceThread(svc):
            wait_for(lambda: svc.core is not None and svc.core.stats.backfilled >= 8 and _all_connected(svc, fb, 4), 30,
                     "start-up backfill and connections")
            fb.publish()                     # the WebSocket now closes bars 0 and 1: the bars just backfilled
            fb.publish()
            fb.publish()                     # bar 2: new
            wait_for(lambda: svc.core.stats.produced >= 12 and svc.core.stats.duplicates >= 8, 20, "bars 0-2")
            conflicting = orjson.loads(fb.event(names[0], t0 + STEP, True))
            conflicting["data"]["k"]["v"] = "123.5"                  # bar 1 again, other numbers
            fb.inject(orjson.dumps(conflicting).decode(), symbol=names[0])
            wait_for(lambda: svc.core.stats.rejected >= 1, 20, "the conflict rejected")
            registry = CollectorRegistry()
            registry.register(metrics.collector(svc.figures))
            scraped = registry.get_sample_value("smc_ingest_duplicates_total")
        st = svc.core.stats
        assert st.produced == 12 and st.backfilled == 8 and st.duplicates == 8, st
        assert st.rejected == 1 and st.conflicts == 1 and st.reasons == {"conflict": 1}, st
        assert scraped == 8.0
        rej = rejects_of(read_topic(settings, "dlq", "t-start-dlq", expect=1))
        assert len(rej) == 1 and "conflicting duplicate bar" in rej[0].reason and "duplicate bar" in rej[0].reason
        ks = klines_of(read_topic(settings, "klines", "t-start", expect=12))
        assert sorted((k.symbol, k.open_time, k.source) for k in ks) == sorted(
            [(s, t0 + i * STEP, "backfill") for s in names for i in (0, 1)] + [(s, t0 + 2 * STEP, "live") for s in names])
