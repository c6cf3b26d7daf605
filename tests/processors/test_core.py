"""The processors' functional core without Kafka: its hot-path shortcuts give the same bytes and errors as the plain path."""
from __future__ import annotations

import math

import orjson
import pytest

from harness import load_klines
from processors.core import KlineProcessor, MemoryTables, expired_windows, signal_bytes, signal_from_output
from processors.scoring import HeuristicScorer
from processors.smc import SmcConfig, SymbolState
from processors.smc.htf import window_from_bytes
from schemas import SchemaError, decode_kline, decode_signal, encode_kline, encode_signal, interval_ms
from schemas.codec import decode_as
from schemas.kline import Kline, validate_kline


def _real_klines(n_symbols: int = 12, bars: int = 250) -> list[Kline]:
    ks = load_klines("klines_1h.parquet", limit_per_symbol=bars)
    symbols = sorted({k.symbol for k in ks})[:n_symbols]
    return [k for k in ks if k.symbol in symbols]


def test_signal_bytes_equal_the_dataclass_encoding_on_real_outputs():
    cfg = SmcConfig(interval_ms=interval_ms("1h"), htf_factor=5)
    states: dict[str, SymbolState] = {}
    n = with_setup = with_events = 0
    for k in _real_klines():
        st = states.setdefault(k.symbol, SymbolState(cfg))
        for out in st.update((k.open_time, k.open, k.high, k.low, k.close, k.volume)):
            conf = 0.5 + (n % 7) / 17      # varied, not round
            fast = signal_bytes(k.symbol, out, conf, "m1", "s1")
            slow = encode_signal(signal_from_output(k.symbol, out, conf, "m1", "s1"))
            assert fast == slow, (k.symbol, out.timeframe, out.open_time)
            n += 1
            with_setup += out.setup.side != "flat"
            with_events += bool(out.events)
    # the comparison covered warm-up (NaN ATR), both timeframes, setups and events
    assert n > 3000 and with_setup > 10 and with_events > 100


def test_processor_signals_decode_and_validate():
    proc = KlineProcessor(HeuristicScorer(), "s1", "1h", 5)
    records = [(k.symbol.encode(), encode_kline(k)) for k in _real_klines(4, 120)]
    res = proc.process(records, MemoryTables())
    assert res.klines == len(records) and not res.rejects
    sigs = [decode_signal(raw) for _, raw in res.signals]
    assert len(sigs) == len(records) + sum(1 for _, raw in records if orjson.loads(raw)["open_time"] % (5 * 3_600_000) == 4 * 3_600_000)
    assert all(s.confidence == s.confidence and 0 <= s.confidence <= 1 for s in sigs)


def _slow_decode_kline(raw: bytes) -> Kline:
    """decode_as without its exact-types fast path: the field-by-field checks."""
    obj = dict(reversed(orjson.loads(raw).items()))   # keys out of declaration order disable the fast path
    return decode_as(Kline, obj, validate_kline)


def test_kline_fast_path_decodes_like_the_checked_path():
    ks = _real_klines(3, 50)
    for k in ks:
        raw = encode_kline(k)
        assert decode_kline(raw) == _slow_decode_kline(raw) == k


@pytest.mark.parametrize("field,value,needle", [
    ("open", "1.5", "Kline.open='1.5'"),                  # a string where a number belongs
    ("trades", True, "Kline.trades=True"),               # bool is not an int
    ("trades", 1.5, "Kline.trades=1.5"),
    ("symbol", 7, "Kline.symbol=7"),
    ("open_time", None, "Kline.open_time=None"),
])
def test_kline_fast_path_leaves_wrong_types_to_the_checked_path(field, value, needle):
    obj = orjson.loads(encode_kline(_real_klines(1, 1)[0]))
    obj[field] = value
    with pytest.raises(SchemaError) as ei:
        decode_kline(orjson.dumps(obj))
    assert needle in str(ei.value)


