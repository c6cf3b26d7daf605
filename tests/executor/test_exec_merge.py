"""EventTimeMerge: the executor's order of processing does not depend on partition arrival timing."""
import random

import exec_helpers  # noqa: F401  (puts the real `executor` package ahead of this test folder)
import orjson

from executor.service import EventTimeMerge


class Msg:
    def __init__(self, topic, partition, offset, close_time, symbol, tf="1m"):
        self._t, self._p, self._o = topic, partition, offset
        self._v = orjson.dumps({"close_time": close_time, "symbol": symbol, "timeframe": tf})

    def error(self):
        return None

    def topic(self):
        return self._t

    def partition(self):
        return self._p

    def offset(self):
        return self._o

    def value(self):
        return self._v


def _stream(seed):
    """Three partitions of time-ordered signals, delivered in random interleavings and chunk sizes."""
    parts = {0: [], 1: [], 2: []}
    for t in range(50):
        for sym, p in (("AAA", 0), ("BBB", 1), ("CCC", 2), ("DDD", 0)):
            parts[p].append(Msg("sig", p, len(parts[p]), t * 60_000 + 59_999, sym))
    rng = random.Random(seed)
    cursors = {p: 0 for p in parts}
    while any(cursors[p] < len(parts[p]) for p in parts):
        p = rng.choice([p for p in parts if cursors[p] < len(parts[p])])
        n = rng.randint(1, 7)
        yield parts[p][cursors[p]:cursors[p] + n]
        cursors[p] += n


def _order(seed):
    m = EventTimeMerge("sig")
    m.set_partitions([0, 1, 2])
    out = []
    for chunk in _stream(seed):
        m.add(chunk)
        out += m.release(flush=False, limit=500)
    out += m.release(flush=True, limit=10_000)
    return [(orjson.loads(x.value())["close_time"], orjson.loads(x.value())["symbol"]) for x in out]


def test_release_order_is_event_time_and_independent_of_arrival():
    first = _order(1)
    assert len(first) == 200
    assert first == sorted(first)
    for seed in range(2, 12):
        assert _order(seed) == first


def test_an_empty_partition_holds_back_until_flush():
    m = EventTimeMerge("sig")
    m.set_partitions([0, 1])
    m.add([Msg("sig", 0, 0, 59_999, "AAA"), Msg("sig", 0, 1, 119_999, "AAA")])
    assert m.release(flush=False, limit=10) == []
    assert len(m.release(flush=True, limit=10)) == 2
    assert len(m) == 0
