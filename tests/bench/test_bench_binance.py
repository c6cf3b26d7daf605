"""Order round trip on loopback to the fake Binance exchange: pooled keep-alive session vs one
connection per request, in the same run (blocks interleaved, so load changes hit both alike).

Round trip = engine.process(signal) called -> the entry order's acknowledgement back from the
exchange (the lookup-before-send GET + the POST; the stop/target POSTs that follow are not counted).
Each setup bar is followed by a bar that flattens, so one position at a time. Prints p50 / p99 and
the load average; asserts only that every round trip was measured (speed depends on the machine).
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

_HELPERS = str(Path(__file__).resolve().parents[1] / "executor")
if _HELPERS not in sys.path:
    sys.path.insert(0, _HELPERS)
import exec_helpers  # noqa: E402,F401  (first: fixes tests/executor shadowing the executor package)

import pytest  # noqa: E402

from exec_helpers import EXCHANGE_INFO, KEY, MIN, SECRET, T0, bar, fake  # noqa: E402,F401  (fake: fixture)
from executor.brokers.binance import BinanceBroker, BinanceClient  # noqa: E402
from executor.config import ExecutorConfig  # noqa: E402
from executor.engine import Engine  # noqa: E402
from executor.instruments import InstrumentBook, load_exchange_info  # noqa: E402

N = int(os.environ.get("SMC_BENCH_ORDERS", "200"))     # round trips per mode
BLOCK = 25


def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


@pytest.mark.bench
def test_bench_order_round_trip_pooled_vs_per_request(fake):
    book = InstrumentBook(load_exchange_info(EXCHANGE_INFO))
    engines, lat = {}, {"pooled": [], "per-request": []}
    for mode in lat:
        # budgets lifted: the fake does not enforce them, and a budget wait is not a round trip
        b = BinanceBroker(BinanceClient(fake.base_url, KEY, SECRET, timeout=5.0, pooled=mode == "pooled",
                                        weight_limit=10**9, orders_10s=10**9, orders_1m=10**9), guard_restart=False)
        t_sig = [0]
        orig = b.submit

        def timed(order, ts, *a, _orig=orig, _lat=lat[mode], _t=t_sig, **kw):
            evs = _orig(order, ts, *a, **kw)
            if order.leg == "entry":
                _lat.append((time.perf_counter_ns() - _t[0]) / 1e3)
            return evs
        b.submit = timed
        engines[mode] = (Engine(ExecutorConfig(), b, book), t_sig)
    t = {"pooled": T0, "per-request": T0 + 10**9}     # distinct signal ids (one fake exchange)
    load0 = os.getloadavg()
    for _ in range(0, N, BLOCK):
        for mode, (eng, t_sig) in engines.items():
            for _ in range(BLOCK):
                t_sig[0] = time.perf_counter_ns()
                eng.process(bar("BTCUSDT", t[mode], 50_000, 50_000, 50_000, 50_000, "long", 0.9, 50_000, 49_500, 51_000))
                eng.command({"cmd": "flatten", "symbol": "BTCUSDT"})
                eng.process(bar("BTCUSDT", t[mode] + MIN, 50_000, 50_000, 50_000, 50_000))
                t[mode] += 2 * MIN
    load1 = os.getloadavg()
    print(f"\n[bench executor/binance round trip] signal -> entry acknowledged by the fake exchange on loopback, "
          f"{N} per mode, interleaved blocks of {BLOCK}; load average {load0[0]:.2f} -> {load1[0]:.2f} "
          f"(cores {os.cpu_count()})")
    for mode, xs in lat.items():
        print(f"  {mode:12s} p50 {pct(xs, 0.5) / 1e3:7.2f} ms  p99 {pct(xs, 0.99) / 1e3:7.2f} ms  (n={len(xs)})")
    print(f"  ratio p50 per-request / pooled = {pct(lat['per-request'], 0.5) / pct(lat['pooled'], 0.5):.2f}")
    assert all(len(xs) == N for xs in lat.values())
    assert fake.positions["BTCUSDT"] == 0
