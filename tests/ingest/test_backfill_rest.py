"""RestKlines against the fake Binance: weights, only closed bars, 429 Retry-After honoured."""
from __future__ import annotations

import asyncio
import time

import aiohttp

from fakes.fake_binance import FakeBinance, build_exchange_info
from ingest.backfill import RestKlines, WeightBudget
from ingest.rest import MarketRest
from ingest.universe import fetch_exchange_info, parse_exchange_info

STEP = 60_000


def test_rest_backfill_closed_only_weights_and_429():
    with FakeBinance(build_exchange_info(["BTCUSDT", "ETHUSDT"])) as fb:
        t0 = fb.origin_ms
        fb.advance(10 * STEP + 30_000)              # bars 0..9 closed, bar 10 open

        async def go():
            async with aiohttp.ClientSession() as s:
                market = MarketRest(s, fb.rest_url, WeightBudget())
                specs = parse_exchange_info(await fetch_exchange_info(market))
                assert sorted(specs) == ["BTCUSDT", "ETHUSDT"]
                rest = RestKlines(market)
                ks = await rest.fetch("BTCUSDT", "1m", t0, t0 + 10 * STEP, fb.now_ms)
                assert [k.open_time for k in ks] == [t0 + i * STEP for i in range(10)]   # open bar 10 left out
                assert all(k.source == "backfill" and k.close_time < fb.now_ms for k in ks)
                o, h, l, c, v = fb.bars.bar("BTCUSDT", t0 + 3 * STEP)
                assert (ks[3].open, ks[3].high, ks[3].low, ks[3].close, ks[3].volume) == (o, h, l, c, v)
                fb.fail_klines(1, status=429, retry_after=1)
                t = time.monotonic()
                ks2 = await rest.fetch("ETHUSDT", "1m", t0, t0, fb.now_ms)
                waited = time.monotonic() - t
                assert len(ks2) == 1 and rest.stats.bans == 1 and waited >= 0.9
                return rest.stats
        st = asyncio.run(go())
        reqs = fb.kline_requests()
        assert [int(r["params"]["limit"]) for r in reqs] == [11, 1, 1]
        assert st.weight == 4 and st.requests == 4          # exchangeInfo (1) shares the budget with klines
