"""decode_signal's fast path (exact types: objects and float arrays taken as parsed) gives the object the
field-by-field path gives, on real signals; anything it cannot take as is goes the checked way."""
from __future__ import annotations

import orjson
import pytest

from harness import load_klines
from processors.core import KlineProcessor, MemoryTables
from processors.scoring import HeuristicScorer
from schemas import SchemaError, decode_signal, encode_kline
from schemas.codec import _fast_spec, _is_exact, decode_as
from schemas.signal import Signal, validate_signal


def _real_signals() -> list[bytes]:
    ks = load_klines("klines_1h.parquet", limit_per_symbol=300)
    syms = sorted({k.symbol for k in ks})[:6]
    proc = KlineProcessor(HeuristicScorer(), "s1", "1h", 5)
    res = proc.process([(k.symbol.encode(), encode_kline(k)) for k in ks if k.symbol in syms], MemoryTables())
    return [raw for _, raw in res.signals]


def test_fast_path_equals_checked_path_on_real_signals():
    raws = _real_signals()
    assert len(raws) > 1500
    fast = _fast_spec(Signal)
    assert fast is not None
    taken = 0
    for raw in raws:
        obj = orjson.loads(raw)
        taken += _is_exact(obj, fast, parsed=True)
        slow = decode_as(Signal, dict(reversed(obj.items())), validate_signal)   # out of order: the checked path
        assert decode_signal(raw) == slow
    assert taken == len(raws)


def test_what_the_fast_path_refuses_is_checked():
    raw = _real_signals()[-1]
    obj = orjson.loads(raw)
    obj["features"] = [1] + obj["features"][1:]          # an int: coerced by the checked path
    assert not _is_exact(obj, _fast_spec(Signal), parsed=True)
    assert decode_signal(orjson.dumps(obj)).features[0] == 1.0
    obj["features"] = ["x"] + obj["features"][1:]
    with pytest.raises(SchemaError, match=r"features\[0\]"):
        decode_signal(orjson.dumps(obj))
    obj = orjson.loads(raw)
    obj["features"][3] = float("nan")                    # a dict input is not orjson-parsed: finiteness checked
    with pytest.raises(SchemaError, match="features"):
        decode_signal(obj)