def test_kline_fast_path_coerces_ints_and_refuses_non_finite_dict_values():
    k = _real_klines(1, 1)[0]
    obj = orjson.loads(encode_kline(k))
    obj["volume"] = int(obj["volume"])          # a JSON integer in a float field is a valid number
    got = decode_kline(orjson.dumps(obj))
    assert got.volume == float(int(k.volume)) and type(got.volume) is float
    obj = orjson.loads(encode_kline(k))
    obj["high"] = math.inf                      # only a dict can carry inf (JSON cannot)
    with pytest.raises(SchemaError, match="Kline.high=inf"):
        decode_kline(obj)


# -- the M5 window table (the HTF bar under construction, per symbol and bucket)

def _records(klines) -> list[tuple[bytes, bytes]]:
    return [(k.symbol.encode(), encode_kline(k)) for k in klines]


def _run(proc: KlineProcessor, tables: MemoryTables, records, size: int, history: list | None = None) -> list[bytes]:
    out = []
    for i in range(0, len(records), size):
        res = proc.process(records[i:i + size], tables)
        assert not res.rejects
        tables.apply(res)
        out += [raw for _, raw in res.signals]
        if history is not None:
            history.append((dict(tables.states), dict(tables.windows)))
    return out


def test_window_table_holds_the_htf_bars_of_the_grid():
    """Every stored window equals an independent polars aggregation of the base bars in its bucket."""
    import polars as pl
    ks = _real_klines(6, 300)
    tables = MemoryTables()
    _run(KlineProcessor(HeuristicScorer(), "s1", "1h", 5), tables, _records(ks), 37)
    period = 5 * 3_600_000
    want = (pl.DataFrame([(k.symbol, k.open_time, k.open, k.high, k.low, k.close, k.volume) for k in ks],
                         schema=["symbol", "t", "o", "h", "l", "c", "v"], orient="row")
            .sort("symbol", "t").with_columns(bucket=pl.col("t") - pl.col("t") % period)
            .group_by("symbol", "bucket", maintain_order=True)
            .agg(pl.col("o").first(), pl.col("h").max(), pl.col("l").min(), pl.col("c").last(), pl.col("v").sum(),
                 last=pl.col("t").max(), bars=pl.len()))
    assert len(tables.windows) == want.height > 300
    for sym, bucket, o, h, l, c, v, last, bars in want.iter_rows():
        got = orjson.loads(tables.windows[(sym, bucket)])
        assert (got["open_time"], got["open"], got["high"], got["low"], got["close"], got["last_open_time"],
                got["bars"]) == (bucket, o, h, l, c, last, bars), (sym, bucket)
        assert math.isclose(got["volume"], v, rel_tol=1e-12)


@pytest.mark.parametrize("ahead", [0, 1, 3, 7])
def test_replay_from_windows_stored_ahead_of_the_state_changes_nothing(ahead):
    """The agent stores windows before states, so after a crash between the two the window table may be
    ahead of the state by up to a group. Re-processing from the state's batch gives the same signals
    and the same final tables as the uninterrupted run: no bar is folded into a window twice."""
    ks = _real_klines(5, 260)
    records = _records(ks)
    size = 23
    ref_tables, history = MemoryTables(), []
    ref = _run(KlineProcessor(HeuristicScorer(), "s1", "1h", 5), ref_tables, records, size, history)
    for cut in (3, 17, 28, 41):     # batches done when the worker died
        states, _ = history[cut - 1]
        _, windows = history[min(cut - 1 + ahead, len(history) - 1)]
        tables = MemoryTables()
        tables.states, tables.windows = dict(states), dict(windows)
        replay = _run(KlineProcessor(HeuristicScorer(), "s1", "1h", 5), tables, records[cut * size:], size)
        assert replay == ref[len(ref) - len(replay):] and len(replay) > 100
        assert tables.states == ref_tables.states and tables.windows == ref_tables.windows


