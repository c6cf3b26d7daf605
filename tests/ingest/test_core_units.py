"""Unit tests of the pure parts: universe, shards, gaps, weight budget, WS parsing, dedupe, IngestCore."""
from __future__ import annotations

import asyncio
import json
import random

import orjson
import pytest

from conftest import DATA
from ingest.backfill import (GapTracker, WeightBudget, kline_weight, last_closed_open, missing_range,
                             parse_rest_kline, plan_requests)
from ingest.pipeline import BackfillJob, IngestCore
from ingest.shards import plan_shards, rebalance, stream_url
from ingest.universe import Universe, diff_symbols, parse_exchange_info
from ingest.ws import Backoff, ConnectLimiter, Deduper, parse_kline_event
from schemas import Kline, SchemaError

BIN = DATA / "binance"
STEP = 60_000


# ---- universe -------------------------------------------------------------------------------------
def test_universe_from_real_exchange_info():
    raw = (BIN / "http_futures_market_exchange_info.json").read_bytes()
    specs = parse_exchange_info(raw)
    assert sorted(specs) == ["BTCUSDT", "ETHUSDT"]          # BTCUSDT_220325 (quarterly) is filtered out
    sample = {s["symbol"]: s for s in json.loads(raw)["symbols"]}
    for sym, spec in specs.items():
        f = {x["filterType"]: x for x in sample[sym]["filters"]}
        assert spec.tick_size == float(f["PRICE_FILTER"]["tickSize"])
        assert spec.step_size == float(f["LOT_SIZE"]["stepSize"])
        assert spec.market_step_size == float(f["MARKET_LOT_SIZE"]["stepSize"])
        assert spec.min_notional == float(f["MIN_NOTIONAL"]["notional"])
        assert spec.quote_asset == "USDT" and spec.contract_type == "PERPETUAL"
    btc = specs["BTCUSDT"]
    assert btc.round_price(43210.1234) == 43210.1
    assert btc.floor_qty(0.0129) == 0.012
    assert not btc.meets_min_notional(40000, 0.0002) and btc.meets_min_notional(40000, 0.001)


def test_universe_filters_status_contract_and_quote():
    base = json.loads((BIN / "http_futures_market_exchange_info.json").read_text())
    eth = next(s for s in base["symbols"] if s["symbol"] == "ETHUSDT")
    variants = []
    for name, changes in [("HALTUSDT", {"status": "SETTLING"}), ("TRADFIUSDT", {"contractType": "TRADIFI_PERPETUAL"}),
                          ("ETHBUSD", {"quoteAsset": "BUSD"})]:
        s = dict(eth, symbol=name, **changes)
        variants.append(s)
    base["symbols"] += variants
    assert sorted(parse_exchange_info(base)) == ["BTCUSDT", "ETHUSDT"]


def test_universe_cache_refresh_and_reconcile_diff():
    real = json.loads((BIN / "http_futures_market_exchange_info.json").read_text())
    calls = []

    async def fetch():
        calls.append(1)
        return real if len(calls) < 3 else {**real, "symbols": real["symbols"][1:]}
    now = [0.0]
    u = Universe(fetch, refresh_s=3600, reconcile_s=900, clock=lambda: now[0], max_drop_share=0.5)

    async def go():
        await u.get()
        await u.get()
        assert len(calls) == 1                       # cached
        now[0] = 3600
        await u.get()
        assert len(calls) == 2                       # refreshed after 1 h
        assert not u.reconcile_due()
        now[0] = 3600 + 900
        assert u.reconcile_due()
        d = await u.reconcile()
        assert d.removed == ("BTCUSDT",) and d.added == ()
    asyncio.run(go())
    assert diff_symbols({"A", "B"}, {"B", "C"}).added == ("C",)


def _info(names):
    real = json.loads((BIN / "http_futures_market_exchange_info.json").read_text())
    btc = next(x for x in real["symbols"] if x["symbol"] == "BTCUSDT")
    return {**real, "symbols": [dict(btc, symbol=n) for n in names]}


