"""The processors' functional core without Kafka: its hot-path shortcuts give the same bytes and errors as the plain path."""
from __future__ import annotations

import math

import orjson
import pytest

from harness import load_klines
from processors.core import KlineProcessor, signal_bytes, signal_from_output
from processors.scoring import HeuristicScorer
from processors.smc import SmcConfig, SymbolState
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
    res = proc.process(records, lambda _s: None)
    assert res.klines == len(records) and not res.rejects
    sigs = [decode_signal(raw) for _, raw in res.signals]
    assert len(sigs) == len(records) + sum(1 for _, raw in records if orjson.loads(raw)["open_time"] % (5 * 3_600_000) == 4 * 3_600_000)
    assert all(s.confidence == s.confidence and 0 <= s.confidence <= 1 for s in sigs)


def _slow_decode_kline(raw: bytes) -> Kline:
    """decode_as without its exact-types fast path: the field-by-field checks."""
    obj = orjson.loads(raw)
    obj["_force_slow_path"] = 1      # an unknown key disables the fast path; the slow path ignores it
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
