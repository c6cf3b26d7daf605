"""All the real klines through the Faust worker on the real broker equal the batch engine, record for record."""
from __future__ import annotations

import collections
import math

import orjson
import polars as pl
import pytest

from harness import RECORDED, Worker, produce, wait_signals
from infra import kafka_io
from infra.table_view import changelog
from processors.app import HTF_KEEP
from processors.batch_signals import batch_signals
from processors.scoring import HeuristicScorer
from processors.smc import SmcConfig
from schemas import Kline, decode_signal, encode_signal, interval_ms

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


def _klines(df: pl.DataFrame, interval: str) -> list[Kline]:
    step = interval_ms(interval)
    df = df.sort(["open_time", "symbol"])
    return [Kline(symbol=s, interval=interval, open_time=t, close_time=t + step - 1, open=o, high=h, low=l, close=c,
                  volume=v, source="replay", received_at=t + step)
            for s, t, o, h, l, c, v in df.select(["symbol", "open_time", "open", "high", "low", "close", "volume"]).iter_rows()]


def _same(raw: bytes, b) -> bool:
    """Equal records, byte for byte: the stream's message value is the batch signal's encoding (the two
    forms share their arithmetic, so no tolerance)."""
    return raw == encode_signal(b)


@pytest.mark.parametrize("file,interval", [("klines_1h.parquet", "1h"), ("klines_1m_btc.parquet", "1m")])
def test_faust_signals_equal_batch_engine(settings, file, interval):
    s = settings.with_(interval=interval, partitions=6)
    kafka_io.ensure_topics(s, ["klines", "signals", "dlq"])
    df = pl.read_parquet(RECORDED / file)
    if "volume" not in df.columns:
        df = df.rename({"quote_volume": "volume"})
    cfg = SmcConfig(interval_ms=interval_ms(interval), htf_factor=s.htf_factor)
    expected = {}
    for (symbol,), bars in df.group_by(["symbol"], maintain_order=True):
        for sig in batch_signals(bars.sort("open_time"), symbol, HeuristicScorer(), s.strategy_version, cfg):
            expected[sig.signal_id] = sig
    produce(s, _klines(df, interval))
    w = Worker(s)
    try:
        wait_signals(s, len(expected), timeout=900, workers=(w,), all_taken=True)
    finally:
        assert w.stop() == 0, w.tail(2000)
    got = collections.defaultdict(list)
    order_ok = True
    last = {}
    for m in kafka_io.read_topic(s, "signals", timeout=300):
        sig = decode_signal(m.value())
        got[sig.signal_id].append((sig, m.value()))
        k = (sig.symbol, sig.timeframe)
        order_ok &= sig.open_time > last.get(k, -1)
        last[k] = sig.open_time
    assert set(got) == set(expected), (len(set(expected) - set(got)), len(set(got) - set(expected)))
    assert all(len(v) == 1 for v in got.values()), "a signal was emitted twice"
    bad = [sid for sid, v in got.items() if not _same(v[0][1], expected[sid])]
    assert not bad, f"{len(bad)} signals differ from the batch engine, e.g. {bad[:3]}"
    assert order_ok
    assert len(expected) > (370_000 if interval == "1h" else 50_000)
    check_htf_windows(s, df)
    kafka_io.delete_namespace(s)


def check_htf_windows(s, df: pl.DataFrame) -> None:
    """The windowed table's changelog, as Faust would recover it: every window holds the HTF bar an
    independent polars aggregation gives; each symbol keeps its newest HTF_KEEP + 1 windows; older ones
    were deleted by tombstones, so the table stays bounded (here ~75k windows were written for 1h)."""
    period = interval_ms(s.interval) * s.htf_factor
    want = (df.sort("symbol", "open_time").with_columns(bucket=pl.col("open_time") - pl.col("open_time") % period)
            .group_by("symbol", "bucket", maintain_order=True)
            .agg(pl.col("open").first(), pl.col("high").max(), pl.col("low").min(), pl.col("close").last(),
                 pl.col("volume").sum(), last=pl.col("open_time").max(), bars=pl.len()))
    want = {(r[0], r[1]): r[2:] for r in want.iter_rows()}
    got = {}
    for key, blob in changelog(s, "htf-bars", timeout=300).items():
        symbol, (start, _) = orjson.loads(key)
        got[(symbol, round(start * 1000))] = orjson.loads(blob)
    assert set(got) <= set(want)
    for k, w in got.items():
        o, h, l, c, v, last, bars = want[k]
        assert (w["open_time"], w["open"], w["high"], w["low"], w["close"], w["last_open_time"], w["bars"]) == \
               (k[1], o, h, l, c, last, bars), k
        assert math.isclose(w["volume"], v, rel_tol=1e-9), k
    newest = {}
    for sym, bucket in want:
        newest.setdefault(sym, []).append(bucket)
    kept = {(sym, b) for sym, buckets in newest.items() for b in sorted(buckets)[-(HTF_KEEP + 1):]}
    assert kept <= set(got)
    print(f"\n[htf-bars] {len(got)} windows kept of {len(want)} built")
    n_sym = len(newest)
    if len(want) > 4 * n_sym * (HTF_KEEP + 1) + 1024:      # enough windows for the expiry sweep to run
        assert len(got) < 2 * n_sym * (HTF_KEEP + 1) + 1024 + 10_000, (len(got), len(want))