def test_universe_refuses_empty_unparsable_and_shrunken_answers_and_backs_off():
    from ingest.universe import UniverseRefused
    names = [f"S{i:02d}USDT" for i in range(20)]
    answers = [_info(names), {"symbols": []}, b"<html>bad gateway</html>", _info(names[:10]),
               _info(names[:10]), _info(names[2:]), _info(names[:10]), _info(names[:10]), _info(names[:10])]
    now = [0.0]

    async def fetch():
        a = answers.pop(0)
        return a if isinstance(a, dict) else orjson.loads(a)      # the bytes answer raises like a bad body
    u = Universe(fetch, reconcile_s=900, clock=lambda: now[0], max_drop_share=0.2, confirmations=3,
                 retry_base_s=5)

    async def go():
        await u.get()
        assert len(u.symbols) == 20 and not u.reconcile_due()
        waits = []
        for expected in (UniverseRefused, orjson.JSONDecodeError, UniverseRefused, UniverseRefused):
            now[0] = u.next_attempt_at
            with pytest.raises(expected):
                await u.reconcile()
            assert len(u.symbols) == 20                        # the universe it had is kept
            waits.append(u.next_attempt_at - now[0])
        assert waits == [5, 10, 20, 40]                        # exponential backoff, not every tick
        now[0] = u.next_attempt_at
        d = await u.reconcile()                                # drops 2 of 20 (10 %): a normal delisting
        assert d.removed == ("S00USDT", "S01USDT") and u.failures == 0
        assert u.next_attempt_at - now[0] == 900
        for _ in range(2):                                     # the same half-universe, twice more
            now[0] = u.next_attempt_at
            with pytest.raises(UniverseRefused, match="drops 10 of 18"):
                await u.reconcile()
        now[0] = u.next_attempt_at
        d = await u.reconcile()                                # the third time in a row: it is real
        assert len(u.symbols) == 10 and len(d.removed) == 10 and d.added == ("S00USDT", "S01USDT") and u.refused == 5
    asyncio.run(go())


def test_vet_universe():
    from ingest.universe import vet_universe
    old = frozenset(f"S{i}" for i in range(10))
    assert vet_universe(frozenset(), frozenset({"A"}), 0.2) is None
    assert "no TRADING" in vet_universe(old, frozenset(), 0.2)
    assert vet_universe(old, old - {"S1", "S2"}, 0.2) is None
    assert "drops 3 of 10" in vet_universe(old, old - {"S1", "S2", "S3"}, 0.2)
    assert vet_universe(old, old | {"NEW"}, 0.2) is None


# ---- shards ---------------------------------------------------------------------------------------
def _names(n):
    return [f"S{i:04d}USDT" for i in range(n)]


def test_plan_limits():
    plan = plan_shards(_names(320))
    assert len(plan) == 7 and all(len(m) <= 50 for m in plan.values())
    assert set().union(*plan.values()) == set(_names(320))
    big = plan_shards(_names(1000), per_shard=500)            # capped at 200 streams per connection
    assert max(len(m) for m in big.values()) == 200 and len(big) == 5
    two = plan_shards(_names(300), per_shard=150, streams_per_symbol=2)
    assert max(len(m) for m in two.values()) == 100
    with pytest.raises(ValueError):
        plan_shards(_names(3), per_shard=0)


def test_rebalance_is_stable_and_diffs():
    names = _names(320)
    plan = plan_shards(names)
    new, diff = rebalance(plan, names + ["NEWUSDT"])
    moved = sum(1 for sid in plan if not plan[sid] <= new[sid])
    assert moved == 0                                          # nobody reshuffled
    assert diff.added == {6: frozenset({"NEWUSDT"})} and diff.changed == [6] and not diff.opened
    # delisting leaves its shard only
    gone = sorted(plan[2])[:3]
    new2, diff2 = rebalance(new, [n for n in names + ["NEWUSDT"] if n not in gone])
    assert diff2.removed == {2: frozenset(gone)} and diff2.changed == [2]
    assert all(new2[s] == new[s] for s in new if s != 2)
    # a listing wave beyond capacity opens a new shard; emptied shards close
    full = plan_shards(_names(100))
    new3, diff3 = rebalance(full, _names(100) + [f"X{i}USDT" for i in range(5)])
    assert diff3.opened == [2] and len(new3[2]) == 5
    new4, diff4 = rebalance(new3, _names(100))
    assert diff4.closed == [2] and 2 not in new4
    assert stream_url("wss://fstream.binance.com/market", ["ETHUSDT", "BTCUSDT"]) == \
        "wss://fstream.binance.com/market/stream?streams=btcusdt@kline_1m/ethusdt@kline_1m"


