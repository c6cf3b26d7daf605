"""Builders of realistic Signals for the executor tests (real BTC 1m klines + synthetic setups).

Import this module FIRST in every executor test module: tests/executor has no __init__.py (pytest's
rootdir-style imports), so tests/ is on sys.path and this directory would shadow the real `executor`
package as a namespace package. The shim below puts the repo root first and drops such a shadow.
(A conftest.py here cannot do it: it would be imported as the module `conftest`, replacing
tests/conftest.py for `from conftest import ...`. The lead may instead set pytest's
`pythonpath = ["."]` in pyproject.toml.)
"""
from __future__ import annotations

import sys
from pathlib import Path

_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path[:2]:
    sys.path.insert(0, _ROOT)
if getattr(sys.modules.get("executor"), "__file__", "x") is None:
    for _n in [n for n in sys.modules if n == "executor" or n.startswith("executor.")]:
        del sys.modules[_n]

import dataclasses  # noqa: E402
import random  # noqa: E402

from schemas import signal as signal_mod  # noqa: E402
from schemas.signal import Signal, make_signal_id  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
KLINES_1M = ROOT / "ingest" / "recorded" / "klines_1m_btc.parquet"
EXCHANGE_INFO = ROOT / "tests" / "data" / "binance" / "http_futures_market_exchange_info.json"
MIN = 60_000
T0 = 1_700_006_400_000          # 2023-11-15 00:00:00 UTC (a funding stamp, a day start)

_FIELDS = {f.name for f in dataclasses.fields(Signal)}
_NFEAT = getattr(signal_mod, "N_FEATURES", 12)


def bar(symbol: str, open_time: int, o: float, h: float, l: float, c: float, side: str = "flat",
        confidence: float = 0.0, entry: float = 0.0, stop: float = 0.0, target: float = 0.0,
        timeframe: str = "1m", tf_ms: int = MIN, events: dict | None = None) -> Signal:
    kw = dict(signal_id=make_signal_id(symbol, timeframe, open_time, "test"), strategy_version="test",
              symbol=symbol, timeframe=timeframe, open_time=open_time, close_time=open_time + tf_ms - 1,
              open=o, high=h, low=l, close=c, volume=1.0, atr=abs(h - l) or 1.0, events=events or {},
              features=[0.0] * _NFEAT, confidence=confidence, side=side, entry=entry, stop=stop, target=target)
    if "feature_names" in _FIELDS:
        kw["feature_names"] = [f"f{i}" for i in range(_NFEAT)]
    return Signal(**kw)


def flat_bars(symbol: str, start: int, n: int, price: float, spread: float = 0.0) -> list[Signal]:
    return [bar(symbol, start + i * MIN, price, price + spread, price - spread, price) for i in range(n)]


def recorded_signals(n: int, symbols: tuple[str, ...] = ("BTCUSDT",), seed: int = 11, setup_every: int = 7,
                     offset: int = 0) -> list[Signal]:
    """Real BTC 1m bars (other symbols: the same bars scaled), with a long/short setup on some bars:
    entry = close, stop beyond the bar's extreme by a fraction of the range (1-3 ATR-ish), target 2R,
    confidence drawn over the whole [0.5, 0.95] range so every tier and the no-trade band occur."""
    import polars as pl
    df = pl.read_parquet(KLINES_1M).slice(offset, n)
    rows = df.select("open_time", "open", "high", "low", "close").rows()
    rng = random.Random(seed)
    scale = {"BTCUSDT": 1.0, "ETHUSDT": 1 / 13.0, "SOLUSDT": 1 / 250.0}
    out: list[Signal] = []
    for ot, o, h, l, c in rows:
        for sym in symbols:
            k = scale.get(sym, 1.0)
            o2, h2, l2, c2 = (round(x * k, 2) for x in (o, h, l, c))
            h2, l2 = max(h2, o2, c2), min(l2, o2, c2)
            if rng.randrange(setup_every) == 0:
                side = rng.choice(("long", "short"))
                rngp = max(h2 - l2, c2 * 0.0005)
                dist = round(rngp * rng.uniform(1.0, 3.0), 2) or 0.01
                entry = c2
                stop, target = (entry - dist, entry + 2 * dist) if side == "long" else (entry + dist, entry - 2 * dist)
                conf = round(rng.uniform(0.5, 0.95), 4)
                out.append(bar(sym, ot, o2, h2, l2, c2, side, conf, entry, round(stop, 2), round(target, 2),
                               events={"fvg": 1} if rng.random() < 0.5 else {"ob": 1}))
            else:
                out.append(bar(sym, ot, o2, h2, l2, c2, confidence=round(rng.uniform(0.0, 0.6), 4)))
    return out


# --- the fake Binance trading API (one fixture for every Binance test module) ---------------------
import orjson  # noqa: E402
import pytest  # noqa: E402

KEY = "test-api-key-0123456789"
SECRET = "test-api-secret-abcdefghij"
BINANCE_DATA = ROOT / "tests" / "data" / "binance"


@pytest.fixture
def fake():
    """A started FakeBinanceTrading (import this name into a test module to use it)."""
    from tests.fakes.fake_binance_trading import FakeBinanceTrading
    f = FakeBinanceTrading(KEY, SECRET)
    f.start()
    yield f
    f.stop()


def real_error(code: int) -> dict:
    """A real Binance error body (tests/data/binance/error_<code>_*.json, copied from ../shared)."""
    (path,) = BINANCE_DATA.glob(f"error_{code}_*.json")
    return orjson.loads(path.read_bytes())


def read_topic(settings, base: str, isolation: str = "read_committed", poll_s: float = 0.5) -> list[dict]:
    """Every record of the namespace's `base` topic, decoded (read_committed by default: what a
    downstream consumer sees of the executor's transactions), up to each partition's end."""
    import time
    import uuid
    from confluent_kafka import Consumer, KafkaError, TopicPartition
    from infra import kafka_io
    name = kafka_io.topic(settings, base)
    c = Consumer({"bootstrap.servers": settings.kafka_bootstrap, "group.id": f"reader-{uuid.uuid4().hex}",
                  "enable.auto.commit": False, "isolation.level": isolation, "enable.partition.eof": True})
    try:
        parts = sorted(c.list_topics(name, timeout=10).topics[name].partitions)
        c.assign([TopicPartition(name, p, 0) for p in parts])
        pending, out, deadline = set(parts), [], time.monotonic() + 30
        while pending and time.monotonic() < deadline:
            m = c.poll(poll_s)
            if m is None:
                continue
            if m.error():
                if m.error().code() == KafkaError._PARTITION_EOF:
                    pending.discard(m.partition())
                continue
            out.append(orjson.loads(m.value()))
        return out
    finally:
        c.close()