def test_expired_windows_keep_a_horizon_before_the_stored_state_and_never_its_open_one():
    w = lambda sym, start: (sym, (float(start), start + 299.9))                        # noqa: E731
    keys = [w("A", s) for s in range(0, 3600 + 1, 300)] + [w("B", 0), w("B", 300)] + [w("C", 0)]
    # A's state is in the window at 3600: with a 1800 s horizon, windows starting before 1800 go;
    # B's state at 300 keeps both; C has no known state: it keeps all
    assert expired_windows(keys, 1800, {"A": 3600, "B": 300}) == [w("A", s) for s in range(0, 1800, 300)]
    assert expired_windows([w("Z", 0)], 0, {"Z": 0}) == [] and expired_windows([], 60, {}) == []


def test_a_sweep_after_a_crash_between_the_flushes_keeps_the_state_s_open_window():
    """Real 1m perps: a whole group's windows are stored, its states are not (the worker died between the
    two flushes). Measured from the newest window, a sweep would delete the stored state's open window
    (seen in tests/processors/test_worker.py: that M5 bar was then rebuilt from part of its bars and
    every later signal of the symbol drifted). Measured from the stored state it keeps it, and
    re-processing the group from the state gives the uninterrupted run's signals and tables."""
    ks = load_klines("perps_1m_2025-05.parquet", ["BTCUSDT", "ETHUSDT"], limit_per_symbol=900, interval="1m")
    records = _records(ks)
    size, period_ms, horizon_s = 50, 300_000, 12 * 300
    ref_tables, history = MemoryTables(), []
    ref = _run(KlineProcessor(HeuristicScorer(), "s1", "1m", 5), ref_tables, records, size, history)
    for cut, group in ((5, 10), (7, 20), (13, 9)):      # batches stored, batches in the crashed group
        states, _ = history[cut - 1]
        _, windows = history[cut - 1 + group]
        tables = MemoryTables()
        tables.states, tables.windows = dict(states), dict(windows)
        last = {k.symbol: k.open_time for k in ks[:cut * size]}
        buckets_s = {sym: (t - t % period_ms) / 1000 for sym, t in last.items()}
        keys = [(sym, (b / 1000, b / 1000 + 299.9)) for sym, b in tables.windows]
        open_keys = {(sym, (b, b + 299.9)) for sym, b in buckets_s.items() if (last[sym] + 60_000) % period_ms}
        assert open_keys, "the cut should leave a window open"
        newest = {sym: max(k[1][0] for k in keys if k[0] == sym) for sym in buckets_s}
        assert any(k[1][0] < newest[k[0]] - horizon_s for k in open_keys), "the windows are not far enough ahead"
        gone = expired_windows(keys, horizon_s, buckets_s)
        assert gone and not open_keys & set(gone)
        for sym, (start, _) in gone:
            del tables.windows[(sym, int(start * 1000))]
        replay = _run(KlineProcessor(HeuristicScorer(), "s1", "1m", 5), tables, records[cut * size:], size)
        assert replay == ref[len(ref) - len(replay):] and len(replay) > 500
        assert tables.states == ref_tables.states
        assert all(ref_tables.windows[k] == v for k, v in tables.windows.items())


def test_compact_keeps_the_newest_value_and_applies_tombstones():
    from infra.table_view import compact
    log = [(b"a", b"1"), (b"b", b"1"), (b"a", b"2"), (b"b", None), (b"c", b"1"), (b"c", None), (b"c", b"3")]
    assert compact(log) == {b"a": b"2", b"c": b"3"}