# ---- gaps and weight --------------------------------------------------------------------------------
def test_gap_detection():
    assert last_closed_open(10 * STEP, STEP) == 9 * STEP        # bar 9 closes at 10*STEP - 1 < now
    assert last_closed_open(10 * STEP - 1, STEP) == 8 * STEP
    assert missing_range(5 * STEP, 8 * STEP, STEP) == (6 * STEP, 8 * STEP)
    assert missing_range(5 * STEP, 5 * STEP, STEP) is None and missing_range(None, 9, STEP) is None
    g = GapTracker(STEP, grace_ms=10_000)
    for sym in ("A", "B"):
        g.continue_after(sym, 99 * STEP)                        # every bar from 100 on
    assert g.on_bar("A", 100 * STEP) is None
    g.produced("A", 100 * STEP)
    assert g.on_bar("A", 104 * STEP) == (101 * STEP, 103 * STEP)
    # reconnect (grace 0) at 103:00: A misses 101, 102; B misses 100..102
    assert g.due(["A", "B"], 103 * STEP, 0) == {"A": (101 * STEP, 102 * STEP), "B": (100 * STEP, 102 * STEP)}
    # silence: 5 s after 103:00 the bar 102 is within grace, not yet due
    assert g.due(["A"], 103 * STEP + 5_000) == {"A": (101 * STEP, 101 * STEP)}
    assert g.on_bar("C", 5 * STEP) is None                      # untracked symbol: no gap claim
    assert g.retire("A") == 100 * STEP and g.last_of("A") is None and g.on_bar("A", 200 * STEP) is None


def test_kline_weights_and_request_plan():
    assert [kline_weight(n) for n in (1, 99, 100, 499, 500, 1000, 1001, 1500)] == [1, 1, 2, 2, 5, 5, 10, 10]
    with pytest.raises(ValueError):
        kline_weight(1501)
    assert plan_requests(0, 0, STEP) == [(0, STEP - 1, 1)]
    reqs = plan_requests(0, 3000 * STEP, STEP)                  # 3001 bars -> 1500 + 1500 + 1
    assert [r[2] for r in reqs] == [1500, 1500, 1]
    assert reqs[1][0] == 1500 * STEP and reqs[-1][1] == 3000 * STEP + STEP - 1


def test_weight_budget_token_bucket_header_and_retry_after():
    b = WeightBudget(limit=100, window_s=60, safety=1.0)
    assert b.reserve(60, 0.0) == 0.0
    assert b.reserve(30, 1.0) == 0.0
    d = b.reserve(20, 2.0)
    assert d == pytest.approx(58.0)                            # until the first 60 leaves the window
    assert b.reserve(20, 60.5) == 0.0
    b2 = WeightBudget(limit=100, safety=1.0)
    b2.observe_header(95, 0.0)                                 # another process used most of it
    assert b2.reserve(10, 1.0) > 0 and b2.reserve(5, 1.0) == 0.0
    b2.retry_after(30, 2.0)
    assert b2.reserve(1, 10.0) == pytest.approx(22.0)
    assert b2.reserve(1, 32.0) == 0.0 or b2.reserve(1, 61.0) == 0.0


def test_parse_rest_kline_real_sample():
    row = json.loads((BIN / "http_futures_market_klines.json").read_text())[0]
    with pytest.raises(SchemaError, match="Kline.close_time=1499644799999"):   # the sample is a weekly bar
        parse_rest_kline(row, "BTCUSDT", "1m", 0)
    row = [60_000] + row[1:6] + [119_999] + row[7:]         # re-stamped as a 1m bar, values unchanged
    k = parse_rest_kline(row, "BTCUSDT", "1m", 7)
    assert (k.open, k.high, k.volume, k.trades, k.source, k.received_at) == (0.0163479, 0.8, 148976.11427815, 308,
                                                                             "backfill", 7)


# ---- WS payloads, dedupe, backoff, limiter ----------------------------------------------------------
def test_parse_real_ws_payloads():
    closed = (BIN / "futures_kline_stream_closed.json").read_bytes()
    opened = (BIN / "futures_kline_stream_open.json").read_bytes()
    k = parse_kline_event(closed, 123)
    assert k == Kline("BTCUSDT", "1m", 1638747660000, 1638747719999, 0.001, 0.0025, 0.001, 0.002, 1000.0, 1.0, 100,
                      500.0, 0.5, "live", 123)
    assert parse_kline_event(opened, 1) is None
    combined = orjson.dumps({"stream": "btcusdt@kline_1m", "data": orjson.loads(closed)})
    assert parse_kline_event(combined, 123) == k
    assert parse_kline_event('{"result":null,"id":1}', 1) is None


