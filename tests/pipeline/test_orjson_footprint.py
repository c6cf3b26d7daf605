"""The memory behind each encoded record (issue 16: `smc backtest` memory grew with the period).

orjson 3.12 and 3.13 return every dumps() result inside a buffer of at least 4 KB that is never trimmed
(orjson's finish() sets the bytes object's size before its _PyBytes_Resize, which then returns early:
home-assistant/core#181245, which reverted to 3.11.9 for it). sys.getsizeof shows only the logical
length; tracemalloc sees the allocation. Measured here with 3.13.0: 4,097 bytes held per 150-byte
kline, 393 MB for 100k held records, and `smc backtest --engine stream` over 4 days peaked at 1,054 MB
instead of 446 MB. pyproject.toml keeps orjson below 3.12; this test fails on a release that over-allocates
like them, whatever the pin says.
"""
from __future__ import annotations

import tracemalloc

from schemas.codec import encode
from schemas.kline import Kline, encode_kline

N = 2_000


def _held_bytes_per_record(make) -> float:
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        held = [make(i) for i in range(N)]
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert len(held) == N
    return (after - before) / N


def _kline(i: int) -> Kline:
    t = 1_748_736_000_000 + i * 60_000
    return Kline("BTCUSDT", "1m", t, t + 59_999, 104_000.1 + i, 104_050.2 + i, 103_990.3 + i, 104_020.4 + i,
                 12.345, 1_284_000.5, 3_210, 6.1, 634_000.2, "replay", 0)


def test_an_encoded_kline_holds_about_its_own_size():
    size = len(encode_kline(_kline(0)))
    per_record = _held_bytes_per_record(lambda i: encode_kline(_kline(i)) if i % 2 else encode(_kline(i)))
    # 3.11: a 1 KB buffer (the list's slot and the object header included); 3.12/3.13: over 4 KB
    assert per_record < max(4 * size, 1_600), f"{per_record:.0f} bytes held per {size}-byte record"