def test_a_version_1_state_keeps_its_open_window():
    """States written before the window table (version 1) carried the open HTF bar; they still load,
    and the stream goes on as if nothing had been stored."""
    ks = [k for k in _real_klines(1, 240)]
    records = _records(ks)
    cut = 203                                       # inside an HTF window (5 x 1h)
    ref_tables = MemoryTables()
    ref = _run(KlineProcessor(HeuristicScorer(), "s1", "1h", 5), ref_tables, records, 1000)
    tables = MemoryTables()
    proc = KlineProcessor(HeuristicScorer(), "s1", "1h", 5)
    _run(proc, tables, records[:cut], 1000)
    (symbol, blob), = tables.states.items()
    state = SymbolState.from_bytes(blob, window_from_bytes(tables.windows[max(tables.windows)]))
    assert state.open_window is not None
    v2 = orjson.loads(blob)
    v1 = orjson.dumps([1, v2[1], state.open_window[:6], v2[2]])
    old = MemoryTables()
    old.states = {symbol: v1}                       # no window table yet
    rest = _run(KlineProcessor(HeuristicScorer(), "s1", "1h", 5), old, records[cut:], 1000)
    assert rest == ref[len(ref) - len(rest):] and old.states == ref_tables.states


def test_a_far_future_kline_is_rejected_and_does_not_poison_the_symbol():
    from processors.core import open_time_limit
    ks = [k for k in _real_klines(1, 30)]
    hour = 3_600_000
    end = ks[-1].open_time + hour                     # the replay's declared range ends after the last bar
    proc = KlineProcessor(HeuristicScorer(), "s1", "1h", 5, time_limit=open_time_limit("1h", end, lambda: 0))
    y2100 = 4_102_444_800_000
    bad = Kline(ks[0].symbol, "1h", y2100, y2100 + hour - 1, 10.0, 11.0, 9.0, 10.5, 1.0, source="replay")
    edge = ks[-1]
    records = [(k.symbol.encode(), encode_kline(k)) for k in ks[:10]] + [(bad.symbol.encode(), encode_kline(bad))] \
        + [(k.symbol.encode(), encode_kline(k)) for k in ks[10:]]
    res = proc.process(records, MemoryTables())
    assert len(res.rejects) == 1
    reason = res.rejects[0][0]
    assert f"Kline.open_time={y2100}" in reason and "declared range" in reason
    assert res.klines == len(records)
    assert sum(1 for s in res.signals if decode_signal(s[1]).timeframe == "1h") == len(ks)   # every real bar after it too
    # one interval past the range is the slack; beyond it, rejected
    nxt = Kline(edge.symbol, "1h", end + hour, end + 2 * hour - 1, 10.0, 11.0, 9.0, 10.5, 1.0, source="replay")
    assert proc.process([(nxt.symbol.encode(), encode_kline(nxt))], MemoryTables()).rejects


def test_live_bound_is_the_wall_clock_plus_one_interval():
    from processors.core import open_time_limit
    limit, what = open_time_limit("1m", 0, lambda: 1_000_000)()
    assert limit == 1_060_000 and what == "the wall clock"


def test_a_symbol_outside_the_universe_is_rejected_and_gets_no_state():
    ks = _real_klines(1, 20)
    symbol = ks[0].symbol
    proc = KlineProcessor(HeuristicScorer(), "s1", "1h", 5, universe=[symbol])
    stranger = [Kline("NOTLISTEDUSDT", "1h", k.open_time, k.close_time, k.open, k.high, k.low, k.close, k.volume,
                      source="replay") for k in ks[:3]]
    records = [(k.symbol.encode(), encode_kline(k)) for k in ks + stranger]
    tables = MemoryTables()
    res = proc.process(records, tables)
    tables.apply(res)
    assert [r[0] for r in res.rejects] == ["Kline.symbol='NOTLISTEDUSDT': not in the run's universe (1 symbols, SMC_UNIVERSE)"] * 3
    assert set(tables.states) == {symbol}
    ref = KlineProcessor(HeuristicScorer(), "s1", "1h", 5).process(records[:len(ks)], MemoryTables())
    assert res.signals == ref.signals           # the listed symbol is untouched by the stranger