@pytest.mark.parametrize("change,needle", [
    ({"h": "0.0001"}, "Kline.high=0.0001"),
    ({"c": "NaN"}, "Kline.close=nan: not finite"),
    ({"v": "-1"}, "Kline.volume=-1.0"),
    ({"o": "abc"}, "KlineEvent.k.o (open)='abc'"),
    ({"x": "yes"}, "KlineEvent.k.x (closed)='yes'"),
    ({"T": 1638747719998}, "Kline.close_time=1638747719998"),
])
def test_parse_bad_ws_payloads_name_field_and_value(change, needle):
    ev = json.loads((BIN / "futures_kline_stream_closed.json").read_text())
    ev["k"].update(change)
    with pytest.raises(SchemaError) as ei:
        parse_kline_event(json.dumps(ev), 1)
    assert needle in str(ei.value)
    with pytest.raises(SchemaError, match="malformed JSON"):
        parse_kline_event(b'{"e":"kline",', 1)


def test_dedupe():
    d = Deduper()
    assert d.check("A", "1m", 5) == "new"
    d.add("A", "1m", 5, ("five",))
    d.add("A", "1m", 7, ("seven",))
    assert d.check("A", "1m", 7, ("seven",)) == "duplicate" and d.check("A", "1m", 5, ("five",)) == "duplicate"
    assert d.check("A", "1m", 7, ("other numbers",)) == "conflict"
    assert d.check("A", "1m", 6) == "stale" and d.check("A", "1m", 8) == "new"
    assert d.check("B", "1m", 1) == "new"
    small = Deduper(window=2)
    for t in (1, 2, 3):
        small.add("A", "1m", t, (t,))
    assert small.check("A", "1m", 1, (1,)) == "stale" and small.check("A", "1m", 2, (2,)) == "duplicate"


def test_backoff_is_jittered_exponential_and_capped():
    b = Backoff(base=0.5, cap=4.0, rng=random.Random(1))
    delays = [b.next() for _ in range(8)]
    for i, dl in enumerate(delays):
        ceiling = min(4.0, 0.5 * 2 ** i)
        assert 0.0 <= dl <= ceiling
    assert min(delays[3:]) < 2.0                     # full jitter: draws spread below half the ceiling too
    assert len(set(delays)) == len(delays)
    b.reset()
    assert b.next() <= 0.5


def test_connect_limiter_one_open_per_interval():
    lim = ConnectLimiter(0.1)

    async def go():
        loop = asyncio.get_running_loop()
        times = []

        async def one():
            await lim.acquire()
            times.append(loop.time())
        await asyncio.gather(*(one() for _ in range(4)))
        return sorted(times)
    t = asyncio.run(go())
    assert all(b - a >= 0.095 for a, b in zip(t, t[1:]))


# ---- IngestCore -----------------------------------------------------------------------------------------
def _k(sym, i, source="live"):
    return Kline(sym, "1m", i * STEP, i * STEP + STEP - 1, 1.0, 2.0, 0.5, 1.5, 3.0, source=source)


def _core(now):
    out, rej = [], []
    core = IngestCore("1m", out.append, lambda *a: rej.append(a), lambda: now[0], grace_ms=10_000)
    return core, out, rej


def test_core_holds_bars_behind_a_gap_until_backfill():
    now = [100 * STEP]
    core, out, rej = _core(now)
    core.add_symbols(["A", "B"], 10 * STEP)
    assert core.on_live(_k("A", 10)) == []
    jobs = core.on_live(_k("A", 13))
    assert jobs == [BackfillJob("A", 11 * STEP, 12 * STEP, "gap")]
    assert core.on_live(_k("A", 14)) == []                    # held behind the gap
    core.on_live(_k("B", 10))                                 # other symbols flow
    assert [(k.symbol, k.open_time // STEP) for k in out] == [("A", 10), ("B", 10)]
    more = core.backfill_done(jobs[0], [_k("A", 12, "backfill"), _k("A", 11, "backfill")])
    assert more == []
    assert [(k.open_time // STEP, k.source) for k in out if k.symbol == "A"] == \
        [(10, "live"), (11, "backfill"), (12, "backfill"), (13, "live"), (14, "live")]
    assert core.stats.backfilled == 2 and core.stats.produced == 6 and rej == []


def test_core_unfilled_backfill_is_given_up_and_rejects_are_counted():
    now = [100 * STEP]
    core, out, rej = _core(now)
    core.add_symbols(["A"], 10 * STEP)
    core.on_live(_k("A", 10))
    job = core.on_live(_k("A", 12))[0]
    core.backfill_done(job, [])                               # REST had nothing
    assert [k.open_time // STEP for k in out] == [10, 12] and core.stats.unfilled == 1
    core.on_live(_k("A", 12))
    core.on_live(_k("A", 11))
    core.on_live(_k("ZZZ", 13))
    assert [r[1].split(":")[1].strip().split()[0] for r in rej] == ["stale", "not"]
    assert core.stats.reasons == {"stale": 1, "unknown_symbol": 1}
    assert core.stats.duplicates == 1                         # the same bar again: counted, not rejected


def test_core_resumes_from_topic_memory_and_remembers_retired_symbols():
    now = [100 * STEP + 1]
    core, out, rej = _core(now)
    core.resume([_k("A", 90), _k("A", 95), _k("B", 40)])
    skipped = core.add_symbols(["A", "B", "C"], start_ms=99 * STEP, not_before_ms=50 * STEP)
    assert skipped == {"B": 9}                                 # B's bars 41..49 are older than the limit
    assert core.on_reconnect(["A", "B", "C"]) == [BackfillJob("A", 96 * STEP, 99 * STEP, "reconnect"),
                                                   BackfillJob("B", 50 * STEP, 99 * STEP, "reconnect"),
                                                   BackfillJob("C", 99 * STEP, 99 * STEP, "reconnect")]
    core.backfill_done(BackfillJob("A", 96 * STEP, 99 * STEP, "reconnect"), [_k("A", i, "backfill") for i in (96, 97)])
    assert [k.open_time // STEP for k in out] == [96, 97] and core.stats.unfilled == 2
    core.on_live(_k("A", 95))                                  # already in the topic: an identical re-send
    core.on_live(_k("A", 97))                                  # the live bar after its backfill
    assert core.stats.duplicates == 2 and rej == []
    conflicting = Kline("A", "1m", 95 * STEP, 96 * STEP - 1, 1.0, 2.0, 0.5, 1.25, 3.0)
    core.on_live(conflicting)
    assert core.stats.conflicts == 1 and "conflicting duplicate bar" in rej[0][1]
    # a symbol leaving and returning resumes from its last bar (a later start does not override it)
    core.remove_symbols(["A"])
    assert "A" not in core.known and core.retired == {"A": 99 * STEP}
    now[0] = 110 * STEP + 1
    core.add_symbols(["A"], start_ms=111 * STEP, not_before_ms=50 * STEP)
    assert core.on_reconnect(["A"]) == [BackfillJob("A", 100 * STEP, 109 * STEP, "reconnect")]
    # --since later than the topic's last bar: bars before it are not wanted
    core2, _, _ = _core(now)
    core2.resume([_k("D", 10)])
    assert core2.add_symbols(["D"], start_ms=105 * STEP, not_before_ms=105 * STEP) == {"D": 94}
    assert core2.on_reconnect(["D"]) == [BackfillJob("D", 105 * STEP, 109 * STEP, "reconnect")]


def test_murmur2_matches_kafka_vectors():
    from ingest.topic_memory import murmur2
    # Kafka's UtilsTest.testMurmur2 (Java ints)
    vectors = {"21": -973932308, "foobar": -790332482, "a-little-bit-long-string": -985981536,
               "a-little-bit-longer-string": -1486304829,
               "lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971, "abc": 479470107}
    for text, java in vectors.items():
        assert murmur2(text.encode()) == java & 0xFFFFFFFF, text


def test_newest_bars_per_symbol_and_interval():
    from ingest.topic_memory import newest_bars
    ks = [_k("A", 3), _k("A", 5), _k("A", 4), _k("B", 1),
          Kline("A", "5m", 50 * STEP, 55 * STEP - 1, 1.0, 2.0, 0.5, 1.5, 3.0)]
    got = newest_bars(ks, "1m")
    assert {s: k.open_time // STEP for s, k in got.items()} == {"A": 5, "B": 1}


def test_core_reconnect_and_silence_jobs():
    now = [20 * STEP + 1]
    core, out, rej = _core(now)
    core.add_symbols(["A", "B"], 18 * STEP)
    core.on_live(_k("A", 18))
    core.on_live(_k("A", 19))
    assert core.on_reconnect(["A", "B"]) == [BackfillJob("B", 18 * STEP, 19 * STEP, "reconnect")]
    assert core.on_reconnect(["B"]) == []                      # already pending
    now[0] = 21 * STEP + 11_000                                # bar 20 of A closed > grace ago
    assert core.on_tick() == [BackfillJob("A", 20 * STEP, 20 * STEP, "silence")]
